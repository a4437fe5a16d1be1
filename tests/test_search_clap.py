"""A transformers ClapModel (e.g. LAION-CLAP) in atr-search: build, text and audio queries, --chunks, the served index."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tiny import tiny_clap_audio_config, tiny_roberta_config, tiny_tokenizer

from atr import search
from atr.loading import load_model
from atr.search import AudioIndex


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    """A tiny random ClapModel and ClapProcessor (16 kHz, 2 s windows) saved like a Hub checkpoint."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clap")
    config = ClapConfig(audio_config=tiny_clap_audio_config().to_dict(), text_config=tiny_roberta_config().to_dict(), projection_dim=16)
    ClapModel(config).save_pretrained(path)
    extractor = ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=2, fft_window_size=400,
                                     frequency_min=50, frequency_max=7000, truncation="rand_trunc")
    ClapProcessor(feature_extractor=extractor, tokenizer=tiny_tokenizer()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory):
    """Four recordings of different tones, one 5 s long with a 2 s silence (several chunks)."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    for i in range(4):
        t = np.arange(int(16000 * (1.0 + 0.3 * i))) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (250 + 400 * i) * t) + 0.02 * rng.standard_normal(t.size)
        if i == 3:
            wave = np.concatenate([wave, np.zeros(32000), wave, wave])
        sf.write(folder / f"clip{i}.wav", wave.astype(np.float32), 16000)
    return folder


def run(argv, capsys):
    assert search.main(argv) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_clap_model_builds_and_answers_text_and_audio_queries(tmp_path, clap_dir, clips_dir, capsys):
    index_dir = tmp_path / "index"
    common = ["--audio-dir", str(clips_dir), "--index-dir", str(index_dir), "--model", str(clap_dir), "--json", "--quiet"]
    assert search.main(["build", *common[:-2], "--quiet"]) == 0
    hits = run(["a dog bark", *common, "-k", "4"], capsys)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4] and {Path(h["path"]).name for h in hits} == {f"clip{i}.wav" for i in range(4)}
    for i in range(4):
        first = run(["--query-audio", str(clips_dir / f"clip{i}.wav"), *common, "-k", "1"], capsys)[0]
        assert Path(first["path"]).name == f"clip{i}.wav" and first["score"] == pytest.approx(1.0, abs=1e-3)
    chunks = run(["a dog bark", *common, "-k", "20", "--chunks"], capsys)
    long_chunks = [h for h in chunks if Path(h["path"]).name == "clip3.wav"]
    assert len(long_chunks) >= 2 and all(h["end"] > h["start"] >= 0 for h in long_chunks)  # atr's chunking gave the spans
    # what `atr-search serve` loads: the stored index with the model, answering a query
    model, processor, _ = load_model(str(clap_dir))
    served = AudioIndex.load(index_dir, model, processor)
    assert len(served) == 4 and served.search(["a dog bark"], k=1)[0][0].path in {h["path"] for h in hits}
