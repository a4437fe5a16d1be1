"""Final test metrics of cached vs uncached training on frozen pretrained encoders, over several seeds.

python benchmarks/bench_cache_metrics.py --encoder_from outputs/demo [--seeds 0 1] [--max_steps 500]

Nothing pretrained can be downloaded here, so the frozen audio encoder is the one a finished `python train.py` run
learned (`--encoder_from`, saved as a Whisper checkpoint); the text encoder is the demo's frozen MiniLM. Each run is
`train.py` on the demo config with `--audio_backbone <that checkpoint>` and both encoders frozen: fresh heads, trained
with and without `--cache_encoder_outputs`. Prints one JSON line per run (wall time and test metrics) and a table of
test mAP@10 and R@1 per mode (mean and standard deviation over seeds).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _study import export_audio_encoder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("test_t2a_mAP10", "test_t2a_R1", "test_a2t_mAP10", "test_a2t_R1")


def main():
    """Export the encoder, train every (mode, seed) in its own process and print the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder_from", required=True, help="a trained atr model directory with a Whisper-style audio encoder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--max_steps", type=int, default=500)
    parser.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="atr-cache-metrics-"))
    backbone = workdir / "audio_backbone"
    export_audio_encoder(args.encoder_from, backbone)
    head = {**yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())["model_config"], "freeze_audio_encoder": True}
    results = {"uncached": [], "cached": []}
    for seed in args.seeds:
        for mode in results:
            output = workdir / f"{mode}_seed{seed}"
            command = [
                sys.executable, str(ROOT / "train.py"), "--audio_backbone", str(backbone), "--model_config", json.dumps(head),
                "--max_steps", str(args.max_steps), "--seed", str(seed), "--save_strategy", "no", "--output_dir", str(output),
                "--encoder_cache_dir", str(workdir / "encoder_cache"), "--disable_tqdm", "true", "--overwrite_output_dir",
                # explicit both ways: the demo config caches the frozen text encoder's outputs by default
                "--cache_encoder_outputs", "true" if mode == "cached" else "false",
            ]
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
            metrics = json.loads((output / "test_results.json").read_text())
            row = {"mode": mode, "seed": seed, "wall_s": round(time.perf_counter() - start, 1), **{m: round(metrics[m], 4) for m in METRICS}}
            results[mode].append(row)
            print(json.dumps(row), flush=True)
    print("\n| mode | " + " | ".join(METRICS) + " | wall s (mean) |")
    print("|---|" + "---:|" * (len(METRICS) + 1))
    for mode, rows in results.items():
        cells = [f"{statistics.mean(r[m] for r in rows):.3f} ± {statistics.pstdev(r[m] for r in rows):.3f}" for m in METRICS]
        print(f"| {mode} | " + " | ".join(cells) + f" | {statistics.mean(r['wall_s'] for r in rows):.0f} |")


if __name__ == "__main__":
    main()
