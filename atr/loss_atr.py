"""AtrHybridLoss: the paper's hybrid loss (contrastive + cosine + L1 alignment); its terms and their weights are named here once."""

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .configuration_atr import AtrConfig


class LossTerm(NamedTuple):
    """One term of the hybrid loss: the config field that weights it, its formula as the model card prints it."""

    weight: str
    formula: str
    alignment: bool  # ramped in by the alignment warm-up


# Output name -> term, in the formula's order. AtrOutput's fields, the trainer's logs, the hyperparameter search and
# the model card all take the names from here.
LOSS_TERMS = {
    "loss_cosine": LossTerm("lambda_cosine", "mean_i(1 - cos(a~_i, t~_i))", alignment=True),
    "loss_l1": LossTerm("lambda_l1", "mean_(i,d) |a~_id - t~_id|", alignment=True),
    "loss_contrastive": LossTerm("lambda_contrastive", "(CE(s * A T^T, diag) + CE(s * T A^T, diag)) / 2", alignment=False),
    # A variant (issue 27): the pair vectors also scored against the batch's other pairs, not only aligned.
    "loss_pair_contrastive": LossTerm("lambda_pair_contrastive", "(CE(s * A~ T~^T, diag) + CE(s * T~ A~^T, diag)) / 2", alignment=False),
}
LOSS_WEIGHTS = tuple(term.weight for term in LOSS_TERMS.values())
PAPER_TERMS = ("loss_cosine", "loss_l1", "loss_contrastive")  # the paper's three; the others are variants
PAPER_WEIGHTS = tuple(LOSS_TERMS[name].weight for name in PAPER_TERMS)  # what the hyperparameter search tunes


def loss_formula(config: AtrConfig) -> str:
    """The hybrid loss with `config`'s weights, one term per line (the model card's formula)."""
    # A zero-weight variant term is left out: the card shows the loss the model was trained with.
    terms = [f"{getattr(config, term.weight):g} * {term.formula}" for name, term in LOSS_TERMS.items()
             if getattr(config, term.weight) or name in PAPER_TERMS]
    return "loss = " + "\n     + ".join(terms)


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
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


def contrastive_loss(audio_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor | float, gather_negatives: bool = True) -> torch.Tensor:
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


class AtrHybridLoss(nn.Module):
    r"""The hybrid loss of arXiv 2604.23323, with the weights of an `AtrConfig` (read at each call).

    loss = lambda_cosine * mean_i(1 - cos(a~_i, t~_i)) + lambda_l1 * mean_(i,d) |a~_id - t~_id|
           + lambda_contrastive * (CE(s * A T^T, diag) + CE(s * T A^T, diag)) / 2
    where A, T are the L2-normalised inference embeddings (learned-query chunk pooling: no caption ever sees another
    clip), s = exp(logit_scale) (clamped to logit_scale_max after each optimizer step), negatives are gathered
    across processes when distributed (`gather_negatives`), and a~_i, t~_i are the L2-normalised training-only pair
    embeddings of bidirectional cross-modal attention: a~_i mixes only audio token values of clip i, the caption
    deciding where to look (in each chunk, then across chunks); t~_i mixes only caption i's token values, the
    recording's embedding deciding where to look. Neither can copy the other modality, so the alignment terms align.
    During the warm-up the two alignment weights are multiplied by `alignment_scale` (see `warmup_scale`).
    Two variants: `lambda_pair_contrastive` adds the same InfoNCE over the pair vectors (A~, T~), and
    `alignment_pairs="inference"` makes the pairs the inference embeddings themselves (a~_i = A_i, t~_i = T_i).
    """

    def __init__(self, config: AtrConfig):
        super().__init__()
        self.config = config

    @staticmethod
    def check_paired(audio_embeds: torch.Tensor, text_embeds: torch.Tensor) -> None:
        """Refuse unpaired batches: the loss pairs clip i with caption i."""
        if audio_embeds.shape[0] != text_embeds.shape[0]:
            raise ValueError(
                f"return_loss=True needs paired inputs, got {audio_embeds.shape[0]} clips and "
                f"{text_embeds.shape[0]} captions: pass one caption per clip"
            )

    def warmup_scale(self, step: int) -> float:
        """The alignment weights' factor at optimizer step `step`: linear from 0 to 1 over config.alignment_warmup_steps."""
        warmup = self.config.alignment_warmup_steps
        return min(1.0, step / warmup) if warmup else 1.0

    def forward(
        self, audio_embeds: torch.Tensor, text_embeds: torch.Tensor, pair_audio: torch.Tensor, pair_text: torch.Tensor,
        logit_scale: torch.Tensor, alignment_scale: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Terms (unweighted, named as in LOSS_TERMS) and `loss`, their weighted sum (alignment ones times `alignment_scale`, None: 1)."""
        self.check_paired(audio_embeds, text_embeds)
        pair_audio, pair_text = F.normalize(pair_audio, dim=-1), F.normalize(pair_text, dim=-1)
        terms = {
            "loss_cosine": (1 - (pair_audio * pair_text).sum(-1)).mean(),
            "loss_l1": (pair_audio - pair_text).abs().mean(),
            "loss_contrastive": contrastive_loss(audio_embeds, text_embeds, logit_scale, self.config.gather_negatives),
            "loss_pair_contrastive": contrastive_loss(pair_audio, pair_text, logit_scale, self.config.gather_negatives),
        }

        def weighted(alignment):
            return sum(getattr(self.config, term.weight) * terms[name] for name, term in LOSS_TERMS.items() if term.alignment == alignment)

        scale = 1.0 if alignment_scale is None else alignment_scale
        return {**terms, "loss": scale * weighted(True) + weighted(False)}


__all__ = ["AtrHybridLoss", "LOSS_TERMS", "LOSS_WEIGHTS", "PAPER_TERMS", "PAPER_WEIGHTS"]
