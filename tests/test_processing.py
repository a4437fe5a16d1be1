"""AtrProcessor: option routing, caption checks, a batch the model accepts, Hub round trip and pipeline without atr."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from tiny import tiny_atr_config, tiny_tokenizer

from atr import AtrFeatureExtractor, AtrModel, AtrProcessor

SR = 48_000


def sound(seconds, freq=440.0, seed=0):
    """A tone with a little noise, float32 at 48 kHz."""
    t = np.arange(int(seconds * SR)) / SR
    noise = np.random.default_rng(seed).normal(0, 0.02, t.size)
    return (0.5 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def quiet(seconds):
    """Digital silence at 48 kHz."""
    return np.zeros(int(seconds * SR), dtype=np.float32)


def with_silences():
    """40 s: sound, long silences, sound."""
    return np.concatenate([sound(12), quiet(6), sound(9, 660, 1), quiet(3), sound(10, 880, 2)])


@pytest.fixture(scope="module")
def config():
    """A tiny HTSAT + BERT-style AtrConfig."""
    return tiny_atr_config(audio="clap", text="bert")


@pytest.fixture(scope="module")
def processor(config):
    """The processor the trainer builds for that config."""
    return AtrProcessor(AtrFeatureExtractor.from_audio_config(config.audio_config), tiny_tokenizer())


CAPTIONS = ["a dog bark then a siren", "rain while the engine sound"]


def test_options_reach_only_their_component(processor):
    audio = [sound(25), sound(3)]
    alone = processor.feature_extractor(audio, sampling_rate=SR, return_tensors="pt")
    # padding/truncation/max_length would be read as CLAP's truncation mode and a sample count if they leaked
    batch = processor(
        text=CAPTIONS, audio=audio, sampling_rate=SR, padding="max_length", truncation=True, max_length=5,
        return_tensors="pt",
    )
    assert batch["input_ids"].shape == (2, 5)
    assert torch.equal(batch["input_features"], alone["input_features"])
    assert torch.equal(batch["chunk_mask"], alone["chunk_mask"]) and batch["chunk_mask"].dtype == torch.int64
    nested = processor(
        text=CAPTIONS, audio=audio, text_kwargs={"padding": "max_length", "max_length": 7},
        audio_kwargs={"sampling_rate": SR}, return_tensors="pt",
    )
    assert nested["input_ids"].shape == (2, 7) and torch.equal(nested["input_features"], alone["input_features"])
    with pytest.raises(TypeError, match=r"unknown keyword arguments \['chunk_len'\].*audio_kwargs"):
        processor(audio=audio, sampling_rate=SR, chunk_len=3)


def test_training_options_reach_the_feature_extractor(processor):
    batch = processor(audio=sound(95), sampling_rate=SR, training=True, max_train_chunks=2, generator=0)
    assert batch["chunk_mask"].tolist() == [[1, 1]]


def test_long_caption_is_truncated_and_empty_caption_refused(processor):
    long_caption = " ".join(["dog"] * 200)
    batch = processor(text=[long_caption, "rain"], return_tensors="pt")
    assert batch["input_ids"].shape == (2, processor.tokenizer.model_max_length)
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()  # padded to the longest
    with pytest.raises(ValueError, match="text at index 1 is an empty caption"):
        processor(text=["a dog", "   "])
    with pytest.raises(ValueError, match="needs text=, audio= or both"):
        processor()


def test_batch_goes_straight_into_the_model(config, processor):
    model = AtrModel(config).eval()
    batch = processor(text=CAPTIONS, audio=[with_silences(), sound(4)], sampling_rate=SR, return_tensors="pt")
    assert set(batch) >= {"input_ids", "attention_mask", "input_features", "chunk_mask", "audio_attention_mask", "chunk_spans"}
    with torch.no_grad():
        out = model(**batch)
    assert out.logits_per_audio.shape == (2, 2)
    text_only = processor(text=CAPTIONS, return_tensors="pt")
    audio_only = processor(audio=sound(4), sampling_rate=SR, return_tensors="pt")
    assert "input_features" not in text_only and "input_ids" not in audio_only
    with torch.no_grad():
        assert model(**text_only).text_embeds.shape == (2, config.projection_dim)
        assert model(**audio_only).audio_embeds.shape == (1, config.projection_dim)


# --- fresh processes where `import atr` fails: only the code saved next to the files can be used -----------------

CHILD_HEADER = textwrap.dedent(
    """
    import sys, numpy as np, torch
    sys.modules["atr"] = None  # importing atr fails
    try:
        import atr
        raise SystemExit("atr was importable")
    except ImportError:
        pass
    """
)

PROCESSOR_CHILD = CHILD_HEADER + textwrap.dedent(
    """
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
    assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
    assert type(processor.feature_extractor).__name__ == "AtrFeatureExtractor"
    inputs = torch.load(sys.argv[2], weights_only=True)
    audio = [clip.numpy() for clip in inputs["audio"]]
    out = processor(text=inputs["text"], audio=audio, sampling_rate=48000, return_tensors="pt")
    torch.save(dict(out), sys.argv[3])
    """
)

PIPELINE_CHILD = CHILD_HEADER + textwrap.dedent(
    """
    from transformers import pipeline
    classifier = pipeline("zero-shot-audio-classification", model=sys.argv[1], trust_remote_code=True, device="cpu")
    assert type(classifier.model).__module__.startswith("transformers_modules"), type(classifier.model).__module__
    assert type(classifier.feature_extractor).__module__.startswith("transformers_modules")
    audio = torch.load(sys.argv[2], weights_only=True)["audio"].numpy()
    result = classifier(audio, candidate_labels=["dog bark", "siren", "rain", "engine"])
    torch.save(result, sys.argv[3])
    """
)


def run_child(tmp_path, code, directory, inputs):
    """Run `code` in a fresh Python outside the repo and return what it saved (tensors, no pickled objects)."""
    as_tensor = lambda value: torch.from_numpy(value) if isinstance(value, np.ndarray) else value  # noqa: E731
    inputs = {key: [as_tensor(v) for v in value] if isinstance(value, list) else as_tensor(value) for key, value in inputs.items()}
    torch.save(inputs, tmp_path / "inputs.pt")
    (tmp_path / "child.py").write_text(code)
    subprocess.run(
        [sys.executable, str(tmp_path / "child.py"), str(directory), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        check=True, cwd=tmp_path,
    )
    return torch.load(tmp_path / "out.pt", weights_only=True)


def test_processor_round_trip_without_atr(tmp_path, processor):
    processor.save_pretrained(tmp_path / "processor")
    files = {p.name for p in (tmp_path / "processor").iterdir()}
    assert {"processor_config.json", "processing_atr.py", "feature_extraction_atr.py"} <= files
    inputs = {"text": CAPTIONS, "audio": [with_silences(), sound(2)]}
    reloaded = run_child(tmp_path, PROCESSOR_CHILD, tmp_path / "processor", inputs)
    original = processor(text=inputs["text"], audio=inputs["audio"], sampling_rate=SR, return_tensors="pt")
    assert set(reloaded) == set(original)
    for key in original:
        assert torch.equal(reloaded[key], original[key]), key


def test_zero_shot_pipeline_without_atr(tmp_path, config, processor):
    model = AtrModel(config).eval()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    result = run_child(tmp_path, PIPELINE_CHILD, tmp_path / "model", {"audio": with_silences()})
    assert sorted(r["label"] for r in result) == ["dog bark", "engine", "rain", "siren"]
    assert abs(sum(r["score"] for r in result) - 1) < 1e-5
