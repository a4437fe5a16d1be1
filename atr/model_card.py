"""The model card (README.md) of a trained atr model: Hub metadata with a model-index, usage, method, training, results."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .backbones_atr import audio_backbone
from .loss_atr import loss_formula
from .model_card_template import CITATION, TEMPLATE, USAGE
from .pretrained import PACKAGED_BACKBONES

if TYPE_CHECKING:
    from transformers import ProcessorMixin

    from .configuration_atr import AtrConfig
    from .modeling_atr import AtrModel

# Results as given to the card: one flat metrics dict (AtrTrainer.evaluate's) or records (evaluate's results.json)
Results = Mapping | Sequence[Mapping]

RETRIEVAL_TASK = "audio-text-retrieval"
ZERO_SHOT_TASK = "zero-shot-audio-classification"
# The Hub has no zero-shot-audio-classification pipeline tag (huggingface.js packages/tasks/src/pipelines.ts); CLAP
# models show as feature-extraction with the task as a tag.
PIPELINE_TAG = "feature-extraction"
WIDGET_FILE = "widget_example.flac"
WIDGET_TEMPLATE = "This is a sound of {}."  # the zero-shot-audio-classification pipeline's default hypothesis
WIDGET_LABELS = 4  # candidate labels of the widget's example: a synthetic (licence-free) clip's events and others
METRIC_DECIMALS = 4
# Scalar metrics of atr.metrics that go into the model-index (anything else in a results dict is ignored).
METRIC_KEY = re.compile(r"^(t2a_|a2t_|first_label_)?(R\d+|recall\d+|mAP\d+|MRR\d+|mean_rank|median_rank|accuracy)$")
TABLE_COLUMNS = {
    RETRIEVAL_TASK: ["t2a_R1", "t2a_R5", "t2a_R10", "t2a_mAP10", "a2t_R1", "a2t_R5", "a2t_R10", "a2t_mAP10"],
    ZERO_SHOT_TASK: ["accuracy", "R5", "mAP10", "first_label_R1", "first_label_mAP10"],
}
TABLE_START, TABLE_END = "<!-- atr-eval-results:start -->", "<!-- atr-eval-results:end -->"
PLACEHOLDER_REPO = "your-username/atr-model"
TRAINING_KEYS = (
    "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps",
    "warmup_steps", "warmup_ratio", "lr_scheduler_type", "weight_decay", "optim", "max_grad_norm", "bf16", "fp16", "seed",
)


def _hub_id(backbone: str | None) -> str | None:
    """The Hub id of a backbone given as a Hub id or a local path (None when a local path has no known Hub id)."""
    if not backbone:
        return None
    for hub_id, (_, folders) in PACKAGED_BACKBONES.items():  # a local copy of a known Hub model (the offline packages)
        if any(module in Path(backbone).parts for module, _ in folders):
            return hub_id
    if os.path.exists(backbone) or backbone.startswith((".", "/", "~")) or backbone.count("/") != 1:
        return None
    return backbone


def _is_hub_dataset(dataset: str | None) -> bool:
    return bool(dataset) and dataset.count("/") == 1 and not os.path.exists(dataset)


def _task_of(metrics: Mapping) -> str:
    return RETRIEVAL_TASK if any(key.startswith(("t2a_", "a2t_")) for key in metrics) else ZERO_SHOT_TASK


def _records(results, dataset: str | None = None, split: str | None = None) -> list[dict]:
    """Results as records; a flat metrics dict (e.g. from AtrTrainer.evaluate) is one clean record of `dataset`."""
    if not results:
        return []
    if isinstance(results, Mapping):
        if dataset is None:
            raise ValueError("results is a flat metrics dict but dataset is None: pass dataset=<its name>")
        results = [{"dataset": dataset, "split": split, "condition": "clean", "metrics": results}]
    records = []
    for index, record in enumerate(results):
        if "dataset" not in record or not isinstance(record.get("metrics"), Mapping):
            raise ValueError(
                f"results record at index {index} has keys {sorted(record)}: expected at least 'dataset' and a "
                "'metrics' dict (optional: 'split', 'condition', 'task', 'dataset_id')"
            )
        records.append(record)
    return records


def eval_results_from(results: Results | None, dataset: str | None = None, split: str | None = None) -> list[EvalResult]:
    """`EvalResult`s (one per metric) from results records `{dataset, split, condition, task, dataset_id, metrics}`."""
    eval_results = []
    for record in _records(results, dataset, split):
        metrics = {key: value for key, value in record["metrics"].items() if METRIC_KEY.match(key.removeprefix("test_"))}
        condition = record.get("condition") or "clean"
        for key, value in metrics.items():
            key = key.removeprefix("test_")
            eval_results.append(
                EvalResult(
                    task_type=record.get("task") or _task_of(metrics),
                    dataset_type=record.get("dataset_id") or record["dataset"],
                    dataset_name=record["dataset"],
                    dataset_split=record.get("split"),
                    metric_type=key,
                    metric_value=round(float(value), METRIC_DECIMALS),
                    metric_name=f"{key} ({condition})",
                    # The noise condition is a setting of the evaluation, not of the dataset: keep it per metric.
                    metric_config=condition,
                )
            )
    return eval_results


def eval_tables(eval_results: Sequence[EvalResult]) -> str:
    """Markdown tables of the headline metrics, one per task, one row per dataset/split/condition."""
    rows: dict[str, dict[tuple, dict]] = {}
    for result in eval_results:
        row_key = (result.dataset_name, result.dataset_split or "", result.metric_config or "clean")
        rows.setdefault(result.task_type, {}).setdefault(row_key, {})[result.metric_type] = result.metric_value
    if not rows:
        return "No evaluation results yet: run `python evaluate.py --model <this model> --update_model_card`."
    tables = []
    for task, task_rows in rows.items():
        columns = [c for c in TABLE_COLUMNS.get(task, []) if any(c in values for values in task_rows.values())]
        columns = columns or sorted({key for values in task_rows.values() for key in values})
        lines = [f"**{task}**", "", "| dataset | split | condition | " + " | ".join(columns) + " |"]
        lines.append("|" + "---|" * (3 + len(columns)))
        for (name, split, condition), values in task_rows.items():
            cells = [f"{values[c]:.4f}" if c in values else "" for c in columns]
            lines.append(f"| {name} | {split} | {condition} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def _architecture(config) -> str:
    audio = config.audio_config
    spec = audio_backbone(audio.model_type)
    audio_name, audio_width, depth = spec.card_name or f"`{audio.model_type}`", spec.encoder_width(audio), spec.encoder_depth(audio)
    text = config.text_config
    return "\n".join(
        [
            f"- Audio encoder: {audio_name}, {f'depth {depth}, ' if depth else ''}width {audio_width}"
            f" ({'frozen' if config.freeze_audio_encoder else 'fine-tuned'}), applied to each chunk of the recording.",
            f"- Text encoder: `{text.model_type}`, width {text.hidden_size}, `{config.text_pooling}` pooling"
            f" ({'frozen' if config.freeze_text_encoder else 'fine-tuned'}).",
            f"- Embedding refinement per modality: a {config.head_layers}-layer transformer projection (width"
            f" {config.head_hidden_size}, {config.head_heads} heads, dropout {config.head_dropout}) over the encoder's"
            f" tokens, then a linear projection to the shared {config.projection_dim}-d space.",
            "- Chunk pooling: attention over the chunk embeddings with a learned query at inference (the paired"
            " caption's embedding in the training alignment terms).",
            f"- Bidirectional cross-modal attention ({config.cross_modal_heads} heads): "
            + ("used in training only; " if config.cross_modal_attention else "disabled; ")
            + "inference embeds audio and text independently.",
            "- Embeddings are L2-normalised; similarity is their dot product (cosine).",
        ]
    )


def _loss(config) -> str:
    return (
        f"```\n{loss_formula(config)}\n```\n\n"
        "A, T are the inference audio and text embeddings of a batch (symmetric InfoNCE, negatives gathered across"
        " processes in distributed training); a~_i, t~_i are the L2-normalised training-only pair embeddings of"
        " bidirectional cross-modal attention: a~_i mixes only clip i's audio token values, the caption choosing where"
        " to look, and t~_i only caption i's token values, the recording choosing where to look, so neither can copy"
        f" the other. s = exp(logit_scale) starts at {config.logit_scale_init_value:.4g} (temperature"
        f" {1 / config.logit_scale_init_value:.3g}) and is clamped to {config.logit_scale_max:g} after each step."
        " The cosine and L1 terms keep training stable at small batch sizes (down to 4)."
    )


def _training(training_args: Mapping | None, data_args: Mapping | None, dataset: str | None) -> str:
    lines = [f"- Data: `{dataset}`" + (" (the built-in synthetic sound scenes)" if dataset == "synthetic" else "")]
    for key, value in (data_args or {}).items():
        if key != "dataset" and value is not None and isinstance(value, (str, int, float, bool)):
            lines.append(f"- {key}: `{value}`")
    hyper = [(key, training_args[key]) for key in TRAINING_KEYS if (training_args or {}).get(key) not in (None, "")]
    if hyper:
        lines += ["", "| hyperparameter | value |", "|---|---|", *(f"| {key} | {value} |" for key, value in hyper)]
    return "\n".join(lines) if dataset or hyper else "Training details were not recorded."


def _limitations(dataset: str | None) -> str:
    lines = []
    if dataset in (None, "synthetic"):
        lines.append(
            "**This is a demo model.** It was trained on the built-in synthetic sound scenes (seeded scenes of 1 to 3"
            " synthesised events, each with 5 templated captions), not on recorded audio: its embeddings show the pipeline works end to end and"
            " are not useful for real sounds. Train on Clotho/AudioCaps (configs/) for a usable model."
        )
    lines += [
        "- Captions are matched in the language of the text encoder's training data (English for the default encoders).",
        "- Robustness was trained and measured for additive noise at 5-15 dB SNR; other corruptions are untested.",
        "- Retrieval quality depends on the training captions' vocabulary; rare sound events may be poorly ranked.",
    ]
    return "\n".join(lines)


def widget_example(model: AtrModel, processor: ProcessorMixin, folder: str | os.PathLike, repo_id: str) -> list[dict]:
    """Write a synthetic example clip into `folder` and return the card's `widget:` with the model's real output on it."""
    import torch

    from .data import decode_audio
    from .synthetic import EVENT_TYPES, make_synthetic_split

    names = {event.name: event.noun_phrases[0] for event in EVENT_TYPES}
    rate = processor.feature_extractor.sampling_rate  # the file is at the model's rate: the pipeline needs no resampling
    clip = make_synthetic_split("test", 1, seed=0, sampling_rate=rate, keep_in_memory=True)[0]
    Path(folder, WIDGET_FILE).write_bytes(clip["audio"]["bytes"])
    present = list(dict.fromkeys(event["label"] for event in clip["events"]))
    # the clip's events and absent ones, WIDGET_LABELS in all
    events = present + [name for name in names if name not in present][: max(0, WIDGET_LABELS - len(present))]
    labels = [names[event] for event in events]
    inputs = processor(audio=[decode_audio(clip["audio"], rate)], text=[WIDGET_TEMPLATE.format(label) for label in labels],
                       sampling_rate=rate, return_tensors="pt")
    was_training = model.training
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model.eval()(**{k: v.to(device) for k, v in inputs.items()}).logits_per_audio[0]
    model.train(was_training)
    scores = logits.float().softmax(dim=0).tolist()  # what the pipeline returns: a softmax over the candidate labels
    output = sorted(({"label": label, "score": round(score, METRIC_DECIMALS)} for label, score in zip(labels, scores)),
                    key=lambda item: -item["score"])
    return [{"src": f"https://huggingface.co/{repo_id}/resolve/main/{WIDGET_FILE}", "candidate_labels": ", ".join(labels),
             "example_title": "Synthetic scene: " + " and ".join(names[event] for event in present), "output": output}]


def _card_data(config, dataset, license, model_name, eval_results, widget=None) -> ModelCardData:
    base_models = [m for m in (_hub_id(getattr(config, "audio_backbone_id", None)), _hub_id(getattr(config, "text_backbone_id", None))) if m]
    return ModelCardData(
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        tags=["audio", RETRIEVAL_TASK, ZERO_SHOT_TASK, "custom_code", "atr"],
        widget=widget,
        license=license,
        base_model=base_models or None,
        datasets=[dataset] if _is_hub_dataset(dataset) else None,
        model_name=model_name,
        eval_results=eval_results or None,
    )


def build_model_card(
    config: AtrConfig,
    training_args: Mapping | None = None,
    results: Results | None = None,
    *,
    dataset: str | None = None,
    split: str | None = None,
    data_args: Mapping | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    license: str = "apache-2.0",
    widget: list | None = None,
) -> ModelCard:
    """The model card of a model with `config` (an AtrConfig), its training arguments and evaluation results."""
    repo_id = repo_id or (training_args or {}).get("hub_model_id") or PLACEHOLDER_REPO
    model_name = model_name or default_model_name(repo_id, dataset)
    eval_results = eval_results_from(results, dataset, split)
    return ModelCard.from_template(
        _card_data(config, dataset, license, model_name, eval_results, widget),
        template_str=TEMPLATE,
        model_name=model_name,
        projection_dim=config.projection_dim,
        usage=USAGE.format(repo_id=repo_id),
        repo_id=repo_id,
        space_id=f"{repo_id}-search",
        architecture=_architecture(config),
        loss=_loss(config),
        training=_training(training_args, data_args, dataset),
        eval_tables=f"{TABLE_START}\n{eval_tables(eval_results)}\n{TABLE_END}",
        limitations=_limitations(dataset),
        citation=CITATION,
    )


def default_model_name(repo_id: str | None, dataset: str | None) -> str:
    """The model's name: the repo's (`--hub_model_id`), else `atr-<dataset>`; never the output folder's."""
    if repo_id and repo_id != PLACEHOLDER_REPO:
        return repo_id.split("/")[-1]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(str(dataset or "model").rstrip("/")).name.lower()).strip("-")
    return f"atr-{slug or 'model'}"


