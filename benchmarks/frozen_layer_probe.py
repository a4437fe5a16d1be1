"""Supervised linear probe of each layer of a frozen pretrained audio encoder on the spoken words: how far a head on its states can go.

    python benchmarks/frozen_layer_probe.py DATA_DIR [--audio_backbone openai/whisper-tiny.en] [--max_source_positions 125]

A reference, not a figure of atr: per encoder layer (hidden state 0 is the input embedding, the last is after the
final layer norm), the clip's token states are pooled with atr's masked mean and masked max over the real frames,
side by side (the heads add the two: a linear probe on both can do at least as well), then a logistic regression over the words is fit on the training split, each clip clean and once with white noise at
a uniform 5-15 dB, and scored on the test split clean and at exactly `--snr` dB (`atr.evaluation.noisy_clip`, the
same noise as `zero_shot_words.py`). It sees the labels, which atr's zero-shot heads never do, so it tells which
layer carries the words and roughly how much any head on the frozen, pooled states can get out of them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import atr  # noqa: F401  (registers the atr classes)
from atr.data import decode_audio, load_audio_text_dataset
from atr.evaluation import noisy_clip
from atr.layers_atr import masked_max, masked_mean
from atr.modeling_atr import AtrModel

TEXT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"  # only to build the processor; the probe never uses text


def pooled_layer_states(model: AtrModel, processor, waves: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """(clips, layers + 1, 2 * width): every hidden state's masked mean and masked max side by side, one chunk per clip."""
    extractor, adapter = processor.feature_extractor, model.audio_model
    pooled = []
    for start in range(0, len(waves), batch_size):
        batch = extractor(waves[start : start + batch_size], sampling_rate=extractor.sampling_rate, return_tensors="pt")
        if batch["input_features"].shape[1] != 1:
            raise ValueError(f"a clip needs {batch['input_features'].shape[1]} windows: the probe takes clips of one window, raise --max_source_positions")
        with torch.inference_mode():
            states = adapter.encoder(input_features=batch["input_features"][:, 0], output_hidden_states=True).hidden_states
        mask = adapter.token_mask(batch["audio_attention_mask"][:, 0])
        pooled.append(torch.stack([torch.cat([masked_mean(h, mask), masked_max(h, mask)], -1) for h in states], 1))
    return torch.cat(pooled).numpy()


def probe_accuracy(train_x: np.ndarray, train_y: list[str], tests: dict[str, np.ndarray], test_y: list[str]) -> dict[str, float]:
    """Fit a standardised, L2-regularised logistic regression on one feature set; accuracy on each test condition."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(train_x, train_y)
    return {name: float((classifier.predict(x) == np.asarray(test_y)).mean()) for name, x in tests.items()}


def main(argv=None):
    """CLI: print the probe's accuracy per layer and write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", help="a folder written by benchmarks/spoken_words.py")
    parser.add_argument("--audio_backbone", default="openai/whisper-tiny.en")
    parser.add_argument("--max_source_positions", type=int, default=125, help="encoder positions: 125 is a 2.5 s Whisper window")
    parser.add_argument("--snr", type=float, default=5.0, help="SNR in dB of the noisy test condition")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test noise (zero_shot_words.py's default)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    if Path(args.output).exists():
        sys.exit(f"error: {args.output} exists: remove it or choose another --output")
    torch.set_num_threads(args.threads)
    started = time.time()
    model, processor = AtrModel.from_pretrained_backbones(
        audio=args.audio_backbone, text=TEXT_BACKBONE, audio_config_overrides={"max_source_positions": args.max_source_positions}, return_processor=True
    )
    model.eval()
    rate = processor.feature_extractor.sampling_rate
    splits = {split: load_audio_text_dataset(args.data_dir, split, caption_columns="word") for split in ("train", "test")}
    waves = {split: [decode_audio(audio, rate) for audio in dataset["audio"]] for split, dataset in splits.items()}
    rng = np.random.default_rng(args.seed + 1)
    noisy_train = [noisy_clip(wave, "white", float(rng.uniform(5, 15)), args.seed + 1, i) for i, wave in enumerate(waves["train"])]
    train_x = np.concatenate([pooled_layer_states(model, processor, waves["train"]), pooled_layer_states(model, processor, noisy_train)])
    train_y = list(splits["train"]["word"]) * 2
    tests = {
        "clean": pooled_layer_states(model, processor, waves["test"]),
        f"white {args.snr:g} dB": pooled_layer_states(model, processor, [noisy_clip(w, "white", args.snr, args.seed, i) for i, w in enumerate(waves["test"])]),
    }
    layers = {}
    for layer in range(train_x.shape[1]):
        layers[str(layer)] = probe_accuracy(train_x[:, layer], train_y, {name: x[:, layer] for name, x in tests.items()}, list(splits["test"]["word"]))
        print(f"layer {layer}: " + ", ".join(f"{name} {value:.3f}" for name, value in layers[str(layer)].items()), flush=True)
    flat = {name: x.reshape(len(x), -1) for name, x in tests.items()}
    layers["all"] = probe_accuracy(train_x.reshape(len(train_x), -1), train_y, flat, list(splits["test"]["word"]))
    print("all layers: " + ", ".join(f"{name} {value:.3f}" for name, value in layers["all"].items()))
    result = {"audio_backbone": args.audio_backbone, "max_source_positions": args.max_source_positions, "dataset": args.data_dir,
              "train_clips": len(waves["train"]), "test_clips": len(waves["test"]), "accuracy_by_layer": layers,
              "seconds": round(time.time() - started, 1)}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
