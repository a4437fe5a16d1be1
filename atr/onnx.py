"""AtrOnnxModel: an `atr.export` ONNX folder run by ONNX Runtime behind `AtrModel`'s embedding API.

    model = AtrOnnxModel.from_pretrained("exported/")           # int8=True for the quantized graphs
    processor = AutoProcessor.from_pretrained("exported/")
    audio = model.get_audio_features(**processor(audio=clips, sampling_rate=48000, return_tensors="np"))
    text = model.get_text_features(**processor(text=captions, return_tensors="np"))

Inputs may be numpy arrays or torch tensors (on the CPU); outputs are torch tensors with `AtrModel`'s fields, so
`atr.embedding`, `AudioIndex`, `evaluate.py --backend onnx` and `atr-search` take either model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .backbones_atr import audio_backbone
from .configuration_atr import AtrConfig
from .export import ONNX_MANIFEST
from .modeling_atr import AtrAudioOutput

if TYPE_CHECKING:
    import onnxruntime


def is_onnx_export(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder written by `python -m atr.export onnx`."""
    return (Path(path) / ONNX_MANIFEST).is_file()


def _numpy(value, dtype):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value, dtype=dtype)


class AtrOnnxModel:
    """The exported audio, pooling and text graphs in ONNX Runtime sessions, with `AtrModel`'s feature methods."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, path: str | os.PathLike, config: AtrConfig, sessions: dict, files: dict, text_inputs: list[str], audio_inputs: list[str]):
        self.name_or_path = str(path)
        self.config = config
        self.sessions = sessions
        self.files = files
        self.text_inputs = text_inputs
        self.audio_inputs = audio_inputs

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, int8: bool = False, providers: list[str] | None = None,
                        session_options: onnxruntime.SessionOptions | None = None) -> AtrOnnxModel:
        """Load an export folder; `int8=True` uses the dynamically quantized audio and text graphs (`--int8` at export)."""
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise ImportError("AtrOnnxModel needs onnxruntime: pip install 'atr[onnx]'") from error
        path = Path(path)
        if not is_onnx_export(path):
            raise ValueError(f"{str(path)!r} is not an ONNX export ({ONNX_MANIFEST} missing): make one with "
                             "`python -m atr.export onnx MODEL_DIR OUT_DIR`")
        manifest = json.loads((path / ONNX_MANIFEST).read_text())
        files = {kind: manifest["files"][kind] for kind in ("audio", "pooling", "text")}
        if int8:
            missing = [kind for kind in ("audio", "text") if f"{kind}_int8" not in manifest["files"]]
            if missing:
                raise ValueError(f"{str(path)!r} has no int8 graphs: export with `python -m atr.export onnx MODEL_DIR OUT_DIR --int8`")
            files.update({kind: manifest["files"][f"{kind}_int8"] for kind in ("audio", "text")})
        providers = providers or ["CPUExecutionProvider"]
        sessions = {
            kind: ort.InferenceSession(str(path / name), sess_options=session_options, providers=providers)
            for kind, name in files.items()
        }
        # The graphs' own inputs: the exporter drops an input the model never reads (HTSAT ignores the frame mask).
        audio_inputs, text_inputs = ([i.name for i in sessions[kind].get_inputs()] for kind in ("audio", "text"))
        return cls(path, AtrConfig.from_pretrained(path), sessions, files, text_inputs, audio_inputs)

    def eval(self) -> AtrOnnxModel:
        """No-op (ONNX graphs are inference only), so code written for `AtrModel` runs unchanged."""
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The loaded graph files' bytes by file name: what `atr.embedding.module_fingerprint` hashes."""
        return {name: torch.frombuffer(bytearray((Path(self.name_or_path) / name).read_bytes()), dtype=torch.uint8)
                for name in sorted(self.files.values())}

    def get_audio_features(self, input_features: torch.Tensor | np.ndarray, chunk_mask: torch.Tensor | np.ndarray | None = None,
                           audio_attention_mask: torch.Tensor | np.ndarray | None = None, **kwargs) -> AtrAudioOutput:
        """Embed chunked audio: `pooler_output` (B, D) L2-normalised, `last_hidden_state` chunk embeddings (B, C, D), `chunk_weights`."""
        features = _numpy(input_features, np.float32)
        if features.ndim < 3:
            raise ValueError(f"input_features has shape {features.shape}, expected (batch, chunks, ...): prepare audio with AtrProcessor")
        mask = np.ones(features.shape[:2], dtype=np.int64) if chunk_mask is None else _numpy(chunk_mask, np.int64)
        real = mask.astype(bool)
        if not real.any(axis=1).all():
            raise ValueError("chunk_mask has a clip with no real chunk: every clip needs at least one chunk_mask=1 entry")
        feeds = {"chunk_features": features[real]}
        if "frame_mask" in self.audio_inputs:
            frame_axis = 2 + audio_backbone(self.config.audio_config.model_type).frame_axis  # after (batch, chunks)
            frames = np.ones(features.shape[:2] + (features.shape[frame_axis],), np.int64)
            feeds["frame_mask"] = (frames if audio_attention_mask is None else _numpy(audio_attention_mask, np.int64))[real]
        elif audio_attention_mask is not None and not np.asarray(audio_attention_mask)[real].all():
            raise ValueError("audio_attention_mask marks padded frames, but this export's audio graph takes no frame mask: "
                             "export the model again with this version of atr")
        step = self.config.audio_chunk_batch_size
        embeds = np.concatenate([
            self.sessions["audio"].run(None, {name: value[start : start + step] for name, value in feeds.items()})[0]
            for start in range(0, len(feeds["chunk_features"]), step)
        ])
        grid = np.zeros((*mask.shape, embeds.shape[-1]), dtype=np.float32)
        grid[real] = embeds
        pooled, weights = self.sessions["pooling"].run(None, {"chunk_embeds": grid, "chunk_mask": mask})
        return AtrAudioOutput(last_hidden_state=torch.from_numpy(grid), pooler_output=torch.from_numpy(pooled),
                              chunk_weights=torch.from_numpy(weights))

    def get_text_features(self, input_ids: torch.Tensor | np.ndarray, attention_mask: torch.Tensor | np.ndarray | None = None,
                          token_type_ids: torch.Tensor | np.ndarray | None = None, **kwargs) -> BaseModelOutputWithPooling:
        """Embed captions: `pooler_output` (B, D) L2-normalised, `last_hidden_state` the head's tokens."""
        ids = _numpy(input_ids, np.int64)
        given = {"input_ids": ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if given["attention_mask"] is None:
            given["attention_mask"] = np.ones_like(ids)
        if given["token_type_ids"] is None:
            given["token_type_ids"] = np.zeros_like(ids)
        feeds = {name: _numpy(given[name], np.int64) for name in self.text_inputs}
        embeds, tokens = self.sessions["text"].run(None, feeds)
        return BaseModelOutputWithPooling(last_hidden_state=torch.from_numpy(tokens), pooler_output=torch.from_numpy(embeds))


__all__ = ["AtrOnnxModel", "is_onnx_export"]
