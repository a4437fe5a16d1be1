"""Audio-text retrieval metrics (atr.metrics) as a Hugging Face `evaluate` metric: `evaluate.load(atr.metrics.RETRIEVAL_METRIC_PATH)`."""

import datasets
import evaluate

from atr.metrics import DEFAULT_KS, MAP_K, audio_text_retrieval_metrics, retrieval_metrics, zero_shot_classification_metrics

_DESCRIPTION = """
Ranking metrics for embedding retrieval (arXiv 2604.23323). Each prediction is a query embedding, each reference
the list of indices of its relevant rows in `candidate_embeds` (passed to `compute`). Scores are dot products,
ranks are exact with ties broken by candidate index, and memory is bounded by scoring blocks of queries.
Configurations: `default` (generic retrieval), `audio_text` (predictions are caption embeddings, references the
index of each caption's clip, candidates the clip embeddings; reports t2a_* and a2t_*), `zero_shot` (predictions
are clip embeddings, references their class indices, candidates the class-prompt embeddings).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: query embeddings, one float vector per query.
    references: relevant candidate indices per query (`audio_text`: one clip index per caption).
    candidate_embeds: (num_candidates, dim) array of candidate embeddings.
    ks: cut-offs for R@K / recall@K, default (1, 5, 10).
    block_size: queries scored at once (default: a 64 MiB float32 tile).
Returns:
    R{k} (hit rate), recall{k}, mAP10, MRR10, mean_rank, median_rank and per_query arrays; see docs/metrics.md.
Examples:
    >>> from atr.metrics import RETRIEVAL_METRIC_PATH
    >>> metric = evaluate.load(RETRIEVAL_METRIC_PATH, "audio_text")
    >>> results = metric.compute(predictions=text_embeds, references=caption_to_audio, candidate_embeds=audio_embeds)
    >>> results["t2a_R1"], results["a2t_mAP10"]
"""

_CITATION = """
@article{atr2026,
  title   = {Robust Audio-Text Retrieval via Cross-Modal Attention and Hybrid Loss},
  journal = {arXiv preprint arXiv:2604.23323},
  year    = {2026}
}
"""

_CONFIGS = ("default", "audio_text", "zero_shot")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalMetric(evaluate.Metric):
    """R@K, recall@K, mAP@10, MRR@10 and ranks of query embeddings against candidate embeddings."""

    def _info(self):
        if self.config_name not in _CONFIGS:
            raise KeyError(f"config_name is {self.config_name!r}, expected one of {_CONFIGS}")
        reference = datasets.Value("int64") if self.config_name == "audio_text" else datasets.Sequence(datasets.Value("int64"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": reference}
            ),
            reference_urls=["https://arxiv.org/abs/2604.23323"],
        )

    def _compute(self, predictions, references, candidate_embeds=None, ks=DEFAULT_KS, block_size=None, map_k=MAP_K):
        if candidate_embeds is None:
            raise ValueError("candidate_embeds is missing: pass compute(..., candidate_embeds=<(N, dim) array>)")
        if self.config_name == "audio_text":
            return audio_text_retrieval_metrics(candidate_embeds, predictions, references, ks, block_size, map_k)
        if self.config_name == "zero_shot":
            return zero_shot_classification_metrics(predictions, candidate_embeds, references, ks, block_size, map_k)
        return retrieval_metrics(predictions, candidate_embeds, references, ks, block_size, map_k)
