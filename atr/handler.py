"""Inference Endpoints custom handler of an atr model: zero-shot audio classification and text / audio embeddings.

Written as `handler.py` into every model folder `train.py` saves (and so pushed with it). Inference Endpoints load
`EndpointHandler(path)` once and call it with each request's JSON, `{"inputs": ..., "parameters": {...}}`
(https://huggingface.co/docs/inference-endpoints/guides/custom_handler). It uses only torch, transformers, numpy
and soundfile (soxr to resample), and loads the model with the code saved next to its weights.

- `inputs` audio (raw bytes of a WAV/FLAC/OGG file, their base64 string, or a list of floats with
  `parameters.sampling_rate`) with `parameters.candidate_labels`: `[{"label", "score"}, ...]` best first, the scores
  of transformers' zero-shot-audio-classification pipeline (`parameters.hypothesis_template` as there).
- `inputs` a string or a list of strings: `{"text_embeds": [[...], ...]}`, one L2-normalised embedding per string.
- `inputs` audio without labels: `{"audio_embeds": [...], "chunk_weights": [...], "chunk_spans": [[[start, end], ...], ...]}`,
  the recording's embedding, how much each chunk carried it and the stretches (seconds) each chunk holds. A base64
  string is audio only with labels or with `parameters.input_type = "audio"`; otherwise it is text.
"""

import base64
import io

import numpy as np
import torch
from transformers import AutoModel, AutoProcessor, pipeline


def _decode(data, sampling_rate, rate):
    """A float32 mono waveform at `rate` from file bytes or from samples at `sampling_rate`."""
    if isinstance(data, (bytes, bytearray)):
        import soundfile

        wave, sampling_rate = soundfile.read(io.BytesIO(bytes(data)), dtype="float32", always_2d=True)
        wave = wave.mean(axis=1)
    else:
        if sampling_rate is None:
            raise ValueError(f"audio given as a list of samples needs parameters.sampling_rate (this model takes {rate} Hz)")
        wave = np.asarray(data, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"audio samples must be one flat list (mono), got shape {wave.shape}")
    if int(sampling_rate) != rate:
        import soxr

        wave = soxr.resample(wave, int(sampling_rate), rate, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


class EndpointHandler:
    """The atr model and its processor, loaded once; each call answers one request."""

    def __init__(self, path: str = ""):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModel.from_pretrained(path, trust_remote_code=True).to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        self.rate = self.processor.feature_extractor.sampling_rate
        self.classifier = pipeline("zero-shot-audio-classification", model=self.model, tokenizer=self.processor.tokenizer,
                                   feature_extractor=self.processor.feature_extractor, device=self.device)

    def __call__(self, data: dict):
        """Labels with scores, text embeddings or an audio embedding, depending on `inputs` and `parameters`."""
        inputs, parameters = data["inputs"], dict(data.get("parameters") or {})
        labels = parameters.pop("candidate_labels", None)
        is_text = isinstance(inputs, str) or (isinstance(inputs, list) and inputs and all(isinstance(x, str) for x in inputs))
        if is_text and labels is None and parameters.get("input_type") != "audio":
            return {"text_embeds": self._text(inputs if isinstance(inputs, list) else [inputs])}
        if isinstance(inputs, str):  # base64 of an audio file
            inputs = base64.b64decode(inputs)
        wave = _decode(inputs, parameters.get("sampling_rate"), self.rate)
        if labels is not None:
            labels = [labels] if isinstance(labels, str) else list(labels)
            template = {k: parameters[k] for k in ("hypothesis_template",) if k in parameters}
            return [{"label": r["label"], "score": r["score"]} for r in self.classifier(wave, candidate_labels=labels, **template)]
        return self._audio(wave)

    @torch.no_grad()
    def _text(self, texts):
        batch = self.processor(text=texts, return_tensors="pt").to(self.device)
        return self.model.get_text_features(**batch).pooler_output.float().cpu().tolist()

    @torch.no_grad()
    def _audio(self, wave):
        batch = self.processor(audio=[wave], sampling_rate=self.rate, return_tensors="pt")
        spans = batch.pop("chunk_spans")[0].tolist() if "chunk_spans" in batch else []
        out = self.model.get_audio_features(**batch.to(self.device))
        weights = out.chunk_weights[0].float().cpu().tolist() if getattr(out, "chunk_weights", None) is not None else None
        return {"audio_embeds": out.pooler_output[0].float().cpu().tolist(), "chunk_weights": weights,
                "chunk_spans": [[list(span) for span in chunk if span[0] >= 0] for chunk in spans]}
