"""AtrModel: a dual encoder for robust audio-text retrieval (arXiv 2604.23323)."""

import inspect
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, ProcessorMixin, initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, can_return_tuple

from .backbones_atr import audio_backbone, audio_backbone_for_checkpoint
from .configuration_atr import AtrConfig
from .layers_atr import AtrAttentionPooling, AtrCrossModalAttention, AtrTransformerProjection, check_transformers_kwargs, masked_max, masked_mean, one_of
from .loss_atr import AtrHybridLoss


@dataclass
class AtrOutput(ModelOutput):
    """Output of [`AtrModel.forward`]; field order makes `zero-shot-audio-classification` and `feature-extraction` work.

    `loss` is the hybrid loss (only with `return_loss=True`), the other `loss_*` fields its unweighted terms (named in
    `loss_atr.LOSS_TERMS`), `logits_per_audio` (n_audio, n_text) and `logits_per_text` the scaled similarities,
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
    loss_pair_contrastive: torch.FloatTensor | None = None


@dataclass
class AtrAudioOutput(BaseModelOutputWithPooling):
    """Audio features: `pooler_output` the L2-normalised embedding, `last_hidden_state` the chunk embeddings, `chunk_weights`."""

    chunk_weights: torch.FloatTensor | None = None


class AtrPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading defaults shared by atr models."""

    config: AtrConfig
    config_class = AtrConfig
    base_model_prefix = "atr"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    # The hybrid loss is computed from the whole batch, never normalised by a token count.
    accepts_loss_kwargs = False
    # Models saved before the cross-modal keys lost their bias (which the softmax always cancelled) load unchanged.
    _keys_to_ignore_on_load_unexpected = [r"(text_to_audio|audio_to_text)\.key\.bias"]
    # Backbone name -> loadable path: `import atr` sets its resolver (offline packages, faster-whisper folders); Hub code keeps names.
    resolve_backbone = staticmethod(str)

    @torch.no_grad()
    def _init_weights(self, module):
        """Initialise the head; backbones keep their own initialisation (or pretrained weights)."""
        super()._init_weights(module)
        if isinstance(module, AtrModel):
            # CLAP's convention: the config holds 1/temperature, the parameter its log.
            init.constant_(module.logit_scale, math.log(self.config.logit_scale_init_value))
        elif isinstance(module, AtrAttentionPooling):
            init.normal_(module.query, std=self.config.initializer_range)

    def initialize_weights(self) -> None:
        """Initialise what was not loaded; re-created audio-encoder weights as the backbone family's own init would."""
        super().initialize_weights()
        if hasattr(self, "audio_model"):
            audio_backbone(self.config.audio_config.model_type).init_recreated_weights(self.audio_model)

    def _sdpa_can_dispatch(self, is_init_check=False):
        """SDPA for the whole model needs it in both encoders (atr's own layers always use it)."""
        refusal = audio_backbone(self.config.audio_config.model_type).sdpa_refusal()
        if refusal:
            raise ValueError(f"attn_implementation='sdpa' reaches the audio encoder, but {refusal}: leave attn_implementation "
                             "unset (each encoder uses SDPA where it has it) or pass {'text_config': 'sdpa'}")
        return super()._sdpa_can_dispatch(is_init_check)