def write_model_card(output_dir: str | os.PathLike, config: AtrConfig, training_args: Mapping | None = None, results: Results | None = None,
                     *, model: AtrModel | None = None, processor: ProcessorMixin | None = None, **kwargs) -> Path:
    """Write `build_model_card(...)` to `output_dir/README.md` (with a widget example when `model`/`processor` are given)."""
    path = Path(output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    if model is not None and processor is not None:
        repo_id = kwargs.get("repo_id") or (training_args or {}).get("hub_model_id") or PLACEHOLDER_REPO
        kwargs["widget"] = widget_example(model, processor, output_dir, repo_id)
    build_model_card(config, training_args, results, **kwargs).save(path)
    return path


def update_model_card(readme: str | os.PathLike, results: Results, *, dataset: str | None = None, split: str | None = None) -> ModelCard:
    """Merge new results into an existing README.md's model-index and results table, keeping the rest of the card."""
    path = Path(readme)
    if path.is_dir():
        path = path / "README.md"
    if not path.is_file():
        raise FileNotFoundError(f"model card {path} does not exist: write one with write_model_card() first")
    card = ModelCard.load(path)
    new = eval_results_from(results, dataset, split)
    identity = lambda r: (*r.unique_identifier, r.metric_type, r.metric_config)  # noqa: E731
    replaced = {identity(r) for r in new}
    merged = [r for r in card.data.eval_results or [] if identity(r) not in replaced] + new
    card.data.eval_results = merged or None
    card.data.model_name = card.data.model_name or default_model_name(None, None)
    table = f"{TABLE_START}\n{eval_tables(merged)}\n{TABLE_END}"
    if TABLE_START in card.text and TABLE_END in card.text:
        before, rest = card.text.split(TABLE_START, 1)
        card.text = before + table + rest.split(TABLE_END, 1)[1]
    else:
        card.text = card.text.rstrip("\n") + f"\n\n## Evaluation\n\n{table}\n"
    card.save(path)
    return card


__all__ = ["build_model_card", "default_model_name", "eval_results_from", "eval_tables", "update_model_card", "widget_example", "write_model_card"]
