"""Zero-shot word accuracy of a trained atr model on the spoken-words test split (benchmarks/spoken_words.py), clean and noisy.

    python benchmarks/zero_shot_words.py MODEL_DIR DATA_DIR [--snr 5 --prompt_template "someone says {label}"]

The model is loaded as a user loads it, `AutoModel.from_pretrained(MODEL_DIR)` and `AutoProcessor.from_pretrained`
(after `import atr`, which registers the classes: no remote code). Each test clip ranks one prompt per word of the
split; accuracy is the share whose top prompt is its own word. The noisy condition adds white noise at exactly
`--snr` dB (atr.evaluation.noisy_clip: the same noise per clip as `evaluate.py`). The run itself is
`atr.evaluation.evaluate_zero_shot`, i.e. the same numbers as `python evaluate.py --task zero-shot --label_column word`;
this script adds the per-accent breakdown and one small JSON file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoProcessor

import atr  # noqa: F401  (registers the atr classes with the Auto* factories)
from atr.data import load_audio_text_dataset
from atr.evaluation import evaluate_zero_shot

DEFAULT_PROMPT = "someone says {label}"


def accuracy_by(values: list[str], correct: list[float]) -> dict[str, float]:
    """Mean of `correct` per distinct value, sorted by value."""
    groups = defaultdict(list)
    for value, hit in zip(values, correct):
        groups[value].append(hit)
    return {value: float(np.mean(hits)) for value, hits in sorted(groups.items())}


def zero_shot_words(model_dir, data_dir, snr_db: float = 5.0, prompt_template: str = DEFAULT_PROMPT, split: str = "test",
                    seed: int = 0, batch_size: int = 32) -> dict:
    """Accuracy clean and at `snr_db` (white noise), overall and per accent, of the model in `model_dir` on `data_dir`."""
    model = AutoModel.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    dataset = load_audio_text_dataset(data_dir, split, caption_columns="word")
    for column in ("word", "voice"):
        if column not in dataset.column_names:
            raise ValueError(f"{data_dir}/{split}/metadata.csv has no {column!r} column: write the folder with benchmarks/spoken_words.py")
    accents = [voice.split("+")[0] for voice in dataset["voice"]]
    with torch.inference_mode():
        records, class_names = evaluate_zero_shot(
            model, processor, dataset, [None, snr_db], label_column="word", prompt_template=prompt_template,
            noise="white", seed=seed, batch_size=batch_size, progress=False,
        )
    conditions = {}
    for record in records:
        correct = record["per_query"]["zero_shot"]["R1"]
        conditions[record["condition"]] = {
            "accuracy": record["metrics"]["accuracy"], "by_accent": accuracy_by(accents, correct),
            "by_word": accuracy_by(dataset["word"], correct),
        }
    return {
        "model": str(model_dir), "dataset": str(data_dir), "split": split, "num_clips": len(dataset),
        "num_words": len(class_names), "chance": 1 / len(class_names), "prompt_template": prompt_template,
        "noise": "white", "seed": seed, "conditions": conditions,
    }


def main(argv=None):
    """CLI: print the accuracies and write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("data_dir")
    parser.add_argument("--snr", type=float, default=5.0, help="SNR in dB of the white-noise condition.")
    parser.add_argument("--prompt_template", default=DEFAULT_PROMPT, help="class prompt with {label}.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise.")
    parser.add_argument("--output", default=None, help="JSON file to write (default: MODEL_DIR/zero_shot_words.json).")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file.")
    args = parser.parse_args(argv)
    output = Path(args.output or Path(args.model_dir) / "zero_shot_words.json")
    if output.exists() and not args.overwrite:
        sys.exit(f"error: {output} exists: pass --overwrite to replace it, or choose another --output")
    results = zero_shot_words(args.model_dir, args.data_dir, args.snr, args.prompt_template, args.split, args.seed)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['num_clips']} clips, {results['num_words']} words (chance {results['chance']:.3f}), prompt {args.prompt_template!r}")
    for name, condition in results["conditions"].items():
        accents = ", ".join(f"{accent} {acc:.2f}" for accent, acc in condition["by_accent"].items())
        print(f"{name}: accuracy {condition['accuracy']:.3f} ({accents})")
    print(f"wrote {output}")
    return results


if __name__ == "__main__":
    main()
