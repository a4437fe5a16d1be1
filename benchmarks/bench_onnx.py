"""ONNX Runtime vs PyTorch audio embedding on a CPU: clips/s of AtrOnnxModel fp32 and int8 against AtrModel and ClapModel.

Speed: full-size HTSAT (random weights, as bench_model.py), batch 8 x 10 s, every model timed in the same process,
round-robin, best of --repeats. `--openvino` adds the fp32 graphs on ONNX Runtime's OpenVINO execution provider
(the `onnxruntime-openvino` wheel, which replaces `onnxruntime`), held to fp32 precision. Quality (with --model, a
trained atr folder): retrieval metrics of the same model run by PyTorch, ONNX Runtime fp32 and int8 on a dataset split
(the int8 cost).

python benchmarks/bench_onnx.py [--threads 2] [--repeats 5] [--openvino]
python benchmarks/bench_onnx.py --skip_speed --model outputs/demo --dataset synthetic --split test
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import ClapAudioConfig, ClapConfig, ClapModel, RobertaConfig

from atr import AtrConfig, AtrModel

# ONNX Runtime's OpenVINO EP on the CPU at fp32: its CPU plugin would otherwise pick bf16 where the CPU has it
OPENVINO_FP32 = ("OpenVINOExecutionProvider", {"device_type": "CPU", "precision": "FP32"})
SMALL_TEXT = RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)


def _processor_for(config):
    """An AtrProcessor for a random full-size model (the export reads chunk shapes and tokenizer output from it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny import tiny_tokenizer

    from atr import AtrFeatureExtractor, AtrProcessor

    return AtrProcessor(AtrFeatureExtractor.from_audio_config(config.audio_config), tiny_tokenizer())


def _cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (the ratios below depend on it), else platform's guess."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def speed(args) -> dict:
    """clips/s of ClapModel, AtrModel and AtrOnnxModel fp32/int8 audio embedding on batch x 10 s clips."""
    from atr.export import export_onnx
    from atr.onnx import AtrOnnxModel

    torch.manual_seed(0)
    clap = ClapModel(ClapConfig(audio_config=ClapAudioConfig().to_dict(), text_config=SMALL_TEXT.to_dict())).eval()
    atr = AtrModel(AtrConfig(audio_config=ClapAudioConfig(), text_config=SMALL_TEXT)).eval()
    features = torch.randn(args.batch, 1, 1001, 64)  # 10 s at 48 kHz, hop 480: ClapFeatureExtractor's output
    chunked = features.unsqueeze(1)  # (batch, 1 chunk, ...): AtrProcessor's layout
    mask = torch.ones(args.batch, 1, dtype=torch.long)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        export_onnx(atr, _processor_for(atr.config), folder, int8=True)
        export_s = time.perf_counter() - started
        onnx_fp32, onnx_int8 = AtrOnnxModel.from_pretrained(folder), AtrOnnxModel.from_pretrained(folder, int8=True)
        numpy_features, numpy_mask = chunked.numpy(), mask.numpy()
        runs = {
            "clap": lambda: clap.get_audio_features(input_features=features),
            "atr_torch": lambda: atr.get_audio_features(input_features=chunked, chunk_mask=mask),
            "onnx_fp32": lambda: onnx_fp32.get_audio_features(numpy_features, numpy_mask),
            "onnx_int8": lambda: onnx_int8.get_audio_features(numpy_features, numpy_mask),
        }
        if args.openvino:
            onnx_openvino = AtrOnnxModel.from_pretrained(folder, providers=[OPENVINO_FP32])
            runs["onnx_fp32_openvino"] = lambda: onnx_openvino.get_audio_features(numpy_features, numpy_mask)
        best = {name: float("inf") for name in runs}
        with torch.inference_mode():
            for fn in runs.values():  # warm-up
                fn()
            for _ in range(args.repeats):  # round-robin: a load spike hits every model alike
                for name, fn in runs.items():
                    start = time.perf_counter()
                    fn()
                    best[name] = min(best[name], time.perf_counter() - start)
        sizes_mb = {p.name: round(p.stat().st_size / 1e6, 1) for p in Path(folder).glob("audio*.onnx")}
    results = {f"{name}_clips_per_s": round(args.batch / seconds, 3) for name, seconds in best.items()}
    results.update({f"{name}_over_clap": round(best["clap"] / best[name], 3) for name in best if name.startswith("onnx")})
    results.update({
        "onnx_fp32_over_atr_torch": round(best["atr_torch"] / best["onnx_fp32"], 3),
        "export_s": round(export_s, 1), "audio_graph_mb": sizes_mb,
    })
    return results


def quality(args) -> dict:
    """Retrieval metrics of --model on --dataset/--split with PyTorch, ONNX Runtime fp32 and int8."""
    from transformers import AutoProcessor

    from atr import evaluation, loading
    from atr.data import load_audio_text_dataset
    from atr.export import export_onnx

    dataset = load_audio_text_dataset(args.dataset, args.split)
    model = AtrModel.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        export_onnx(model, processor, folder, int8=True)
        for backend in loading.MODEL_BACKENDS:
            source = args.model if backend == "torch" else folder
            embedder, embed_processor, _ = loading.load_model(source, backend=backend)
            record = evaluation.evaluate_retrieval(embedder, embed_processor, dataset, [None], batch_size=16, progress=False)[0]
            results[backend] = {k: round(v, 4) for k, v in record["metrics"].items() if k.endswith(("mAP10", "R1", "R10"))}
    results["int8_t2a_mAP10_cost"] = round(results["torch"]["t2a_mAP10"] - results["onnx-int8"]["t2a_mAP10"], 4)
    results["fp32_t2a_mAP10_diff"] = round(results["torch"]["t2a_mAP10"] - results["onnx"]["t2a_mAP10"], 4)
    return results


def main():
    """Print a JSON summary of the speed and (with --model) quality measurements."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (ONNX Runtime uses its default: the physical cores)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--skip_speed", action="store_true")
    parser.add_argument("--openvino", action="store_true", help="also time ONNX Runtime's OpenVINO execution provider (fp32)")
    parser.add_argument("--model", help="a trained atr folder: also measure the metric cost of ONNX fp32 / int8")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"cpu": _cpu_name(), "load_average_at_start": os.getloadavg()[0]}
    if not args.skip_speed:
        results["speed"] = speed(args)
    if args.model:
        results["quality"] = quality(args)
    results["load_average_at_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
