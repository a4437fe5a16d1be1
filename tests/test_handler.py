"""The Inference Endpoints handler.py that train.py writes into every saved model folder."""

import base64
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import AutoModel, AutoProcessor, pipeline

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train  # noqa: E402

TINY = str(ROOT / "tests" / "configs" / "tiny.yaml")
LABELS = ["dog", "siren", "bell", "rain"]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_text):
    """A folder train.py saved (1 step on the tiny config)."""
    out = tmp_path_factory.mktemp("trained") / "out"
    train.main(["--config", TINY, "--text_backbone", tiny_text, "--output_dir", str(out), "--noise_probability", "0",
                "--max_steps", "1", "--eval_split", "", "--test_split", ""])
    return out


def load_handler(folder):
    """EndpointHandler from the folder's own handler.py, as Inference Endpoints import it."""
    spec = importlib.util.spec_from_file_location("endpoint_handler", folder / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EndpointHandler(str(folder))


def test_every_saved_folder_and_checkpoint_has_the_handler(saved_model):
    assert (saved_model / "handler.py").read_text() == (ROOT / "atr" / "handler.py").read_text()
    assert {"soundfile", "soxr"} <= set((saved_model / "requirements.txt").read_text().split())
    assert all((checkpoint / "handler.py").exists() for checkpoint in saved_model.glob("checkpoint-*"))


def test_the_handler_answers_zero_shot_and_embedding_requests(saved_model):
    handler = load_handler(saved_model)
    rate = handler.rate
    t = np.arange(int(rate * 2.5)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) * (t < 1.2)).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV", subtype="FLOAT")
    raw = buffer.getvalue()

    model, processor = AutoModel.from_pretrained(saved_model).eval(), AutoProcessor.from_pretrained(saved_model)
    classifier = pipeline("zero-shot-audio-classification", model=model, tokenizer=processor.tokenizer,
                          feature_extractor=processor.feature_extractor, device="cpu")
    expected = {r["label"]: r["score"] for r in classifier(wave, candidate_labels=LABELS)}
    for inputs, parameters in ((raw, {}), (base64.b64encode(raw).decode(), {}), (wave.tolist(), {"sampling_rate": rate})):
        answer = handler({"inputs": inputs, "parameters": {"candidate_labels": LABELS, **parameters}})
        assert [set(r) for r in answer] == [{"label", "score"}] * len(LABELS)
        scores = [r["score"] for r in answer]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0)
        assert {r["label"]: r["score"] for r in answer} == pytest.approx(expected, abs=1e-6)

    with torch.no_grad():
        text = model.get_text_features(**processor(text=["a dog bark", "bell"], return_tensors="pt")).pooler_output
        audio = model.get_audio_features(**processor(audio=[wave], sampling_rate=rate, return_tensors="pt"))
    torch.testing.assert_close(torch.tensor(handler({"inputs": ["a dog bark", "bell"]})["text_embeds"]), text)
    torch.testing.assert_close(torch.tensor(handler({"inputs": "bell"})["text_embeds"]), text[1:])
    embedded = handler({"inputs": raw})
    torch.testing.assert_close(torch.tensor(embedded["audio_embeds"]), audio.pooler_output[0])
    assert len(embedded["chunk_weights"]) == len(embedded["chunk_spans"]) >= 1
    start, end = embedded["chunk_spans"][0][0]
    assert 0 <= start < end <= 2.5
    with pytest.raises(ValueError, match="sampling_rate"):
        handler({"inputs": wave.tolist()})
