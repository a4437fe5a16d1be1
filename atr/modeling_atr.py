"""AtrModel: a dual encoder for robust audio-text retrieval (arXiv 2604.23323)."""

import inspect
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, ClapAudioModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils import ModelOutput

from .configuration_atr import AtrConfig


@dataclass
class AtrOutput(ModelOutput):
    """Output of [`AtrModel.forward`]; field order makes `zero-shot-audio-classification` and `feature-extraction` work.

    `loss` is the hybrid loss (only with `return_loss=True`), `loss_contrastive`, `loss_cosine` and `loss_l1` its
    unweighted terms, `logits_per_audio` (n_audio, n_text) and `logits_per_text` the scaled similarities,
    `text_embeds` / `audio_embeds` the L2-normalised embeddings, `chunk_weights` (n_audio, n_chunks) how much each
    chunk of a recording contributed to its embedding.
    """

    loss: torch.FloatTensor | None = None
    logits_per_audio: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None
    chunk_weights: torch.FloatTensor | None = None
    loss_contrastive: torch.FloatTensor | None = None
    loss_cosine: torch.FloatTensor | None = None
    loss_l1: torch.FloatTensor | None = None


@dataclass
class AtrAudioOutput(BaseModelOutputWithPooling):
    """Audio features: `pooler_output` the L2-normalised embedding, `last_hidden_state` the chunk embeddings, `chunk_weights`."""

    chunk_weights: torch.FloatTensor | None = None


class ClapAudioAdapter(nn.Module):
    """HTSAT (transformers `ClapAudioModel`): chunk features (N, 1, frames, mels) to tokens (N, F'*T', hidden)."""

    def __init__(self, audio_config):
        super().__init__()
        self.encoder = ClapAudioModel(audio_config)
        self.hidden_size = audio_config.hidden_size

    def forward(self, features):
        """Return the token sequence (N, L, H) and its mask (None: every token is real)."""
        hidden = self.encoder(input_features=features).last_hidden_state  # (N, H, F', T'): a map, not a sequence
        return hidden.flatten(2).transpose(1, 2), None

    @staticmethod
    def load_backbone(path, **kwargs):
        """Load HTSAT weights from a `ClapModel` checkpoint (`ClapAudioModel.from_pretrained` would silently load none)."""
        from transformers import ClapModel

        return ClapModel.from_pretrained(path, **kwargs).audio_model


class WhisperAudioAdapter(nn.Module):
    """Whisper encoder: chunk features (N, mels, 2*max_source_positions) to tokens (N, max_source_positions, d_model)."""

    def __init__(self, audio_config):
        super().__init__()
        self.encoder = WhisperEncoder(audio_config)
        self.hidden_size = audio_config.d_model
        self.expected_frames = 2 * audio_config.max_source_positions

    def forward(self, features):
        """Return the token sequence (N, L, H) and its mask (None: every token is real)."""
        if features.shape[-1] != self.expected_frames:
            raise ValueError(
                f"input_features have {features.shape[-1]} frames per chunk, the Whisper encoder expects "
                f"{self.expected_frames} (2 * max_source_positions): build the feature extractor with "
                "AtrFeatureExtractor.from_audio_config(config.audio_config)"
            )
        return self.encoder(input_features=features).last_hidden_state, None

    @staticmethod
    def load_backbone(path, **kwargs):
        """Load the encoder from a Whisper checkpoint (`WhisperEncoder.from_pretrained` would silently load none)."""
        from transformers import WhisperModel

        return WhisperModel.from_pretrained(path, **kwargs).get_encoder()


# One adapter per audio backbone family: adding AST or wav2vec2 means adding an entry here, nothing else.
AUDIO_ADAPTERS = {"clap_audio_model": ClapAudioAdapter, "whisper": WhisperAudioAdapter}


