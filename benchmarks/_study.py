"""Shared parts of the paper-claim studies: the frozen shared encoders, the encoder-output cache, head training, tables and plots.

The paper's setting freezes pretrained encoders and trains only the heads. Offline we have one pretrained text encoder
(all-MiniLM-L6-v2) and no pretrained audio encoder, so every study starts from one *study encoder*: the demo's small
Whisper-style audio encoder trained once by `train.py` (contrastive loss only, no noise, no cross-modal attention, so
that no studied ingredient is baked into it) and saved under `outputs/study_encoder`. Both encoders are then frozen,
their outputs are computed once per clip / caption / noise condition and cached on disk, and each studied variant
trains fresh heads (transformer projections, cross-modal attention, pooling) on the cached token sequences, which
makes a head-training run take seconds to minutes on 2 CPU cores.
"""

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import get_cosine_schedule_with_warmup

from atr import AtrConfig, AtrModel, AtrProcessor
from atr.cache import module_fingerprint
from atr.data import decode_audio, load_audio_text_dataset
from atr.metrics import audio_text_retrieval_metrics, save_results

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("atr.study")
# The head is trained by the paper's recipe on frozen encoders; these are the variants the encoder is trained without.
ENCODER_HEAD_OVERRIDES = {"lambda_cosine": 0.0, "lambda_l1": 0.0, "cross_modal_attention": False}
# The heads start from the paper's method whatever the encoder was trained with; frozen encoders cannot collapse, so
# the alignment terms have full weight from step 0 (no alignment warm-up).
HEAD_DEFAULTS = {
    "lambda_cosine": 1.0, "lambda_l1": 1.0, "lambda_contrastive": 1.0, "cross_modal_attention": True, "alignment_warmup_steps": 0,
    "freeze_audio_encoder": True, "freeze_text_encoder": True,
}
METRIC_KEYS = ("t2a_mAP10", "a2t_mAP10", "t2a_R1", "a2t_R1")


def study_parser(description, name, **defaults):
    """The command-line options every study shares; `defaults` overrides their default values."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", default="synthetic", help="'synthetic', a Hub dataset id, an audiofolder dir or a CSV/JSONL manifest")
    parser.add_argument("--dataset_config", default=None, help="Hub dataset config name")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--test_split", default="test")
    parser.add_argument("--group_by", default=None, help="merge rows of the same clip by this column (AudioCaps)")
    parser.add_argument("--synthetic_sizes", default="2000,200,200", help="train,validation,test clip counts of the synthetic set")
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--max_test_samples", type=int, default=None)
    parser.add_argument("--encoder", default=str(ROOT / "outputs" / "study_encoder"), help="trained atr model whose encoders are frozen and reused; trained by train.py when missing")
    parser.add_argument("--encoder_config", default=str(ROOT / "configs" / "demo.yaml"), help="train.py config for training the study encoder")
    parser.add_argument("--encoder_steps", type=int, default=60, help="train.py --max_steps for the study encoder; 0 = keep its audio encoder untrained (random)")
    parser.add_argument("--text_backbone", default=None, help="text encoder for the study encoder (default: the config's)")
    parser.add_argument("--samples_seen", type=int, default=2400, help="training pairs each head sees (steps = samples_seen / batch size)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; the table reports mean and std over them")
    parser.add_argument("--output_dir", default=str(ROOT / "outputs" / "studies" / name))
    parser.add_argument("--cache_dir", default=str(ROOT / "outputs" / "studies" / "cache"), help="where encoder outputs are cached")
    parser.add_argument("--no_cache", action="store_true", help="recompute encoder outputs instead of reading the cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.set_defaults(**defaults)
    return parser


def parse_seeds(text):
    """'0,1,2' -> [0, 1, 2]."""
    return [int(s) for s in str(text).split(",") if s != ""]


# ---------------------------------------------------------------- the study encoder


def ensure_encoder(args):
    """The frozen study encoder (model, processor): loaded from `args.encoder`, trained there by train.py first if missing."""
    encoder = Path(args.encoder)
    if not (encoder / "config.json").exists():
        if str(ROOT) not in sys.path:
            sys.path.append(str(ROOT))  # appended, not prepended: the repo's evaluate.py must not shadow the library
        import train

        config = yaml.safe_load(Path(args.encoder_config).read_text()) or {}
        head = {**(config.get("model_config") or {}), **ENCODER_HEAD_OVERRIDES}
        argv = ["--config", args.encoder_config, "--output_dir", str(encoder), "--max_steps", str(args.encoder_steps),
                "--noise_probability", "0", "--model_config", json.dumps(head), "--save_strategy", "no",
                "--evaluate_test", "false", "--overwrite_output_dir", "true", "--disable_tqdm", "true"]
        if args.text_backbone:
            argv += ["--text_backbone", args.text_backbone]
        if args.encoder_steps > 0:
            logger.info("training the study encoder: python train.py %s", " ".join(argv))
            train.main(argv)
        else:  # a randomly initialised (untrained) audio encoder: the cheapest stand-in when no time is left to train one
            model_args = train.parse_args(argv)[0]
            model, processor = train.build_model_and_processor(model_args)
            model.save_pretrained(encoder)
            processor.save_pretrained(encoder)
    model = AtrModel.from_pretrained(encoder).eval()
    return model, AtrProcessor.from_pretrained(encoder)


def load_split(args, split, limit):
    """One split of the study's dataset (captions as lists, audio undecoded)."""
    sizes = dict(zip(("train", "validation", "test"), (int(n) for n in args.synthetic_sizes.split(","))))
    load_kwargs = {"n": sizes.get(split)} if args.dataset == "synthetic" else None
    dataset = load_audio_text_dataset(args.dataset, split, config_name=args.dataset_config, group_by=args.group_by, load_kwargs=load_kwargs)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset


