"""atr's one model loader: an atr model (folder or Hub id), its ONNX export, or a transformers `ClapModel` behind atr's API.

`load_model(name)` is what evaluation, `atr-search` (its commands, the page and the Space) call. The rule on remote
code lives here: nothing from a repository runs unless the caller passes `trust_remote_code=True`; `import atr`
registers the atr classes, so atr models need none. (The endpoint handler, copied into model folders where `atr`
may not be installed, loads its own folder with transformers alone.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoFeatureExtractor, AutoProcessor, AutoTokenizer, ClapFeatureExtractor, ClapModel, ProcessorMixin
from transformers import PreTrainedTokenizerBase
from transformers.feature_extraction_utils import BatchFeature
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .feature_extraction_atr import AtrFeatureExtractor
from .modeling_atr import AtrModel
from .onnx import AtrOnnxModel, is_onnx_export

CLAP_PROTOCOL = (
    "ClapModel adapter: silence-aware chunks of at most the extractor's max_length_s (no random crop), the model's "
    "own ClapFeatureExtractor per chunk, is_longer=False, mean of the L2-normalised chunk embeddings, re-normalised"
)
ATR_PROTOCOL = "AtrModel: silence-aware chunks, attention pooling with the learned query"
# How a model runs; `load_model(backend="auto")` picks "onnx" for an `atr.export` folder, else "torch".
MODEL_BACKENDS = ("torch", "onnx", "onnx-int8")


class ClapChunkProcessor:
    """Processor for `ClapRetrievalAdapter`: silence-aware chunks (AtrFeatureExtractor) featurised by CLAP's own extractor."""

    def __init__(self, feature_extractor: ClapFeatureExtractor, tokenizer: PreTrainedTokenizerBase):
        self.feature_extractor = feature_extractor  # the checkpoint's ClapFeatureExtractor
        self.tokenizer = tokenizer
        window_s = feature_extractor.nb_max_samples / feature_extractor.sampling_rate
        # Only its chunk boundaries are used: each chunk is at most one CLAP window, so rand_trunc never crops.
        self.chunker = AtrFeatureExtractor(
            backbone="clap", sampling_rate=feature_extractor.sampling_rate, feature_size=feature_extractor.feature_size,
            window_s=window_s, hop_length=feature_extractor.hop_length, n_fft=feature_extractor.fft_window_size,
        )

    def __call__(self, text=None, audio=None, sampling_rate=None, return_tensors="pt", **kwargs):
        """Captions -> input_ids/attention_mask; clips -> input_features (B, C, channels, frames, mels) + chunk_mask."""
        data = {}
        if text is not None:
            data.update(self.tokenizer(text, padding=True, truncation=True, return_tensors="pt"))
        if audio is not None:
            data.update(self._audio(audio, sampling_rate))
        return BatchFeature(data)

    def _audio(self, clips, sampling_rate):
        if sampling_rate != self.feature_extractor.sampling_rate:
            raise ValueError(
                f"audio has sampling rate {sampling_rate}, expected {self.feature_extractor.sampling_rate}: resample it first"
            )
        chunks, packed = [], []
        for clip in clips:
            clip = np.asarray(clip, dtype=np.float32)
            packed.append(self.chunker.chunk_spans(clip))
            chunks.extend(np.concatenate([clip[start:end] for start, end in spans]) for spans in packed[-1])
        features = self.feature_extractor(chunks, sampling_rate=sampling_rate, return_tensors="np")["input_features"]
        most = max(len(p) for p in packed)
        batch = np.zeros((len(clips), most, *features.shape[1:]), dtype=np.float32)
        mask = np.zeros((len(clips), most), dtype=np.int64)
        # where each chunk's audio came from, in seconds, as AtrFeatureExtractor gives it: (B, C, S, 2), -1 unused
        seconds = np.full((len(clips), most, max(len(s) for p in packed for s in p), 2), -1.0, dtype=np.float32)
        for index, clip_chunks in enumerate(packed):
            mask[index, : len(clip_chunks)] = 1
            for c, spans in enumerate(clip_chunks):
                seconds[index, c, : len(spans)] = np.asarray(spans) / sampling_rate
        batch[mask.astype(bool)] = features
        return {"input_features": torch.from_numpy(batch), "chunk_mask": torch.from_numpy(mask), "chunk_spans": torch.from_numpy(seconds)}


