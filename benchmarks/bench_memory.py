"""Peak memory of one hour-long recording through the public path: decode_audio -> processor -> embed_clips.

python benchmarks/bench_memory.py [--minutes 60] [--backbone demo|htsat] [--threads 2]

Each stage runs in a fresh process (peak RSS, `ru_maxrss`, only grows), so a stage's figure includes the ones before
it: `model` (imports and a randomly initialised model), `decode` (+ decode_audio of the WAV file), `features`
(+ the processor's chunks and features), `embed` (+ AtrModel embedding of every chunk). The WAV file is 16-bit PCM of
band-limited noise (every chunk holds sound, so silence dropping removes nothing).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

STAGES = ("model", "decode", "features", "embed")


def build(backbone):
    """(model, processor) with random weights: the demo recipe's Whisper-style encoder, or a full-size HTSAT."""
    import yaml
    from transformers import AutoConfig, BertConfig, ClapAudioConfig

    from atr import AtrConfig, AtrFeatureExtractor, AtrModel, AtrProcessor

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from tiny import tiny_tokenizer  # audio only: any tokenizer completes the processor

    text = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)
    if backbone == "htsat":
        audio, extractor_settings = ClapAudioConfig(), {}
    else:
        recipe = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "configs", "demo.yaml")))
        settings = dict(recipe["audio_encoder_config"])
        audio, extractor_settings = AutoConfig.for_model(settings.pop("model_type"), **settings), recipe["feature_extractor_config"]
    model = AtrModel(AtrConfig(audio_config=audio, text_config=text)).eval()
    return model, AtrProcessor(AtrFeatureExtractor.from_audio_config(audio, **extractor_settings), tiny_tokenizer())


def run_stage(stage, path, backbone, threads):
    """Run the stages up to `stage` and return {peak_rss_mb, seconds, ...} for this process."""
    import torch

    from atr.data import decode_audio
    from atr.embedding import embed_clips

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, processor = build(backbone)
    rate = processor.feature_extractor.sampling_rate
    start, out = time.perf_counter(), {}
    if STAGES.index(stage) >= 1:
        wave = decode_audio(path, rate)
        out["samples"] = int(wave.size)
    if stage == "features":
        features = processor(audio=wave, sampling_rate=rate, return_tensors="pt")
        out["chunks"] = int(features["chunk_mask"].sum())
        out["features_mb"] = round(features["input_features"].numel() * 4 / 2**20, 1)
    if stage == "embed":
        with torch.inference_mode():
            embedded = embed_clips(model, processor, [wave], batch_size=1)
        out["chunks"] = int(embedded.chunk_embeds[0].shape[0])
    out.update(seconds=round(time.perf_counter() - start, 1), peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    return out


def write_recording(path, minutes, rate):
    """A 16-bit mono WAV of band-limited noise, written in 1-minute blocks (the writer never holds the hour)."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as sound:
        for _ in range(minutes):
            block = np.convolve(rng.standard_normal(60 * rate), np.ones(8) / 8, mode="same")
            sound.write((0.2 * block).astype(np.float32))


def main():
    """Print a JSON summary with each stage's peak RSS."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--backbone", choices=["demo", "htsat"], default="demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # a child process runs one stage
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.path, args.backbone, args.threads)))
        return
    rate = 48000 if args.backbone == "htsat" else 16000
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "hour.wav")
        write_recording(path, args.minutes, rate)
        results = {"minutes": args.minutes, "backbone": args.backbone, "rate": rate,
                   "wav_mb": round(os.path.getsize(path) / 2**20, 1), "float32_wave_mb": round(args.minutes * 60 * rate * 4 / 2**20, 1)}
        for stage in STAGES:
            command = [sys.executable, __file__, "--stage", stage, "--path", path, "--backbone", args.backbone, "--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results[stage] = json.loads(done.stdout.strip().splitlines()[-1])
    results["loadavg_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