# ---------------------------------------------------------------- encoder-output cache


def head_model(encoder_model, seed, **overrides):
    """A fresh AtrModel (heads initialised from `seed`) with the encoder's config plus `overrides`, fed cached encoder outputs.

    Its own encoders are frozen and never run: the cached states go in as `audio_hidden_states` / `text_hidden_states`.
    """
    config = AtrConfig.from_dict({**encoder_model.config.to_dict(), **HEAD_DEFAULTS, **overrides})
    torch.manual_seed(seed)
    return AtrModel(config)


def _cache_path(args, encoder_model, kind, key):
    # audio caches depend on the audio encoder and feature extractor only, text caches on the text encoder only
    encoder = encoder_model.audio_model if kind == "audio" else encoder_model.text_model
    if not hasattr(encoder, "_study_digest"):
        encoder._study_digest = module_fingerprint(encoder)
    digest = hashlib.sha256(json.dumps([encoder._study_digest, kind, key], sort_keys=True).encode()).hexdigest()[:20]
    return Path(args.cache_dir) / f"{kind}-{digest}.pt"


def cached(args, encoder_model, kind, key, compute):
    """`compute()` once per (encoder, kind, key), kept under `args.cache_dir`; `--no_cache` recomputes."""
    path = _cache_path(args, encoder_model, kind, key)
    if path.exists() and not args.no_cache:
        return torch.load(path)
    start = time.perf_counter()
    value = compute()
    logger.info("encoded %s %s in %.1f s", kind, key, time.perf_counter() - start)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(value, path)
    return value


