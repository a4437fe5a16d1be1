"""AtrModel's parts: one adapter per audio backbone family, the projection head, attention pooling, cross-modal attention."""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import ClapAudioModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder


class ClapAudioAdapter(nn.Module):
    """HTSAT (transformers `ClapAudioModel`, fused or not): chunk features (N, 1 or 4, frames, mels) to tokens (N, F'*T', hidden)."""

    def __init__(self, audio_config):
        super().__init__()
        self.encoder = ClapAudioModel(audio_config)
        self.hidden_size = audio_config.hidden_size
        self.fused = bool(getattr(audio_config, "enable_fusion", False))

    def forward(self, features, frame_mask=None):
        """Return the token sequence (N, L, H) and its mask (None: repeat-padded windows hold real sound everywhere)."""
        # A chunk never exceeds the window, so no chunk is "longer" and the fusion branch (local crops) stays off.
        is_longer = torch.zeros(features.shape[0], 1, dtype=torch.bool, device=features.device) if self.fused else None
        hidden = self.encoder(input_features=features, is_longer=is_longer).last_hidden_state  # (N, H, F', T'): a map
        return hidden.flatten(2).transpose(1, 2), None

    @staticmethod
    def token_mask(frame_mask):
        """HTSAT tokens mix frequency and time in a folded image, and its input is repeat-padded: every token is real."""
        return None

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

    def forward(self, features, frame_mask=None):
        """Return the token sequence (N, L, H) and its mask (N, L): which tokens hold audio rather than zero padding."""
        if features.shape[-1] != self.expected_frames:
            raise ValueError(
                f"input_features have {features.shape[-1]} frames per chunk, the Whisper encoder expects "
                f"{self.expected_frames} (2 * max_source_positions): build the feature extractor with "
                "AtrFeatureExtractor.from_audio_config(config.audio_config)"
            )
        return self.encoder(input_features=features).last_hidden_state, self.token_mask(frame_mask)

    @staticmethod
    def token_mask(frame_mask):
        """Token mask (N, L) from the frame mask (N, 2L): the second conv has stride 2, so token t is centred on frame 2t."""
        return None if frame_mask is None else frame_mask[:, ::2].bool()

    @staticmethod
    def load_backbone(path, **kwargs):
        """Load the encoder from a Whisper checkpoint (`WhisperEncoder.from_pretrained` would silently load none)."""
        from transformers import WhisperModel

        return WhisperModel.from_pretrained(path, **kwargs).get_encoder()


# One adapter per audio backbone family: adding AST or wav2vec2 means adding an entry here, nothing else.
AUDIO_ADAPTERS = {"clap_audio_model": ClapAudioAdapter, "whisper": WhisperAudioAdapter}


class AtrTransformerProjection(nn.Module):
    """The per-modality refinement: linear to the head width, transformer layers over the token sequence, then norm."""

    def __init__(self, input_size, config):
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


class AtrCrossModalAttention(nn.Module):
    """Training-only attention: one modality's query decides where to look; the output mixes only the attended tokens' values.

    The values are the attended modality's own token embeddings, unprojected, so each head's output is a convex
    combination of them: the querying modality cannot write itself into the result (no copy shortcut for alignment).
    """

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)

    def forward(self, query, values, mask=None):
        """Attend from query (N, D) over values (N, L, D) where mask (N, L) is set: (N, D)."""
        n, length, dim = values.shape
        split = (n, length, self.heads, dim // self.heads)
        q = self.query(query).view(n, self.heads, 1, dim // self.heads)
        k = self.key(values).view(split).transpose(1, 2)
        v = values.view(split).transpose(1, 2)
        attn_mask = None if mask is None else mask.bool()[:, None, None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).reshape(n, dim)


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


def gather_with_grad(tensor):
    """Concatenate `tensor` from every process along dim 0, keeping gradients; this process's rows stay local."""
    from torch.distributed.nn.functional import all_gather

    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
    if len({int(s) for s in sizes}) > 1:
        raise ValueError(
            f"per-process batch sizes differ ({[int(s) for s in sizes]}): contrastive negatives can only be gathered "
            "from equal batches; set dataloader_drop_last=True"
        )
    return torch.cat(all_gather(tensor.contiguous()))


def check_transformers_kwargs(method, kwargs, output_attentions=None, output_hidden_states=None):
    """Refuse keyword arguments AtrModel does not know, and the output flags it cannot honour, naming them."""
    # transformers passes these flags to every model; anything else is a typo that would otherwise do nothing.
    if kwargs:
        raise TypeError(f"AtrModel.{method} got unexpected keyword arguments {sorted(kwargs)}")
    if output_attentions or output_hidden_states:
        raise ValueError(
            f"AtrModel.{method} does not return attentions or hidden states: call get_audio_encoder_states / "
            "get_text_encoder_states for the encoders' token states"
        )


def contrastive_loss(audio_embeds, text_embeds, scale, gather_negatives=True):
    """Symmetric InfoNCE; in distributed training the negatives come from every process (local rows, global columns)."""
    offset = 0
    all_audio, all_text = audio_embeds, text_embeds
    if gather_negatives and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        all_audio, all_text = gather_with_grad(audio_embeds), gather_with_grad(text_embeds)
        offset = dist.get_rank() * audio_embeds.shape[0]
    labels = torch.arange(audio_embeds.shape[0], device=audio_embeds.device) + offset
    loss_audio = F.cross_entropy(scale * audio_embeds @ all_text.t(), labels)
    loss_text = F.cross_entropy(scale * text_embeds @ all_audio.t(), labels)
    return (loss_audio + loss_text) / 2


def one_of(raw_name, raw, states_name, states, required=True):
    """Refuse both raw inputs and precomputed encoder states of one modality (and neither, when one is required)."""
    both = raw is not None and states is not None
    if both or required and raw is None and states is None:
        got = f"both {raw_name} and {states_name}" if both else f"neither {raw_name} nor {states_name}"
        raise ValueError(f"got {got}: pass either {raw_name} or {states_name} (the frozen encoder's precomputed states), not {'both' if both else 'neither'}")
