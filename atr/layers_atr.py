"""AtrModel's parts: one adapter per audio backbone family, the projection head, attention pooling, cross-modal attention."""

import copy
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import ClapAudioModel, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder, sinusoids


@functools.lru_cache(maxsize=8)
def bicubic_stretch_matrix(frames: int, target: int) -> np.ndarray:
    """(target, frames) matrix of PyTorch's 1-D bicubic interpolation with align_corners=True (a = -0.75, edges clamped)."""
    # numpy, not F.interpolate of an identity: built at trace time, ONNX export sees one constant, not a traced resize
    a = -0.75
    # float32 positions, as PyTorch's CPU kernel computes them: the same taps, and weights equal up to float rounding
    source = np.arange(target, dtype=np.float32) * np.float32((frames - 1) / (target - 1))
    first = np.floor(source).astype(np.int64)
    t = (source - first).astype(np.float64)
    near, far = np.stack([t, 1 - t]), np.stack([t + 1, 2 - t])
    inner = ((a + 2) * near - (a + 3)) * near * near + 1  # taps first and first + 1
    outer = ((a * far - 5 * a) * far + 8 * a) * far - 4 * a  # taps first - 1 and first + 2
    matrix = np.zeros((target, frames))
    rows = np.arange(target)
    for offset, weight in zip((-1, 0, 1, 2), (outer[0], inner[0], inner[1], outer[1])):
        np.add.at(matrix, (rows, np.clip(first + offset, 0, frames - 1)), weight)
    return matrix.astype(np.float32)


