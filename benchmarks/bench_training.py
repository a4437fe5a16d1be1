"""Training throughput and memory of the demo config: uncached vs the frozen-encoder output cache (steps/s, samples/s, peak RSS).

python benchmarks/bench_training.py [--steps 30] [--train_clips 320] [--modes demo,demo_text_cache,frozen,frozen_cached]
python benchmarks/bench_training.py --modes paper,paper_cached --steps 8 --warmup 2 --train_clips 64

Each mode runs `train.py --config configs/demo.yaml` for --steps steps in its own process (so peak RSS is per mode):
  demo             the demo as configured (audio encoder trained from scratch, text encoder frozen), uncached
  demo_text_cache  the same with --cache_encoder_outputs: only the frozen text encoder's outputs are cached
  frozen           the demo with freeze_audio_encoder: true (the paper's setting: both encoders frozen), uncached
  frozen_cached    the same with --cache_encoder_outputs (text + audio cached, --cache_num_views noisy views)
  paper            the paper's setting at full size with random weights (nothing is downloaded): frozen HTSAT
                   (`ClapAudioConfig()`, 10 s windows at 48 kHz) + a frozen 12-layer 768-wide BERT (RoBERTa-base's size,
                   MiniLM's tokenizer), configs/clotho.yaml's head; uncached
  paper_cached     the same with --cache_encoder_outputs
Steps/s are timed from the end of step --warmup to the last step (DataLoader included); the cache build is timed
separately (`cache_build_s`, the whole cached_training_data call). `cpu_s_per_step` is the process CPU time (all
threads) per step: on a machine shared with other jobs it is the steadier measure of the work a step costs.
Prints one JSON line per mode. `--breakdown` instead prints the CPU seconds of each part of one frozen-demo step.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
MODES = ("demo", "demo_text_cache", "frozen", "frozen_cached", "paper", "paper_cached")


def save_paper_size_model(directory):
    """Save the paper's architecture at full size with random weights (frozen encoders, clotho.yaml's head) + processor."""
    sys.path.insert(0, str(ROOT))
    from transformers import AutoTokenizer, BertConfig, ClapAudioConfig

    from atr import AtrConfig, AtrFeatureExtractor, AtrModel, AtrProcessor, resolve_backbone
    from atr.cli.flags import MINILM_ID

    head = yaml.safe_load((ROOT / "configs" / "clotho.yaml").read_text())["model_config"]
    text_path = resolve_backbone(MINILM_ID)
    tokenizer = AutoTokenizer.from_pretrained(text_path)
    text_config = BertConfig(vocab_size=tokenizer.vocab_size)  # bert-base size: 12 layers, 768 wide, like RoBERTa-base
    model = AtrModel(AtrConfig(audio_config=ClapAudioConfig(), text_config=text_config, **head))
    model.save_pretrained(directory)
    AtrProcessor(AtrFeatureExtractor.from_audio_config(model.config.audio_config), tokenizer).save_pretrained(directory)


def run_mode(mode, args, workdir):
    """Train one mode in this process and return its measurements."""
    sys.path.insert(0, str(ROOT))
    import torch
    from transformers import TrainerCallback

    from atr.cli import train

    torch.set_num_threads(args.threads)
    step_times, cpu_times = [], []

    class Clock(TrainerCallback):
        def on_step_end(self, *unused, **kwargs):
            step_times.append(time.perf_counter())
            cpu_times.append(time.process_time())  # all threads of this process: robust to other jobs on the machine

    build = {"s": 0.0}
    original = train.cached_training_data

    def timed_cache(*a, **kw):
        start = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            build["s"] = time.perf_counter() - start

    train.cached_training_data = timed_cache
    original_trainer = train.AtrTrainer

    class ClockedTrainer(original_trainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(Clock())

    train.AtrTrainer = ClockedTrainer
    model_config = yaml.safe_load(DEMO.read_text())["model_config"]
    if mode.startswith("frozen"):
        model_config = {**model_config, "freeze_audio_encoder": True}
    extra = []
    if mode.startswith("paper"):
        model_config = {}  # the saved model's own head and freezing
        extra = ["--model_name_or_path", str(workdir / "paper_model")]
    argv = extra + [
        "--config", str(DEMO), "--output_dir", str(workdir / mode), "--max_steps", str(args.steps), "--save_strategy", "no",
        "--synthetic_sizes", f"{args.train_clips},0,0", "--eval_split", "", "--test_split", "", "--logging_steps", str(args.steps),
        "--model_config", json.dumps(model_config), "--disable_tqdm", "true", "--encoder_cache_dir", str(workdir / "cache"),
        "--cache_num_views", str(args.views), "--overwrite_output_dir", "--torch_threads", str(args.threads),
        "--dataloader_num_workers", str(args.workers),
        # the demo config caches the text encoder: each mode says for itself
        "--cache_encoder_outputs", str(mode.endswith("cache") or mode.endswith("cached")).lower(),
    ]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    trainer, _ = train.main(argv)
    total = time.perf_counter() - start
    timed = step_times[args.warmup :]
    steps_per_s = (len(timed) - 1) / (timed[-1] - timed[0])
    cpu = cpu_times[args.warmup :]
    cpu_per_step = (cpu[-1] - cpu[0]) / (len(cpu) - 1)
    batch = trainer.args.per_device_train_batch_size
    return {
        "mode": mode, "steps": args.steps, "batch_size": batch, "steps_per_s": round(steps_per_s, 3),
        "samples_per_s": round(steps_per_s * batch, 1),
        "cpu_s_per_step": round(cpu_per_step, 3), "cache_build_s": round(build["s"], 1), "total_s": round(total, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "train_clips": args.train_clips,
        "cache_num_views": args.views, "threads": args.threads, "loadavg_1min_start": round(load, 2),
        "loadavg_1min_end": round(os.getloadavg()[0], 2),
    }


def breakdown(args, workdir):
    """CPU seconds of the parts of one frozen-demo step (best of 3): collate, encoders, heads forward + backward."""
    sys.path.insert(0, str(ROOT))
    import torch

    from atr.augmentation import make_noise_augmentation
    from atr.cache import CachedCollator, build_audio_cache, build_text_cache
    from atr.cli import train
    from atr.collator import AtrCollator

    torch.set_num_threads(args.threads)
    model_config = {**yaml.safe_load(DEMO.read_text())["model_config"], "freeze_audio_encoder": True}
    model_args, data_args, _, _ = train.parse_args([
        "--config", str(DEMO), "--model_config", json.dumps(model_config), "--synthetic_sizes", "64,0,0",
        "--eval_split", "", "--test_split", "", "--output_dir", str(workdir / "breakdown"),
    ])
    model, processor = train.build_model_and_processor(model_args)
    dataset = train.load_splits(data_args)["train"]

    def cpu(fn, repeats=3):
        fn()
        times = []
        for _ in range(repeats):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        return round(min(times), 3)

    def step(batch):
        model.zero_grad()
        model(**batch).loss.backward()

    rows = list(dataset.add_column("clip_index", list(range(len(dataset)))).select(range(32)))
    collator = AtrCollator(processor, training=True, augment=make_noise_augmentation(p=0.5))
    batch = collator(rows)
    real = batch["input_features"][batch["chunk_mask"].bool()]
    result = {"collate_uncached": cpu(lambda: collator(rows)), "step_uncached_fwd_bwd": cpu(lambda: step(batch))}
    with torch.no_grad():
        result["text_encoder_fwd"] = cpu(lambda: model.get_text_encoder_states(batch["input_ids"], batch["attention_mask"]))
        result["audio_encoder_fwd"] = cpu(lambda: model.get_audio_encoder_states(real))
    text_cache = build_text_cache(model, processor, dataset, workdir / "cache")
    audio_cache = build_audio_cache(model, processor, dataset, workdir / "cache", num_views=1, augment=make_noise_augmentation(p=1.0))
    model.train()
    cached_rows = list(dataset.add_column("clip_index", list(range(len(dataset)))).select_columns(["clip_index", "captions"]).select(range(32)))
    cached = CachedCollator(processor, text_cache=text_cache, audio_cache=audio_cache, noise_probability=0.0)
    cached_batch = cached(cached_rows)
    result.update(collate_cached=cpu(lambda: cached(cached_rows)), step_cached_fwd_bwd=cpu(lambda: step(cached_batch)))
    model.config.cross_modal_attention = False  # the training-only attention is skipped, the rest of the step unchanged
    result["step_cached_fwd_bwd_without_cross_modal_attention"] = cpu(lambda: step(cached_batch))
    shape = tuple(cached_batch["audio_hidden_states"].shape)
    return {"breakdown_cpu_s": result, "chunks": int(real.shape[0]), "cached_audio_shape": shape, "loadavg_1min": round(os.getloadavg()[0], 2)}


def main():
    """Run every requested mode in a child process and print their JSON lines (and write them to --out)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3, help="steps excluded from the timing")
    parser.add_argument("--train_clips", type=int, default=320, help="synthetic training clips (the demo uses 2000)")
    parser.add_argument("--views", type=int, default=4, help="--cache_num_views")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="--dataloader_num_workers (the demo config uses 1)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    parser.add_argument("--breakdown", action="store_true", help="instead: CPU seconds of the parts of one frozen step")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_mode(args.child, args, Path(args.workdir))), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="atr-bench-training-") as workdir:
        if args.breakdown:
            print(json.dumps(breakdown(args, Path(workdir))), flush=True)
            return
        modes = args.modes.split(",")
        for mode in modes:
            if mode not in MODES:
                raise ValueError(f"mode {mode!r} is unknown: pick from {MODES}")
        if any(mode.startswith("paper") for mode in modes):
            save_paper_size_model(Path(workdir) / "paper_model")
        for mode in modes:
            command = [sys.executable, __file__, "--child", mode, "--workdir", workdir, "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--train_clips", str(args.train_clips), "--views", str(args.views),
                       "--threads", str(args.threads), "--workers", str(args.workers)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            line = next(line for line in output.splitlines() if line.startswith("RESULT ")).removeprefix("RESULT ")
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as handle:
                    handle.write(line + "\n")


if __name__ == "__main__":
    main()
