"""A speed bound for full-size HTSAT on this CPU: the time of its matrix products alone, each timed by itself with torch.

python benchmarks/bench_htsat_matmul_bound.py [--threads 2] [--batch 8]

Per Swin block: the qkv, output and two MLP projections at the stage's width, the windowed QK^T and AV products; plus
the patch merges. Shapes come from `transformers.ClapAudioConfig()` (laion/clap-htsat-unfused's config.json overrides
none of its Swin sizes). Each product is timed best of `REPEATS` with bench_model.py's `best_time`. Whatever else a
runtime does (LayerNorm, GELU, softmax, window transposes, bias adds) comes on top, so `batch / time` is an upper bound
on clips/s for any exact fp32 implementation that runs these products at torch's speed.
"""

import argparse
import json
from functools import partial

import torch
from bench_model import best_time
from transformers import ClapAudioConfig

REPEATS = 5
seconds = partial(best_time, repeats=REPEATS)


def matmul_bound(batch: int) -> dict:
    """Seconds and GFLOP of HTSAT's matrix products for `batch` clips, one row per stage."""
    config = ClapAudioConfig()
    side = config.spec_size // config.patch_stride[0]
    window = config.window_size**2
    total_s, total_flop, stages = 0.0, 0.0, []
    for stage, (depth, heads) in enumerate(zip(config.depths, config.num_attention_heads)):
        dim, tokens = config.patch_embeds_hidden_size * 2**stage, batch * (side // 2**stage) ** 2
        hidden = int(dim * config.mlp_ratio)
        x, h = torch.randn(tokens, dim), torch.randn(tokens, hidden)
        weights = [torch.randn(dim, 3 * dim), torch.randn(dim, dim), torch.randn(dim, hidden)]
        down = torch.randn(hidden, dim)
        projections = sum(seconds(lambda w=w: x @ w) for w in weights) + seconds(lambda: h @ down)
        groups, head_dim = tokens // window * heads, dim // heads
        q, k, scores = torch.randn(groups, window, head_dim), torch.randn(groups, head_dim, window), torch.randn(groups, window, window)
        attention = seconds(lambda: torch.bmm(q, k)) + seconds(lambda: torch.bmm(scores, q))
        block_flop = 2 * tokens * (4 * dim * dim + 2 * dim * hidden) + 2 * 2 * tokens * window * dim
        stage_s, stage_flop = depth * (projections + attention), depth * block_flop
        if stage < len(config.depths) - 1:  # patch merging: 2x2 tokens -> one, 4 dim -> 2 dim
            merged, merge_w = torch.randn(tokens // 4, 4 * dim), torch.randn(4 * dim, 2 * dim)
            stage_s += seconds(lambda: merged @ merge_w)
            stage_flop += 2 * (tokens // 4) * 4 * dim * 2 * dim
        stages.append({"width": dim, "blocks": depth, "ms": round(stage_s * 1e3, 1)})
        total_s, total_flop = total_s + stage_s, total_flop + stage_flop
    return {"batch": batch, "stages": stages, "matmul_ms": round(total_s * 1e3, 1), "gflop": round(total_flop / 1e9, 1),
            "gflop_per_s": round(total_flop / total_s / 1e9, 1), "clips_per_s_bound": round(batch / total_s, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(matmul_bound(args.batch), indent=2))


if __name__ == "__main__":
    main()