class ClapAudioAdapter(nn.Module):
    """HTSAT (transformers `ClapAudioModel`, fused or not): chunk features (N, 1 or 4, frames, mels) to tokens (N, F'*T', hidden)."""

    def __init__(self, audio_config):
        super().__init__()
        self.encoder = ClapAudioModel(audio_config)
        self.hidden_size = audio_config.hidden_size
        self.fused = bool(getattr(audio_config, "enable_fusion", False))
        htsat = self.encoder.audio_encoder
        self.image_frames = int(htsat.spec_size * htsat.freq_ratio)  # the frames HTSAT stretches a chunk to

    def forward(self, features, frame_mask=None):
        """Return the token sequence (N, L, H) and its mask (None: repeat-padded windows hold real sound everywhere)."""
        # A chunk never exceeds the window, so no chunk is "longer" and the fusion branch (local crops) stays off.
        is_longer = torch.zeros(features.shape[0], 1, dtype=torch.bool, device=features.device) if self.fused else None
        hidden = self.encoder(input_features=self._stretch_frames(features), is_longer=is_longer).last_hidden_state  # (N, H, F', T')
        return hidden.flatten(2).transpose(1, 2), None

    def _stretch_frames(self, features):
        """With BatchNorm on running statistics, HTSAT's bicubic stretch of the frames done first, as one matmul (equal up to rounding)."""
        # The encoder stretches (N, C, frames, mels) along time by bicubic interpolation after its BatchNorm; on a CPU
        # that interpolation costs about 6% of the forward pass (ONNX Runtime and PyTorch alike). In eval mode the
        # BatchNorm is a per-mel affine map and the interpolation weights of each output frame sum to 1, so the two
        # commute: stretching first, by the interpolation's own matrix, gives the same input and the encoder skips its
        # own. A BatchNorm in training uses the real frames' statistics, so then the encoder keeps its path.
        frames, norm = features.shape[-2], self.encoder.audio_encoder.batch_norm
        if (norm.training or not norm.track_running_stats) or frames >= self.image_frames:
            return features
        matrix = torch.from_numpy(bicubic_stretch_matrix(frames, self.image_frames)).to(features.device)
        # float32 like PyTorch's interpolation, whatever the features' dtype
        return torch.einsum("st,nctm->ncsm", matrix, features.float()).to(features.dtype)

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
        self.config = audio_config  # read by WhisperModel._mask_input_features (SpecAugment)
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
        if self.training and self.config.apply_spec_augment:
            # WhisperConfig's own SpecAugment (apply_spec_augment, mask_time_*, mask_feature_*), which WhisperEncoder
            # alone ignores; time masks fall on real frames only. WhisperModel's method needs just .config and .training.
            features = WhisperModel._mask_input_features(self, features.clone(), frame_mask)
        return self.encoder(input_features=features).last_hidden_state, self.token_mask(frame_mask)

    @staticmethod
    def token_mask(frame_mask):
        """Token mask (N, L) from the frame mask (N, 2L): the second conv has stride 2, so token t is centred on frame 2t."""
        return None if frame_mask is None else frame_mask[:, ::2].bool()

    @staticmethod
    def load_backbone(path, max_source_positions=None, **config_overrides):
        """Load the encoder from a Whisper checkpoint, its own sinusoidal positions cut (or extended) to `max_source_positions`."""
        # `WhisperEncoder.from_pretrained` would silently load none; a smaller config loaded with ignore_mismatched_sizes
        # would re-create the positions (close to Whisper's, not equal), so the checkpoint's own rows are kept instead.
        encoder = WhisperModel.from_pretrained(path, **config_overrides).get_encoder()
        available = encoder.config.max_source_positions
        if max_source_positions is None or max_source_positions == available:
            return encoder
        config = copy.deepcopy(encoder.config)
        config.max_source_positions = max_source_positions
        state = encoder.state_dict()
        positions = sinusoids(max_source_positions, config.d_model)  # beyond the checkpoint: Whisper's formula (a test model)
        kept = min(available, max_source_positions)
        positions[:kept] = state["embed_positions.weight"][:kept]
        state["embed_positions.weight"] = positions
        resized = WhisperEncoder(config)
        resized.load_state_dict(state)
        return resized


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
        # No key bias: with one query per row it adds the same score to every token, which the softmax cancels.
        self.key = nn.Linear(dim, dim, bias=False)

    def forward(self, query, values, mask=None, value_projection: nn.Linear | None = None):
        """Attend from query (N, D) over values (N, L, D) where mask (N, L) is set: (N, D).

        With `value_projection`, `values` are tokens (N, L, H) and the values are `value_projection(values)`, never
        materialised: the same result at a fraction of the cost when L is large.
        """
        if value_projection is not None:
            return self._attend_projected(query, values, mask, value_projection)
        n, length, dim = values.shape
        split = (n, length, self.heads, dim // self.heads)
        q = self.query(query).view(n, self.heads, 1, dim // self.heads)
        k = self.key(values).view(split).transpose(1, 2)
        v = values.view(split).transpose(1, 2)
        attn_mask = None if mask is None else mask.bool()[:, None, None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).reshape(n, dim)

    def _attend_projected(self, query, tokens, mask, projection):
        # Keys are W_k (P x + b_p) for tokens x: the score q_h . k_h is (P^T W_k,h^T q_h) . x plus a term constant over
        # the tokens, which the softmax cancels; each head's output is P_h (sum of weights * x) + b_p,h, since the
        # weights sum to 1. So neither the projected values nor their keys (two D x D maps per token) are computed.
        n, dim, head_dim = query.shape[0], self.key.out_features, self.key.out_features // self.heads
        q = self.query(query).view(n, self.heads, head_dim)
        token_query = torch.einsum("nhe,hed,dk->nhk", q, self.key.weight.view(self.heads, head_dim, dim), projection.weight)
        scores = torch.einsum("nhk,nlk->nhl", token_query, tokens) / math.sqrt(head_dim)
        if mask is not None:
            scores = scores.masked_fill(~mask.bool()[:, None, :], float("-inf"))
        mixed = torch.einsum("nhl,nlk->nhk", scores.softmax(dim=-1), tokens)
        out = torch.einsum("nhk,hek->nhe", mixed, projection.weight.view(self.heads, head_dim, -1))
        return (out + projection.bias.view(self.heads, head_dim)).reshape(n, dim)


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


def one_of(raw_name, raw, states_name, states, required=True):
    """Refuse both raw inputs and precomputed encoder states of one modality (and neither, when one is required)."""
    both = raw is not None and states is not None
    if both or required and raw is None and states is None:
        got = f"both {raw_name} and {states_name}" if both else f"neither {raw_name} nor {states_name}"
        raise ValueError(f"got {got}: pass either {raw_name} or {states_name} (the frozen encoder's precomputed states), not {'both' if both else 'neither'}")
