"""AtrModel's parts: the projection head, attention pooling, cross-modal attention (audio adapters: backbones_atr)."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_atr import AtrConfig


class AtrTransformerProjection(nn.Module):
    """The per-modality refinement: linear to the head width, transformer layers over the token sequence, then norm."""

    def __init__(self, input_size: int, config: AtrConfig):
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

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Refine tokens (N, L, input_size) with mask (N, L) into (N, L, head_hidden_size)."""
        hidden = self.input_projection(tokens)
        if self.layers is not None:
            hidden = self.layers(hidden, src_key_padding_mask=None if mask is None else ~mask.bool())
        return self.norm(hidden)


class AtrAttentionPooling(nn.Module):
    """Attention pooling over chunk embeddings: a learned query at inference, the paired caption's embedding in training."""

    def __init__(self, dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim))
        self.key = nn.Linear(dim, dim)

    def forward(self, chunk_embeds: torch.Tensor, chunk_mask: torch.Tensor, query: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        # No key bias: with one query per row it adds the same score to every token, which the softmax cancels.
        self.key = nn.Linear(dim, dim, bias=False)

    def forward(self, query: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None = None, value_projection: nn.Linear | None = None) -> torch.Tensor:
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


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of tokens (N, L, H) over positions where mask (N, L) is set; all positions when mask is None."""
    if mask is None:
        return tokens.mean(1)
    mask = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def masked_max(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Max of tokens (N, L, H) over positions where mask (N, L) is set; all positions when mask is None."""
    if mask is None:
        return tokens.max(1).values
    mask = mask.bool().unsqueeze(-1)
    # A row with no real token (a padding chunk) gives 0, as masked_mean does, never the dtype's minimum.
    return tokens.masked_fill(~mask, torch.finfo(tokens.dtype).min).max(1).values * mask.any(1)


def check_transformers_kwargs(method: str, kwargs: dict[str, object], config: AtrConfig, output_attentions: bool | None = None,
                              output_hidden_states: bool | None = None) -> None:
    """Refuse keyword arguments AtrModel does not know, and the output flags it cannot honour (keyword or config), naming them."""
    # transformers passes these flags to every model; anything else is a typo that would otherwise do nothing.
    if kwargs:
        raise TypeError(f"AtrModel.{method} got unexpected keyword arguments {sorted(kwargs)}")
    for name, value in (("output_attentions", output_attentions), ("output_hidden_states", output_hidden_states)):
        # transformers' rule: the keyword wins, the config decides when it is None
        source = f"{name}=True" if value else f"config.{name}=True" if value is None and getattr(config, name) else None
        if source:
            raise ValueError(
                f"AtrModel.{method} got {source} but does not return attentions or hidden states: call "
                "get_audio_encoder_states / get_text_encoder_states for the encoders' token states"
            )


def one_of(raw_name: str, raw: torch.Tensor | None, states_name: str, states: torch.Tensor | None, required: bool = True) -> None:
    """Refuse both raw inputs and precomputed encoder states of one modality (and neither, when one is required)."""
    both = raw is not None and states is not None
    if both or required and raw is None and states is None:
        got = f"both {raw_name} and {states_name}" if both else f"neither {raw_name} nor {states_name}"
        raise ValueError(f"got {got}: pass either {raw_name} or {states_name} (the frozen encoder's precomputed states), not {'both' if both else 'neither'}")
