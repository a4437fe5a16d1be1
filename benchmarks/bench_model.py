"""Audio embedding speed: AtrModel vs transformers ClapModel (full-size HTSAT, random weights, CPU), and cost vs duration.

python benchmarks/bench_model.py [--threads 2] [--repeats 3]
"""

import argparse
import json
import resource
import time

import torch
from transformers import ClapAudioConfig, ClapConfig, ClapModel, RobertaConfig

from atr import AtrConfig, AtrModel

SMALL_TEXT = RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)


def best_time(fn, repeats):
    """Best wall time of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    """Print a JSON summary: clips/s for both models at batch 8, and seconds per audio-second at 10, 60 and 600 s."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    clap = ClapModel(ClapConfig(audio_config=ClapAudioConfig().to_dict(), text_config=SMALL_TEXT.to_dict())).eval()
    atr = AtrModel(AtrConfig(audio_config=ClapAudioConfig(), text_config=SMALL_TEXT)).eval()
    features = torch.randn(args.batch, 1, 1001, 64)  # 10 s at 48 kHz, hop 480: ClapFeatureExtractor's output
    with torch.inference_mode():
        clap_s = best_time(lambda: clap.get_audio_features(input_features=features), args.repeats)
        atr_s = best_time(lambda: atr.get_audio_features(input_features=features.unsqueeze(1)), args.repeats)
        results = {
            "clap_clips_per_s": args.batch / clap_s,
            "atr_clips_per_s": args.batch / atr_s,
            "atr_over_clap": clap_s / atr_s,
        }
        for seconds in (10, 60, 600):
            chunks = seconds // 10
            long_features = torch.randn(1, chunks, 1, 1001, 64)
            elapsed = best_time(lambda: atr.get_audio_features(input_features=long_features), max(1, args.repeats - 2))
            results[f"atr_s_per_audio_s_{seconds}s"] = elapsed / seconds
    results["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