@torch.no_grad()
def encode_audio(encoder_model, processor, waves, batch_size=16):
    """Frozen audio-encoder tokens of every chunk of every waveform: tokens (N, C_max, L, H) float16 and chunk_mask (N, C_max) bool."""
    feature_extractor = processor.feature_extractor
    clips, masks = [], []
    for start in range(0, len(waves), batch_size):
        features = feature_extractor(waves[start : start + batch_size], sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
        mask = features["chunk_mask"].bool()
        tokens, _ = encoder_model.audio_model(features["input_features"][mask])
        per_clip = torch.split(tokens.half(), mask.sum(1).tolist())
        clips.extend(per_clip)
        masks.extend(int(m.sum()) for m in mask)
    num_chunks = max(masks)
    out = torch.zeros(len(clips), num_chunks, *clips[0].shape[1:], dtype=torch.float16)
    chunk_mask = torch.zeros(len(clips), num_chunks, dtype=torch.bool)
    for index, clip in enumerate(clips):
        out[index, : len(clip)] = clip
        chunk_mask[index, : len(clip)] = True
    return {"tokens": out, "chunk_mask": chunk_mask}


@torch.no_grad()
def encode_text(encoder_model, processor, captions_per_clip, batch_size=64):
    """Frozen text-encoder hidden states of every caption: tokens (M, L, H) float16, mask (M, L), caption_to_audio (M,)."""
    captions = [c for clip in captions_per_clip for c in clip]
    caption_to_audio = torch.tensor([i for i, clip in enumerate(captions_per_clip) for _ in clip])
    tokenizer = processor.tokenizer
    length = max(len(ids) for ids in tokenizer(captions, truncation=True)["input_ids"])
    tokens, masks = [], []
    for start in range(0, len(captions), batch_size):
        batch = tokenizer(captions[start : start + batch_size], padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        hidden = encoder_model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        tokens.append(hidden.half())
        masks.append(batch["attention_mask"].bool())
    return {"tokens": torch.cat(tokens), "mask": torch.cat(masks), "caption_to_audio": caption_to_audio}


def dataset_waves(dataset, sampling_rate, transform=None):
    """Decoded mono waveforms of a dataset split, each passed through `transform(wave, index)` when given."""
    waves = [decode_audio(audio, sampling_rate) for audio in dataset["audio"]]
    return [transform(wave, i) for i, wave in enumerate(waves)] if transform else waves


def dataset_key(dataset):
    """A cache key for a dataset split: its fingerprint and length."""
    return [getattr(dataset, "_fingerprint", None), len(dataset)]


def audio_cache(args, encoder_model, processor, dataset, condition, transform=None):
    """Cached frozen-encoder audio tokens of a split under a named condition ("clean", "snr5", ...) made by `transform(wave, index)`."""
    rate = processor.feature_extractor.sampling_rate
    return cached(args, encoder_model, "audio", dataset_key(dataset) + [condition],
                  lambda: encode_audio(encoder_model, processor, dataset_waves(dataset, rate, transform)))


def text_cache(args, encoder_model, processor, dataset):
    """Cached frozen-encoder caption hidden states of a split."""
    return cached(args, encoder_model, "text", dataset_key(dataset), lambda: encode_text(encoder_model, processor, dataset["captions"]))


def study_data(args):
    """The study encoder plus the train and test splits with their clean audio and text caches."""
    encoder_model, processor = ensure_encoder(args)
    splits = {"train": load_split(args, args.train_split, args.max_train_samples), "test": load_split(args, args.test_split, args.max_test_samples)}
    caches = {}
    for name, dataset in splits.items():
        caches[name] = {"audio": audio_cache(args, encoder_model, processor, dataset, "clean"), "text": text_cache(args, encoder_model, processor, dataset)}
    return encoder_model, processor, splits, caches


# ---------------------------------------------------------------- head training and evaluation


def _text_rows(text, clip_indices, generator):
    """Pick one caption per clip (uniformly among its captions) and trim padding: tokens and mask for the batch."""
    starts = torch.searchsorted(text["caption_to_audio"], clip_indices)
    ends = torch.searchsorted(text["caption_to_audio"], clip_indices, right=True)
    picks = starts + (torch.rand(len(clip_indices), generator=generator) * (ends - starts)).long()
    mask = text["mask"][picks]
    length = int(mask.sum(1).max())
    return text["tokens"][picks, :length], mask[:, :length]


def _audio_rows(variants, clip_indices, choice=None):
    """Cached tokens and chunk mask of the clips (clip i from cache `variants[choice[i]]`), trimmed to the batch's most chunks."""
    if isinstance(variants, dict):
        variants = [variants]
    if choice is None or not bool(choice.any()):
        mask = variants[0]["chunk_mask"][clip_indices]
        num_chunks = int(mask.sum(1).max())
        return variants[0]["tokens"][clip_indices, :num_chunks], mask[:, :num_chunks]
    # noisy copies can have more chunks than the clean clip (noise fills silences that chunking would drop)
    rows = [(variants[c]["tokens"][i], variants[c]["chunk_mask"][i]) for i, c in zip(clip_indices.tolist(), choice.tolist())]
    num_chunks = max(int(m.sum()) for _, m in rows)
    tokens = torch.zeros(len(rows), num_chunks, *rows[0][0].shape[1:], dtype=rows[0][0].dtype)
    mask = torch.zeros(len(rows), num_chunks, dtype=torch.bool)
    for row, (clip_tokens, clip_mask) in enumerate(rows):
        count = int(clip_mask.sum())
        tokens[row, :count], mask[row, :count] = clip_tokens[:count], True
    return tokens, mask


def train_heads(model, audio_variants, text, *, samples_seen, batch_size, learning_rate, seed, noise_probability=0.0, log_every=0):
    """Train the heads on cached encoder outputs: AdamW, 5% warm-up + cosine, grad-norm 1; returns the loss history.

    `audio_variants[0]` is the clean audio cache; with `noise_probability` > 0 each sampled clip is swapped, with that
    chance, for one of its noisy copies `audio_variants[1:]` (the cache's form of on-the-fly noise augmentation).
    """
    generator = torch.Generator().manual_seed(seed)
    num_clips = audio_variants[0]["tokens"].shape[0]
    if num_clips < batch_size:
        raise ValueError(f"the training split has {num_clips} clips, fewer than batch size {batch_size}: use more clips or a smaller batch")
    steps = max(1, samples_seen // batch_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate, weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(0.05 * steps), steps)
    warmup = model.config.alignment_warmup_steps
    model.train()
    order, cursor, history = torch.randperm(num_clips, generator=generator), 0, []
    for step in range(steps):
        if cursor + batch_size > num_clips:  # a new epoch; the last incomplete batch is dropped, as in train.py
            order, cursor = torch.randperm(num_clips, generator=generator), 0
        clips = order[cursor : cursor + batch_size]
        cursor += batch_size
        choice = torch.zeros(batch_size, dtype=torch.long)
        if noise_probability and len(audio_variants) > 1:
            noisy = torch.rand(batch_size, generator=generator) < noise_probability
            copies = torch.randint(1, len(audio_variants), (batch_size,), generator=generator)
            choice = torch.where(noisy, copies, choice)
        tokens, chunk_mask = _audio_rows(audio_variants, clips, choice)
        text_tokens, text_mask = _text_rows(text, clips, generator)
        # the same alignment warm-up AtrTrainer applies (config.alignment_warmup_steps; 0 = full weights from the start)
        model.alignment_scale = min(1.0, step / warmup) if warmup else 1.0
        output = model(text_hidden_states=text_tokens.float(), attention_mask=text_mask, audio_hidden_states=tokens.float(),
                       chunk_mask=chunk_mask, return_loss=True)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(float(output.loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            logger.info("step %d/%d loss %.4f", step + 1, steps, float(np.mean(history[-log_every:])))
    model.eval()
    return history


@torch.no_grad()
def embed_cached(model, audio, text, batch_size=64, pooling="attention"):
    """Inference embeddings of cached clips and captions; `pooling="mean"` averages chunk embeddings instead of attention pooling."""
    model.eval()
    audio_embeds, text_embeds = [], []
    for start in range(0, audio["tokens"].shape[0], batch_size):
        clips = torch.arange(start, min(start + batch_size, audio["tokens"].shape[0]))
        tokens, mask = _audio_rows(audio, clips)
        output = model.get_audio_features(audio_hidden_states=tokens.float(), chunk_mask=mask)
        if pooling == "mean":
            weights = mask.float() / mask.sum(1, keepdim=True)
            embeds = torch.nn.functional.normalize((output.last_hidden_state * weights.unsqueeze(-1)).sum(1), dim=-1)
        else:
            embeds = output.pooler_output
        audio_embeds.append(embeds)
    for start in range(0, text["tokens"].shape[0], batch_size):
        mask = text["mask"][start : start + batch_size]
        length = int(mask.sum(1).max())
        states = text["tokens"][start : start + batch_size, :length].float()
        text_embeds.append(model.get_text_features(text_hidden_states=states, attention_mask=mask[:, :length]).pooler_output)
    return torch.cat(audio_embeds), torch.cat(text_embeds)


def evaluate_cached(model, audio, text, pooling="attention"):
    """Retrieval metrics (both directions) of the model on cached test clips and captions: the scalar ones only."""
    audio_embeds, text_embeds = embed_cached(model, audio, text, pooling=pooling)
    results = audio_text_retrieval_metrics(audio_embeds, text_embeds, text["caption_to_audio"].tolist())
    return {k: float(v) for k, v in results.items() if np.isscalar(v)}


# ---------------------------------------------------------------- tables and plots


def summarise(runs, group_keys, metric_keys=METRIC_KEYS):
    """Mean and standard deviation (over seeds, ddof=0) of each metric per group of runs."""
    groups = {}
    for run in runs:
        groups.setdefault(tuple(run[k] for k in group_keys), []).append(run)
    rows = []
    for key, members in groups.items():
        row = dict(zip(group_keys, key), seeds=len(members))
        for metric in metric_keys:
            values = np.array([m["metrics"][metric] for m in members])
            row[metric] = float(values.mean())
            row[f"{metric}_std"] = float(values.std())
        rows.append(row)
    return rows


def markdown_table(rows, group_keys, metric_keys=METRIC_KEYS):
    """A markdown table of `summarise` rows: 'mean ± std' per metric."""
    header = [*group_keys, *metric_keys, "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row[k]) for k in group_keys]
        cells += [f"{row[m]:.3f} ± {row[m + '_std']:.3f}" for m in metric_keys]
        lines.append("| " + " | ".join(cells + [str(row["seeds"])]) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(args, name, runs, rows, table, figure, started, argv=None):
    """Write results.json (runs, summary, settings, provenance), results.md (the table) and the plot PNG to output_dir."""
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    elapsed = time.perf_counter() - started
    load = tuple(round(x, 2) for x in os.getloadavg()) if hasattr(os, "getloadavg") else None
    save_results(output_dir / "results.json", study=name, settings=vars(args), runs=runs, summary=rows, seconds=elapsed, load_average=load)
    command = "python benchmarks/" + name + ".py " + " ".join(sys.argv[1:] if argv is None else argv)
    (output_dir / "results.md").write_text(
        f"{table}\n`{command.strip()}`: {elapsed / 60:.1f} min on {os.cpu_count()} CPU cores, load average {load}\n"
    )
    figure.savefig(output_dir / f"{name}.png", dpi=120, bbox_inches="tight")
    print(table)
    print(f"wrote {output_dir}/results.json, results.md and {name}.png in {elapsed / 60:.1f} min")


def setup(args):
    """Logging and the CPU thread count for a study run."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    import matplotlib

    matplotlib.use("Agg")