class AtrTransformerProjection(nn.Module):
    """The per-modality refinement: linear to the head width, transformer layers over the token sequence, then norm."""

    def __init__(self, input_size, config: AtrConfig):
        super().__init__()
        self.input_projection = nn.Linear(input_size, config.head_hidden_size)
        layer = nn.TransformerEncoderLayer(
            config.head_hidden_size,
            config.head_heads,
            dim_feedforward=4 * config.head_hidden_size,
            dropout=config.head_dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # head_layers=0 leaves a linear projection (+ norm): the lightest head, for from-scratch CPU training.
        self.layers = nn.TransformerEncoder(layer, config.head_layers, enable_nested_tensor=False) if config.head_layers else None
        self.norm = nn.LayerNorm(config.head_hidden_size)

    def forward(self, tokens, mask=None):
        """Refine tokens (N, L, input_size) with mask (N, L) into (N, L, head_hidden_size)."""
        hidden = self.input_projection(tokens)
        if self.layers is not None:
            hidden = self.layers(hidden, src_key_padding_mask=None if mask is None else ~mask.bool())
        return self.norm(hidden)


class AtrAttentionPooling(nn.Module):
    """Attention pooling over chunk embeddings: a learned query at inference, the paired caption's embedding in training."""

    def __init__(self, dim):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim))
        self.key = nn.Linear(dim, dim)

    def forward(self, chunk_embeds, chunk_mask, query=None):
        """Pool (B, C, D) chunk embeddings with mask (B, C); return pooled (B, D) and weights (B, C)."""
        if query is None:
            query = self.query.expand(chunk_embeds.shape[0], -1)
        scores = (self.key(chunk_embeds) * query.unsqueeze(1)).sum(-1) / math.sqrt(chunk_embeds.shape[-1])
        weights = scores.masked_fill(~chunk_mask.bool(), float("-inf")).softmax(dim=-1)
        return (weights.unsqueeze(-1) * chunk_embeds).sum(1), weights


def masked_mean(tokens, mask):
    """Mean of tokens (N, L, H) over positions where mask (N, L) is set; all positions when mask is None."""
    if mask is None:
        return tokens.mean(1)
    mask = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def masked_max(tokens, mask):
    """Max of tokens (N, L, H) over positions where mask (N, L) is set; all positions when mask is None."""
    if mask is None:
        return tokens.max(1).values
    mask = mask.bool().unsqueeze(-1)
    # A row with no real token (a padding chunk) gives 0, as masked_mean does, never the dtype's minimum.
    return tokens.masked_fill(~mask, torch.finfo(tokens.dtype).min).max(1).values * mask.any(1)


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradients of every process and returns this process's slice."""

    @staticmethod
    def forward(ctx, tensor):
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        size = grad.shape[0] // dist.get_world_size()
        rank = dist.get_rank()
        return grad[rank * size : (rank + 1) * size]


def gather_with_grad(tensor):
    """Concatenate `tensor` from every process along dim 0, keeping gradients; this process's rows stay local."""
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
    if len({int(s) for s in sizes}) > 1:
        raise ValueError(
            f"per-process batch sizes differ ({[int(s) for s in sizes]}): contrastive negatives can only be gathered "
            "from equal batches; set dataloader_drop_last=True"
        )
    return _AllGatherWithGrad.apply(tensor)


class AtrPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading defaults shared by atr models."""

    config: AtrConfig
    config_class = AtrConfig
    base_model_prefix = "atr"
    main_input_name = "input_features"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    # The hybrid loss is computed from the whole batch, never normalised by a token count.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module):
        """Initialise the head; backbones keep their own initialisation (or pretrained weights)."""
        super()._init_weights(module)
        if isinstance(module, AtrModel):
            init.constant_(module.logit_scale, math.log(self.config.logit_scale_init_value))
        elif isinstance(module, AtrAttentionPooling):
            init.normal_(module.query, std=self.config.initializer_range)


class AtrModel(AtrPreTrainedModel):
    """Audio and text encoders with transformer + linear projections into one space; hybrid loss in training."""

    def __init__(self, config: AtrConfig):
        super().__init__(config)
        self.audio_model = AUDIO_ADAPTERS[config.audio_config.model_type](config.audio_config)
        self.text_model = AutoModel.from_config(config.text_config)
        self._text_accepts_token_type_ids = "token_type_ids" in inspect.signature(self.text_model.forward).parameters

        self.audio_head = AtrTransformerProjection(self.audio_model.hidden_size, config)
        self.text_head = AtrTransformerProjection(config.text_config.hidden_size, config)
        self.audio_projection = nn.Linear(config.head_hidden_size, config.projection_dim)
        self.text_projection = nn.Linear(config.head_hidden_size, config.projection_dim)
        self.chunk_pooling = AtrAttentionPooling(config.projection_dim)
        if config.cross_modal_attention:
            heads, width = config.cross_modal_heads, config.head_hidden_size
            self.audio_to_text = nn.MultiheadAttention(width, heads, dropout=config.head_dropout, batch_first=True)
            self.text_to_audio = nn.MultiheadAttention(width, heads, dropout=config.head_dropout, batch_first=True)
            self.audio_cross_norm = nn.LayerNorm(width)
            self.text_cross_norm = nn.LayerNorm(width)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(config.logit_scale_init_value)))
        self.post_init()
        self._apply_freezing()
        # Multiplies lambda_cosine and lambda_l1; AtrTrainer ramps it during config.alignment_warmup_steps.
        self.alignment_scale = 1.0

    def _apply_freezing(self):
        for encoder, frozen in ((self.audio_model, self.config.freeze_audio_encoder), (self.text_model, self.config.freeze_text_encoder)):
            # Unfrozen encoders keep their own choices (Whisper's sinusoidal positions stay fixed).
            if frozen:
                encoder.requires_grad_(False)
                encoder.eval()

    def train(self, mode=True):
        """Switch train/eval mode; frozen encoders stay in eval mode so dropout never perturbs their outputs."""
        super().train(mode)
        for encoder, frozen in ((self.audio_model, self.config.freeze_audio_encoder), (self.text_model, self.config.freeze_text_encoder)):
            if frozen:
                encoder.eval()
        return self

    # ---- encoders -------------------------------------------------------------------------------------------

    def get_text_encoder_states(self, input_ids, attention_mask=None, token_type_ids=None):
        """The text encoder's token states (B, T, H): what `text_hidden_states=` takes (e.g. from `atr.cache`)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._text_accepts_token_type_ids:
            kwargs["token_type_ids"] = token_type_ids
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_text_encoder):
            return self.text_model(**kwargs).last_hidden_state

    def get_audio_encoder_states(self, chunks):
        """The audio encoder's token states (N, L, H) for N chunk features: what `audio_hidden_states=` takes per chunk."""
        states = []
        for start in range(0, chunks.shape[0], self.config.audio_chunk_batch_size):
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_audio_encoder):
                states.append(self.audio_model(chunks[start : start + self.config.audio_chunk_batch_size])[0])
        return torch.cat(states)

    def _check_precomputed(self, name, frozen):
        # Precomputed states skip the encoder: training through them would silently never update a trainable one.
        if self.training and not frozen:
            raise ValueError(
                f"{name} bypasses an encoder that is being trained (its freeze_* setting is False): pass raw inputs, "
                "or freeze that encoder to train from cached encoder outputs"
            )

    def _encode_text_tokens(self, input_ids, attention_mask=None, token_type_ids=None, text_hidden_states=None):
        if text_hidden_states is None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            hidden = self.get_text_encoder_states(input_ids, attention_mask, token_type_ids)
        else:
            self._check_precomputed("text_hidden_states", self.config.freeze_text_encoder)
            hidden = text_hidden_states
            if attention_mask is None:
                attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        return self.text_head(hidden, attention_mask), attention_mask

    def _pool_text(self, tokens, mask):
        mode = self.config.text_pooling
        if mode == "cls":
            pooled = tokens[:, 0]
        elif mode == "mean":
            pooled = masked_mean(tokens, mask)
        else:  # last_token: the last real token, wherever padding sits (left or right)
            positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
            last = (positions * mask.long()).argmax(dim=1)
            pooled = tokens[torch.arange(tokens.shape[0], device=tokens.device), last]
        return self.text_projection(pooled)

    def _pool_audio_tokens(self, tokens, mask):
        # A short event fills few tokens: max pooling keeps it from being averaged away.
        if self.config.audio_token_pooling == "mean_max":
            return masked_mean(tokens, mask) + masked_max(tokens, mask)
        return masked_mean(tokens, mask)

    def _encode_audio_chunks(self, chunks, keep_tokens=False, precomputed=False):
        """Run real chunks (N, ...) through encoder and head in bounded mini-batches: chunk embeddings (N, D) [+ tokens].

        With `precomputed=True` the chunks are already the encoder's token states (N, L, H), every token real.
        """
        embeds, tokens, masks = [], [], []
        for start in range(0, chunks.shape[0], self.config.audio_chunk_batch_size):
            batch = chunks[start : start + self.config.audio_chunk_batch_size]
            if precomputed:
                hidden, mask = batch, None
            else:
                with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_audio_encoder):
                    hidden, mask = self.audio_model(batch)
            refined = self.audio_head(hidden, mask)
            embeds.append(self.audio_projection(self._pool_audio_tokens(refined, mask)))
            if keep_tokens:
                tokens.append(refined)
                masks.append(torch.ones(refined.shape[:2], dtype=torch.bool, device=refined.device) if mask is None else mask.bool())
        if keep_tokens:
            return torch.cat(embeds), torch.cat(tokens), torch.cat(masks)
        return torch.cat(embeds), None, None

    def _audio_chunks(self, input_features, chunk_mask, keep_tokens=False, audio_hidden_states=None):
        """Chunk embeddings (B, C, D) and mask (B, C) from chunked features (or encoder states); padding chunks are never encoded."""
        precomputed = audio_hidden_states is not None
        if precomputed:
            self._check_precomputed("audio_hidden_states", self.config.freeze_audio_encoder)
            input_features = audio_hidden_states
        if precomputed and input_features.dim() != 4:
            raise ValueError(
                f"audio_hidden_states has shape {tuple(input_features.shape)}, expected (batch, chunks, tokens, hidden): "
                "the audio encoder's states per chunk, e.g. from atr.cache"
            )
        if input_features.dim() < 3:
            raise ValueError(
                f"input_features has shape {tuple(input_features.shape)}, expected (batch, chunks, ...): "
                "prepare audio with AtrFeatureExtractor / AtrProcessor"
            )
        batch, num_chunks = input_features.shape[:2]
        if chunk_mask is None:
            chunk_mask = torch.ones(batch, num_chunks, dtype=torch.long, device=input_features.device)
        chunk_mask = chunk_mask.bool()
        if not chunk_mask.any(dim=1).all():
            raise ValueError("chunk_mask has a clip with no real chunk: every clip needs at least one chunk_mask=1 entry")
        real = input_features[chunk_mask]
        embeds, tokens, token_mask = self._encode_audio_chunks(real, keep_tokens, precomputed)
        chunk_embeds = embeds.new_zeros(batch, num_chunks, embeds.shape[-1])
        chunk_embeds[chunk_mask] = embeds
        if not keep_tokens:
            return chunk_embeds, chunk_mask, None, None
        # Every chunk's tokens laid side by side per clip, for cross-modal attention over the whole recording.
        seq = tokens.new_zeros(batch, num_chunks, *tokens.shape[1:])
        seq[chunk_mask] = tokens
        seq_mask = token_mask.new_zeros(batch, num_chunks, token_mask.shape[1])
        seq_mask[chunk_mask] = token_mask
        return chunk_embeds, chunk_mask, seq, seq_mask

    # ---- public API -----------------------------------------------------------------------------------------

    @staticmethod
    def _one_of(raw_name, raw, states_name, states, required=True):
        # Raw inputs or the frozen encoder's precomputed states of one modality, never both (and one of them if required).
        both = raw is not None and states is not None
        if both or required and raw is None and states is None:
            got = f"both {raw_name} and {states_name}" if both else f"neither {raw_name} nor {states_name}"
            raise ValueError(f"got {got}: pass either {raw_name} or {states_name} (the frozen encoder's precomputed states), not {'both' if both else 'neither'}")

    def get_text_features(self, input_ids=None, attention_mask=None, token_type_ids=None, text_hidden_states=None, **kwargs):
        """Embed captions (or precomputed text-encoder states): `pooler_output` is the L2-normalised (B, projection_dim) embedding."""
        self._one_of("input_ids", input_ids, "text_hidden_states", text_hidden_states)
        tokens, mask = self._encode_text_tokens(input_ids, attention_mask, token_type_ids, text_hidden_states)
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=F.normalize(self._pool_text(tokens, mask), dim=-1))

    def get_audio_features(self, input_features=None, chunk_mask=None, audio_hidden_states=None, **kwargs):
        """Embed chunked audio (or precomputed audio-encoder states): `pooler_output` is the L2-normalised (B, projection_dim) embedding."""
        self._one_of("input_features", input_features, "audio_hidden_states", audio_hidden_states)
        chunk_embeds, chunk_mask, _, _ = self._audio_chunks(input_features, chunk_mask, audio_hidden_states=audio_hidden_states)
        pooled, weights = self.chunk_pooling(chunk_embeds, chunk_mask)
        return AtrAudioOutput(last_hidden_state=chunk_embeds, pooler_output=F.normalize(pooled, dim=-1), chunk_weights=weights)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        input_features=None,
        chunk_mask=None,
        return_loss=None,
        audio_hidden_states=None,
        text_hidden_states=None,
        **kwargs,
    ) -> AtrOutput:
        r"""Embed audio and/or text; with `return_loss=True` and both modalities, also compute the hybrid loss.

        loss = lambda_cosine * mean_i(1 - cos(a~_i, t~_i)) + lambda_l1 * mean_{i,d} |a~_id - t~_id|
               + lambda_contrastive * (CE(s * A T^T, diag) + CE(s * T A^T, diag)) / 2
        where A, T are the L2-normalised inference embeddings (learned-query chunk pooling: no caption ever sees another
        clip), s = min(exp(logit_scale), logit_scale_max), negatives are gathered across processes when distributed,
        and a~_i, t~_i are the L2-normalised training-only pair embeddings: audio and text tokens refined by bidirectional
        cross-modal attention (when enabled), the audio chunks pooled with the refined caption embedding as query.

        `audio_hidden_states` (B, C, L, H) with `chunk_mask`, and `text_hidden_states` (B, T, H) with `attention_mask`,
        replace `input_features` / `input_ids` by the frozen encoders' precomputed outputs (`atr.cache`): only the
        heads, attention, pooling and loss run.
        """
        self._one_of("input_features", input_features, "audio_hidden_states", audio_hidden_states, required=False)
        self._one_of("input_ids", input_ids, "text_hidden_states", text_hidden_states, required=False)
        has_text, has_audio = input_ids is not None or text_hidden_states is not None, input_features is not None or audio_hidden_states is not None
        if not (has_text or has_audio):
            raise ValueError("forward needs input_features (audio), input_ids (text) or both")
        want_loss = bool(return_loss) and has_audio and has_text
        text_embeds = audio_embeds = chunk_weights = logits_per_audio = logits_per_text = None
        loss = loss_contrastive = loss_cosine = loss_l1 = None
        if has_text:
            text_tokens, text_mask = self._encode_text_tokens(input_ids, attention_mask, token_type_ids, text_hidden_states)
            text_embeds = F.normalize(self._pool_text(text_tokens, text_mask), dim=-1)
        if has_audio:
            chunk_embeds, chunk_mask, audio_seq, audio_seq_mask = self._audio_chunks(
                input_features, chunk_mask, keep_tokens=want_loss, audio_hidden_states=audio_hidden_states
            )
            pooled, chunk_weights = self.chunk_pooling(chunk_embeds, chunk_mask)
            audio_embeds = F.normalize(pooled, dim=-1)
        if text_embeds is not None and audio_embeds is not None:
            scale = self.logit_scale.exp().clamp(max=self.config.logit_scale_max)
            logits_per_audio = scale * audio_embeds @ text_embeds.t()
            logits_per_text = logits_per_audio.t()
        if want_loss:
            if audio_embeds.shape[0] != text_embeds.shape[0]:
                raise ValueError(
                    f"return_loss=True needs paired inputs, got {audio_embeds.shape[0]} clips and "
                    f"{text_embeds.shape[0]} captions: pass one caption per clip"
                )
            pair_audio, pair_text = self._pair_embeddings(chunk_embeds, chunk_mask, audio_seq, audio_seq_mask, text_tokens, text_mask)
            loss_cosine = (1 - (pair_audio * pair_text).sum(-1)).mean()
            loss_l1 = (pair_audio - pair_text).abs().mean()
            loss_contrastive = self._contrastive_loss(audio_embeds, text_embeds, scale)
            loss = (
                self.alignment_scale * (self.config.lambda_cosine * loss_cosine + self.config.lambda_l1 * loss_l1)
                + self.config.lambda_contrastive * loss_contrastive
            )
        return AtrOutput(
            loss=loss,
            logits_per_audio=logits_per_audio,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            audio_embeds=audio_embeds,
            chunk_weights=chunk_weights,
            loss_contrastive=loss_contrastive,
            loss_cosine=loss_cosine,
            loss_l1=loss_l1,
        )

    # ---- training-only parts --------------------------------------------------------------------------------

    def _pair_embeddings(self, chunk_embeds, chunk_mask, audio_seq, audio_seq_mask, text_tokens, text_mask):
        """L2-normalised pair embeddings for the alignment terms (cross-modal attention + caption-conditioned pooling)."""
        if self.config.cross_modal_attention:
            batch, num_chunks, length, width = audio_seq.shape
            audio_flat, audio_flat_mask = audio_seq.reshape(batch, num_chunks * length, width), audio_seq_mask.reshape(batch, -1)
            attended_audio, _ = self.audio_to_text(audio_flat, text_tokens, text_tokens, key_padding_mask=~text_mask.bool(), need_weights=False)
            attended_text, _ = self.text_to_audio(text_tokens, audio_flat, audio_flat, key_padding_mask=~audio_flat_mask, need_weights=False)
            refined_audio = self.audio_cross_norm(audio_flat + attended_audio).reshape(batch * num_chunks, length, width)
            refined_text = self.text_cross_norm(text_tokens + attended_text)
            chunk_embeds = self.audio_projection(self._pool_audio_tokens(refined_audio, audio_seq_mask.reshape(batch * num_chunks, length)))
            chunk_embeds = chunk_embeds.reshape(batch, num_chunks, -1)
            text_embeds = self._pool_text(refined_text, text_mask)
        else:
            text_embeds = self._pool_text(text_tokens, text_mask)
        pooled, _ = self.chunk_pooling(chunk_embeds, chunk_mask, query=F.normalize(text_embeds, dim=-1))
        return F.normalize(pooled, dim=-1), F.normalize(text_embeds, dim=-1)

    def _contrastive_loss(self, audio_embeds, text_embeds, scale):
        """Symmetric InfoNCE; in distributed training the negatives come from every process (local rows, global columns)."""
        offset = 0
        all_audio, all_text = audio_embeds, text_embeds
        if self.config.gather_negatives and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            all_audio, all_text = gather_with_grad(audio_embeds), gather_with_grad(text_embeds)
            offset = dist.get_rank() * audio_embeds.shape[0]
        labels = torch.arange(audio_embeds.shape[0], device=audio_embeds.device) + offset
        loss_audio = F.cross_entropy(scale * audio_embeds @ all_text.t(), labels)
        loss_text = F.cross_entropy(scale * text_embeds @ all_audio.t(), labels)
        return (loss_audio + loss_text) / 2

    # ---- pretrained backbones -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained_backbones(cls, audio, text, audio_config_overrides=None, **config_overrides):
        """Build a model around pretrained encoders given by Hub id or local path (CLAP/HTSAT or Whisper; any text AutoModel).

        `audio_config_overrides` changes the audio config before loading, e.g. `{"max_source_positions": 500}` for
        10 s Whisper windows (the sinusoidal positions are re-created; conv and attention weights load unchanged).
        """
        audio_type = AutoConfig.from_pretrained(audio).model_type
        adapter_key = {"clap": "clap_audio_model", "whisper": "whisper"}.get(audio_type)
        if adapter_key is None:
            raise ValueError(f"audio backbone {audio!r} has model_type {audio_type!r}: use a CLAP (HTSAT) or Whisper checkpoint")
        load_kwargs = {}
        if audio_config_overrides:
            load_kwargs = {**audio_config_overrides, "ignore_mismatched_sizes": True}
        audio_encoder = AUDIO_ADAPTERS[adapter_key].load_backbone(audio, **load_kwargs)
        text_encoder = AutoModel.from_pretrained(text)
        config = AtrConfig(audio_config=audio_encoder.config, text_config=text_encoder.config, **config_overrides)
        config.audio_backbone_id, config.text_backbone_id = str(audio), str(text)
        model = cls(config)
        model.audio_model.encoder.load_state_dict(audio_encoder.state_dict())
        model.text_model.load_state_dict(text_encoder.state_dict())
        return model


__all__ = ["AtrModel", "AtrOutput", "AtrAudioOutput", "AtrPreTrainedModel"]