class ClapRetrievalAdapter(nn.Module):
    """A transformers `ClapModel` behind AtrModel's embedding interface (chunk embeddings averaged per clip)."""

    def __init__(self, clap: ClapModel):
        super().__init__()
        self.clap = clap
        self.config, self.name_or_path = clap.config, clap.name_or_path  # projection_dim and the id an index records

    def get_audio_features(self, input_features: torch.Tensor, chunk_mask: torch.Tensor | None = None, **kwargs) -> BaseModelOutputWithPooling:
        """L2-normalised clip embeddings (B, D), the mean of the clip's normalised chunk embeddings (last_hidden_state,
        (B, C, D); chunk_weights, 1/C per real chunk)."""
        if chunk_mask is None:
            chunk_mask = torch.ones(input_features.shape[:2], dtype=torch.long, device=input_features.device)
        real = chunk_mask.bool()
        chunks = input_features[real]
        # The fused checkpoint reads is_longer; no chunk is longer than its window, and passing it avoids the
        # extractor's random choice of one "longer" clip.
        is_longer = torch.zeros(len(chunks), 1, dtype=torch.bool, device=chunks.device)
        chunk_embeds = self.clap.get_audio_features(input_features=chunks, is_longer=is_longer).pooler_output
        grid = chunk_embeds.new_zeros(*chunk_mask.shape, chunk_embeds.shape[-1])
        grid[real] = chunk_embeds  # ClapModel's audio embeddings are L2-normalised
        mean = grid.sum(1) / real.sum(1, keepdim=True).clamp(min=1)
        weights = real.to(grid.dtype) / real.sum(1, keepdim=True).clamp(min=1)
        output = BaseModelOutputWithPooling(pooler_output=nn.functional.normalize(mean, dim=-1), last_hidden_state=grid)
        output["chunk_weights"] = weights
        return output

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> BaseModelOutputWithPooling:
        """L2-normalised caption embeddings (B, D) from ClapModel."""
        return self.clap.get_text_features(input_ids=input_ids, attention_mask=attention_mask)


# What load_model returns: AtrModel, ClapRetrievalAdapter or an ONNX export; AtrProcessor (or a repo's own) or ClapChunkProcessor.
RetrievalModel = nn.Module | AtrOnnxModel
RetrievalProcessor = ProcessorMixin | ClapChunkProcessor


def load_model(name: str | Path, device: str | torch.device = "cpu", backend: str = "auto",
               trust_remote_code: bool = False) -> tuple[RetrievalModel, RetrievalProcessor, dict]:
    """(model, processor, info) of an atr model, its ONNX export or a transformers ClapModel (folder or Hub id); info names the protocol.

    A ClapModel comes back behind `ClapRetrievalAdapter` / `ClapChunkProcessor`, with AtrModel's embedding interface
    and atr's chunk spans. `backend="onnx"` / `"onnx-int8"` loads an `atr.export` ONNX folder into
    `atr.onnx.AtrOnnxModel` (ONNX Runtime, CPU); `"auto"` does so for any such folder, whatever `device` says.
    No code from the repo runs unless `trust_remote_code=True`.
    """
    name = str(name)
    if backend not in ("auto", *MODEL_BACKENDS):
        raise ValueError(f"backend is {backend!r}, expected 'auto' or one of {MODEL_BACKENDS}")
    if backend == "auto":
        backend, device = ("onnx", "cpu") if is_onnx_export(name) else ("torch", device)
    if backend != "torch":
        if not is_onnx_export(name):
            raise ValueError(f"--backend {backend} needs an ONNX export folder, and {name!r} is not one: run "
                             f"`python -m atr.export onnx {name} OUT_DIR{' --int8' if backend == 'onnx-int8' else ''}` "
                             "and pass --model OUT_DIR")
        if str(device) != "cpu":
            raise ValueError(f"--backend {backend} runs on the CPU (ONNX Runtime), not {device!r}: pass --device cpu")
        model = AtrOnnxModel.from_pretrained(name, int8=backend == "onnx-int8")
        processor = AutoProcessor.from_pretrained(name)
        return model, processor, {"model_type": "atr", "audio_protocol": ATR_PROTOCOL, "backend": backend}
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        if "trust_remote_code" in str(error) and not trust_remote_code:
            raise ValueError(f"--model {name!r} could not be loaded without running its code: it is not an atr model and "
                             "needs its repository's own code to load; it was not run. Pass --trust_remote_code, if you trust it") from error
        hint = "" if trust_remote_code else " (a repo that needs its own code also needs --trust_remote_code, if you trust it)"
        raise ValueError(f"--model {name!r} could not be loaded ({error}): pass a trained atr directory, a ClapModel "
                         f"directory or a Hub id{hint}") from error
    if config.model_type == "clap":
        model = ClapRetrievalAdapter(ClapModel.from_pretrained(name))
        processor = ClapChunkProcessor(AutoFeatureExtractor.from_pretrained(name), AutoTokenizer.from_pretrained(name))
        info = {"model_type": "clap", "audio_protocol": CLAP_PROTOCOL}
    elif config.model_type == "atr":
        model = AtrModel.from_pretrained(name)
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
        info = {"model_type": "atr", "audio_protocol": ATR_PROTOCOL}
    else:
        raise ValueError(f"--model {name!r} is a {config.model_type!r} model: pass an atr model, its ONNX export or a transformers ClapModel")
    return model.to(device).eval(), processor, info


__all__ = ["ATR_PROTOCOL", "CLAP_PROTOCOL", "ClapChunkProcessor", "ClapRetrievalAdapter", "MODEL_BACKENDS", "RetrievalModel", "RetrievalProcessor",
           "load_model"]