class AtrModel(AtrPreTrainedModel):
    """Audio and text encoders with transformer + linear projections into one space; hybrid loss in training."""

    def __init__(self, config: AtrConfig):
        super().__init__(config)
        self.audio_model = audio_backbone(config.audio_config.model_type).adapter(config.audio_config)
        self.text_model = AutoModel.from_config(config.text_config)
        self._text_accepts_token_type_ids = "token_type_ids" in inspect.signature(self.text_model.forward).parameters

        self.audio_head = AtrTransformerProjection(self.audio_model.hidden_size, config)
        self.text_head = AtrTransformerProjection(config.text_config.hidden_size, config)
        self.audio_projection = nn.Linear(config.head_hidden_size, config.projection_dim)
        self.text_projection = nn.Linear(config.head_hidden_size, config.projection_dim)
        self.chunk_pooling = AtrAttentionPooling(config.projection_dim)
        if config.cross_modal_attention:
            # text_to_audio: the caption looks into the audio tokens; audio_to_text: the recording looks into the caption.
            self.text_to_audio = AtrCrossModalAttention(config.projection_dim, config.cross_modal_heads)
            self.audio_to_text = AtrCrossModalAttention(config.projection_dim, config.cross_modal_heads)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(config.logit_scale_init_value)))
        self.hybrid_loss = AtrHybridLoss(config)
        self.post_init()
        self._apply_freezing()

    def _frozen_encoders(self):
        return [e for e, frozen in ((self.audio_model, self.config.freeze_audio_encoder), (self.text_model, self.config.freeze_text_encoder)) if frozen]

    def _apply_freezing(self):
        # Unfrozen encoders keep their own choices (Whisper's sinusoidal positions stay fixed).
        for encoder in self._frozen_encoders():
            encoder.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "AtrModel":
        """Switch train/eval mode; frozen encoders stay in eval mode so dropout never perturbs their outputs."""
        super().train(mode)
        for encoder in self._frozen_encoders():
            encoder.eval()
        return self

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp the logit scale in place to [0, log(logit_scale_max)]; call after each optimizer step (AtrTrainer does)."""
        # In place after the step, not in the forward pass, so the scale keeps its gradient right up to the cap.
        self.logit_scale.clamp_(0, math.log(self.config.logit_scale_max))

    # ---- encoders -------------------------------------------------------------------------------------------

    def get_text_encoder_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The text encoder's token states (B, T, H): what `text_hidden_states=` takes (e.g. from `atr.cache`)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._text_accepts_token_type_ids:
            kwargs["token_type_ids"] = token_type_ids
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_text_encoder):
            return self.text_model(**kwargs).last_hidden_state

    def get_audio_encoder_states(self, chunks: torch.Tensor) -> torch.Tensor:
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

    def _encode_audio_chunks(self, chunks, frame_mask, keep_tokens=False, precomputed=False):
        """Run real chunks (N, ...) through encoder and head in bounded mini-batches: chunk embeddings (N, D) [+ head tokens, mask].

        With `precomputed=True` the chunks are already the encoder's token states (N, L, H).
        """
        embeds, tokens, masks = [], [], []
        step = self.config.audio_chunk_batch_size
        for start in range(0, chunks.shape[0], step):
            batch = chunks[start : start + step]
            frames = None if frame_mask is None else frame_mask[start : start + step]
            if precomputed:
                hidden, mask = batch, self.audio_model.token_mask(frames)
            else:
                with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_audio_encoder):
                    hidden, mask = self.audio_model(batch, frames)
            refined = self.audio_head(hidden, mask)
            embeds.append(self.audio_projection(self._pool_audio_tokens(refined, mask)))
            if keep_tokens:  # the head's tokens: the cross-modal attention projects them itself, lazily
                tokens.append(refined)
                masks.append(torch.ones(refined.shape[:2], dtype=torch.bool, device=refined.device) if mask is None else mask)
        if keep_tokens:
            return torch.cat(embeds), torch.cat(tokens), torch.cat(masks)
        return torch.cat(embeds), None, None

    def _audio_chunks(self, input_features, chunk_mask, audio_attention_mask=None, keep_tokens=False, audio_hidden_states=None):
        """Chunk embeddings (B, C, D) and mask (B, C) from chunked features (or encoder states); padding chunks are never encoded.

        With `keep_tokens`, also each real chunk's head tokens (N, L, H) (`audio_projection` maps them to the shared
        space) and their mask (N, L).
        """
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
        if audio_attention_mask is not None and tuple(audio_attention_mask.shape[:2]) != (batch, num_chunks):
            raise ValueError(
                f"audio_attention_mask has shape {tuple(audio_attention_mask.shape)}, expected ({batch}, {num_chunks}, "
                "frames): pass the feature extractor's audio_attention_mask with its input_features"
            )
        frame_mask = None if audio_attention_mask is None else audio_attention_mask[chunk_mask]
        embeds, tokens, token_mask = self._encode_audio_chunks(input_features[chunk_mask], frame_mask, keep_tokens, precomputed)
        chunk_embeds = embeds.new_zeros(batch, num_chunks, embeds.shape[-1])
        chunk_embeds[chunk_mask] = embeds
        return chunk_embeds, chunk_mask, tokens, token_mask

    # ---- public API -----------------------------------------------------------------------------------------

    @can_return_tuple
    def get_text_features(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
        text_hidden_states: torch.Tensor | None = None, output_attentions: bool | None = None, output_hidden_states: bool | None = None, **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        """Embed captions (or precomputed text-encoder states): `pooler_output` is the L2-normalised (B, projection_dim) embedding."""
        check_transformers_kwargs("get_text_features", kwargs, self.config, output_attentions, output_hidden_states)
        one_of("input_ids", input_ids, "text_hidden_states", text_hidden_states)
        tokens, mask = self._encode_text_tokens(input_ids, attention_mask, token_type_ids, text_hidden_states)
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=F.normalize(self._pool_text(tokens, mask), dim=-1))

    @can_return_tuple
    def get_audio_features(
        self, input_features: torch.Tensor | None = None, chunk_mask: torch.Tensor | None = None, audio_attention_mask: torch.Tensor | None = None,
        chunk_spans: torch.Tensor | None = None, audio_hidden_states: torch.Tensor | None = None, output_attentions: bool | None = None,
        output_hidden_states: bool | None = None, **kwargs,
    ) -> tuple | AtrAudioOutput:
        """Embed chunked audio (or precomputed audio-encoder states): `pooler_output` is the L2-normalised (B, projection_dim) embedding.

        `chunk_spans` (where each chunk came from in the recording) is accepted from the processor's output and not used.
        """
        check_transformers_kwargs("get_audio_features", kwargs, self.config, output_attentions, output_hidden_states)
        one_of("input_features", input_features, "audio_hidden_states", audio_hidden_states)
        chunk_embeds, chunk_mask, _, _ = self._audio_chunks(
            input_features, chunk_mask, audio_attention_mask, audio_hidden_states=audio_hidden_states
        )
        pooled, weights = self.chunk_pooling(chunk_embeds, chunk_mask)
        return AtrAudioOutput(last_hidden_state=chunk_embeds, pooler_output=F.normalize(pooled, dim=-1), chunk_weights=weights)

    def get_chunk_embeddings(self, chunk_features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings (N, D) of N real chunks' features (and frame mask) in one pass: what `get_audio_features` pools."""
        hidden, mask = self.audio_model(chunk_features, frame_mask)
        return self.audio_projection(self._pool_audio_tokens(self.audio_head(hidden, mask), mask))

    @can_return_tuple
    def forward(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None, chunk_mask: torch.Tensor | None = None, audio_attention_mask: torch.Tensor | None = None,
        chunk_spans: torch.Tensor | None = None, return_loss: bool | None = None, audio_hidden_states: torch.Tensor | None = None,
        text_hidden_states: torch.Tensor | None = None, output_attentions: bool | None = None, output_hidden_states: bool | None = None,
        alignment_scale: float | None = None, **kwargs,
    ) -> tuple | AtrOutput:
        r"""Embed audio and/or text; with `return_loss=True` and both modalities, also compute the hybrid loss.

        The loss and its terms are [`AtrHybridLoss`]'s (its docstring has the formula), on the inference embeddings
        and the training-only pair vectors of `pair_embeddings`. `alignment_scale` multiplies the alignment weights
        (AtrTrainer passes its warm-up's, `hybrid_loss.warmup_scale(step)`); None is full weight.

        `audio_hidden_states` (B, C, L, H) with `chunk_mask`, and `text_hidden_states` (B, T, H) with `attention_mask`,
        replace `input_features` / `input_ids` by the frozen encoders' precomputed outputs (`atr.cache`): only the
        heads, attention, pooling and loss run. `chunk_spans` is accepted from the processor's output and not used.
        """
        check_transformers_kwargs("forward", kwargs, self.config, output_attentions, output_hidden_states)
        one_of("input_features", input_features, "audio_hidden_states", audio_hidden_states, required=False)
        one_of("input_ids", input_ids, "text_hidden_states", text_hidden_states, required=False)
        has_text, has_audio = input_ids is not None or text_hidden_states is not None, input_features is not None or audio_hidden_states is not None
        if not (has_text or has_audio):
            raise ValueError("forward needs input_features (audio), input_ids (text) or both")
        want_loss = bool(return_loss) and has_audio and has_text
        text_embeds = audio_embeds = chunk_weights = logits_per_audio = logits_per_text = None
        losses = {}
        if has_text:
            text_tokens, text_mask = self._encode_text_tokens(input_ids, attention_mask, token_type_ids, text_hidden_states)
            text_embeds = F.normalize(self._pool_text(text_tokens, text_mask), dim=-1)
        if has_audio:
            chunk_embeds, chunk_mask, audio_tokens, audio_token_mask = self._audio_chunks(
                input_features, chunk_mask, audio_attention_mask, keep_tokens=want_loss, audio_hidden_states=audio_hidden_states
            )
            pooled, chunk_weights = self.chunk_pooling(chunk_embeds, chunk_mask)
            audio_embeds = F.normalize(pooled, dim=-1)
        if text_embeds is not None and audio_embeds is not None:
            scale = self.logit_scale.exp()
            logits_per_audio = scale * audio_embeds @ text_embeds.t()
            logits_per_text = logits_per_audio.t()
        if want_loss:
            self.hybrid_loss.check_paired(audio_embeds, text_embeds)  # before the pair vectors index captions by clip
            text_values = self.text_projection(text_tokens) if self.config.cross_modal_attention else None
            pair_audio, pair_text = self.pair_embeddings(
                chunk_embeds, chunk_mask, audio_tokens, audio_token_mask, text_values, text_mask, audio_embeds, text_embeds
            )
            losses = self.hybrid_loss(audio_embeds, text_embeds, pair_audio, pair_text, scale, alignment_scale)
        return AtrOutput(
            logits_per_audio=logits_per_audio, logits_per_text=logits_per_text, text_embeds=text_embeds,
            audio_embeds=audio_embeds, chunk_weights=chunk_weights, **losses,
        )

    # ---- training-only parts --------------------------------------------------------------------------------

    def pair_embeddings(
        self, chunk_embeds: torch.Tensor, chunk_mask: torch.Tensor, audio_tokens: torch.Tensor | None, audio_token_mask: torch.Tensor | None,
        text_values: torch.Tensor | None, text_mask: torch.Tensor, audio_query: torch.Tensor, text_query: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-only pair vectors (a~, t~), unnormalised: a~ built from audio values only, t~ from text values only.

        `audio_tokens` (N, L, H) are the head tokens of the N real chunks (row-major over `chunk_mask` (B, C)), whose
        values are `audio_projection(audio_tokens)` (N, L, D); `text_values` (B, T, D) are the caption tokens' values;
        the caption's embedding `text_query` (B, D) picks where a~ looks (tokens within each chunk, then chunks), the
        recording's embedding `audio_query` (B, D) where t~ looks.
        Without cross-modal attention: a~ pools the chunk embeddings with the caption as query, t~ is `text_query`.
        With `alignment_pairs="inference"` (a variant): the inference embeddings themselves.
        """
        if self.config.alignment_pairs == "inference":
            return audio_query, text_query
        if not self.config.cross_modal_attention:
            pooled, _ = self.chunk_pooling(chunk_embeds, chunk_mask, query=text_query)
            return pooled, text_query
        owner = torch.arange(chunk_mask.shape[0], device=chunk_mask.device)[:, None].expand_as(chunk_mask)[chunk_mask]
        attended = self.text_to_audio(text_query[owner], audio_tokens, audio_token_mask, value_projection=self.audio_projection)
        chunk_pairs = attended.new_zeros(*chunk_mask.shape, attended.shape[-1])
        chunk_pairs[chunk_mask] = attended
        pair_audio, _ = self.chunk_pooling(chunk_pairs, chunk_mask, query=text_query)
        pair_text = self.audio_to_text(audio_query, text_values, text_mask)
        return pair_audio, pair_text

    # ---- pretrained backbones -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained_backbones(cls, audio: str | os.PathLike, text: str | os.PathLike, audio_config_overrides: dict | None = None,
                                  return_processor: bool = False, **config_overrides) -> "AtrModel | tuple[AtrModel, ProcessorMixin]":
        """Build a model around pretrained encoders given by Hub id or local path (a registered audio family's; any text AutoModel).

        `audio_config_overrides` changes the audio config before loading, e.g. `{"max_source_positions": 500}` for 10 s
        Whisper windows (its own positions cut), `{"encoder_layers": 2}` for its first two layers only.
        With `return_processor=True`, returns `(model, processor)`: an `AtrProcessor` whose feature extractor follows
        the audio checkpoint's own preprocessor config (mel scale, range, rate) and the text checkpoint's tokenizer.
        """
        audio_path, text_path = cls.resolve_backbone(audio), cls.resolve_backbone(text)
        audio_type = AutoConfig.from_pretrained(audio_path).model_type
        audio_encoder = audio_backbone_for_checkpoint(audio_type, audio).load_backbone(audio_path, **(audio_config_overrides or {}))
        text_encoder = AutoModel.from_pretrained(text_path)
        config = AtrConfig(audio_config=audio_encoder.config, text_config=text_encoder.config, **config_overrides)
        config.audio_backbone_id, config.text_backbone_id = str(audio), str(text)
        model = cls(config)
        model.audio_model.encoder.load_state_dict(audio_encoder.state_dict())
        model.text_model.load_state_dict(text_encoder.state_dict())
        if not return_processor:
            return model
        from .processing_atr import AtrProcessor

        return model, AtrProcessor.from_pretrained_backbones(audio_path, text_path, config.audio_config)


__all__ = ["AtrModel", "AtrOutput", "AtrAudioOutput", "AtrPreTrainedModel"]
