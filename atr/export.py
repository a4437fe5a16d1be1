"""ONNX export of an atr model for ONNX Runtime inference: `python -m atr.export onnx MODEL_DIR OUT_DIR [--int8]`.

Three graphs, exported with `torch.onnx.export(dynamo=True)` (needs `pip install 'atr[onnx]'`):

- `audio.onnx`: real chunks' features (chunks, *chunk_feature_shape) [+ their frame mask, for adapters that take one]
  -> chunk embeddings (chunks, D), by the audio encoder, head, token pooling and projection; padding chunks are never
  given to it, as `AtrModel` never encodes them.
- `pooling.onnx`: chunk embeddings (batch, chunks, D) + chunk_mask (batch, chunks) -> the L2-normalised clip embedding
  (batch, D) and chunk weights (batch, chunks): the learned-query attention pooling, kept outside the audio graph so
  that graph runs on real chunks only.
- `text.onnx`: input_ids, attention_mask (and token_type_ids when the tokenizer gives them) -> the L2-normalised caption
  embedding (batch, D) and the head's tokens (batch, tokens, H).

`--int8` also writes `audio.int8.onnx` and `text.int8.onnx` by ONNX Runtime dynamic quantization
(`onnxruntime.quantization.quantize_dynamic`, int8 weights; per output channel in the text graph, where one scale per
tensor cost 0.036 of t2a mAP@10 on the demo model and per channel 0.007, see BENCHMARKS.md). The processor files and
`config.json` go next to them, and `atr.onnx.AtrOnnxModel.from_pretrained(OUT_DIR)` loads the folder.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import ProcessorMixin

    from .modeling_atr import AtrModel

ONNX_MANIFEST = "onnx_export.json"
GRAPHS = {"audio": "audio.onnx", "pooling": "pooling.onnx", "text": "text.onnx"}
QUANTIZED = {"audio": "audio.int8.onnx", "text": "text.int8.onnx"}
# A pretrained text encoder's weights vary by output channel: one int8 scale per tensor loses its small ones.
PER_CHANNEL = {"audio": False, "text": True}
# Weights past this many bytes go to an external data file: a single .onnx protobuf cannot exceed 2 GB.
INLINE_WEIGHT_LIMIT = 1_500_000_000


class AudioChunkEncoder(nn.Module):
    """Real chunks' features (N, ...) -> chunk embeddings (N, D), by the model's own encoder, head and projection."""

    def __init__(self, model: AtrModel):
        super().__init__()
        self.model = model

    def forward(self, chunk_features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Chunk embeddings, unnormalised, exactly as `AtrModel.get_audio_features(...).last_hidden_state` holds them."""
        # get_chunk_embeddings runs the chunks in one pass: get_audio_features' mini-batch loop is not traceable with a
        # dynamic chunk count.
        return self.model.get_chunk_embeddings(chunk_features, frame_mask)


class ChunkPooling(nn.Module):
    """Chunk embeddings (B, C, D) + chunk_mask (B, C) -> L2-normalised clip embeddings (B, D) and chunk weights (B, C)."""

    def __init__(self, model: AtrModel):
        super().__init__()
        self.pooling = model.chunk_pooling

    def forward(self, chunk_embeds: torch.Tensor, chunk_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned-query attention pooling of `AtrModel.get_audio_features`."""
        pooled, weights = self.pooling(chunk_embeds, chunk_mask)
        return nn.functional.normalize(pooled, dim=-1), weights


class TextEncoder(nn.Module):
    """Token ids -> L2-normalised caption embeddings (B, D) and head tokens, by `AtrModel.get_text_features`."""

    def __init__(self, model: AtrModel, with_token_type_ids: bool):
        super().__init__()
        self.model, self.with_token_type_ids = model, with_token_type_ids

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`get_text_features(...)`: (pooler_output, last_hidden_state)."""
        out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.pooler_output, out.last_hidden_state


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'atr[onnx]'") from error


def _export(module, args, path: Path, input_names, output_names, dynamic_shapes, external_data: bool):
    program = torch.onnx.export(
        module.eval(), args, dynamo=True, verbose=False, input_names=input_names, output_names=output_names,
        dynamic_shapes=dynamic_shapes, external_data=external_data,
    )
    program.save(str(path), external_data=external_data)


def _takes_frame_mask(model) -> bool:
    """Whether the model's audio adapter takes a per-frame mask next to the features."""
    return len(inspect.signature(model.audio_model.forward).parameters) > 1


def _example_audio(processor):
    """Real chunks of a 2.4-window noise clip: (3, *chunk_feature_shape) features and their frame mask (None if not made).

    The last chunk is part padding, so a mask-dependent branch is traced with padding present, not specialised away.
    """
    extractor = processor.feature_extractor
    clip = np.random.default_rng(0).standard_normal(int(2.4 * extractor.window_samples)).astype(np.float32) * 0.1
    out = extractor(clip, sampling_rate=extractor.sampling_rate, return_tensors="pt")
    real = out["chunk_mask"][0].bool()
    frames = out.get("audio_attention_mask")
    return out["input_features"][0][real], None if frames is None else frames[0][real]


def _example_text(processor):
    return processor(text=["a dog barks twice", "rain"], return_tensors="pt")


@torch.no_grad()
def export_onnx(model: AtrModel, processor: ProcessorMixin, out_dir: str | os.PathLike, int8: bool = False, overwrite: bool = False) -> Path:
    """Write the audio, pooling and text graphs, the processor and config of an `AtrModel` (put in float32 eval mode) to out_dir."""
    _require_onnx()
    out_dir = Path(out_dir)
    if (out_dir / ONNX_MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{str(out_dir)!r} already holds an ONNX export: pass overwrite=True (--overwrite) or another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > INLINE_WEIGHT_LIMIT
    chunks, batch = torch.export.Dim("chunks"), torch.export.Dim("batch")

    features, frames = _example_audio(processor)
    audio_names, audio_args = ["chunk_features"], (features,)
    if _takes_frame_mask(model) and frames is not None:  # adapters that mask padded frames (audio_attention_mask)
        audio_names, audio_args = ["chunk_features", "frame_mask"], (features, frames)
    _export(AudioChunkEncoder(model), audio_args, out_dir / GRAPHS["audio"], audio_names, ["chunk_embeds"],
            {name: {0: chunks} for name in audio_names}, external)

    dim = model.config.projection_dim
    embeds = torch.randn(2, 3, dim, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    _export(ChunkPooling(model), (embeds, mask), out_dir / GRAPHS["pooling"], ["chunk_embeds", "chunk_mask"],
            ["audio_embeds", "chunk_weights"], {"chunk_embeds": {0: batch, 1: chunks}, "chunk_mask": {0: batch, 1: chunks}}, False)

    text = _example_text(processor)
    # token_type_ids only when the tokenizer makes them and the text encoder reads them (RoBERTa's tokenizer does not).
    with_types = "token_type_ids" in text and model._text_accepts_token_type_ids
    tokens = torch.export.Dim("tokens")
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_types else [])
    args = tuple(text[name] for name in names)
    _export(TextEncoder(model, with_types), args, out_dir / GRAPHS["text"], names, ["text_embeds", "text_tokens"],
            {name: {0: batch, 1: tokens} for name in names}, external)

    files = dict(GRAPHS)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        for kind, name in QUANTIZED.items():
            quantize_dynamic(out_dir / GRAPHS[kind], out_dir / name, weight_type=QuantType.QInt8, per_channel=PER_CHANNEL[kind],
                             use_external_data_format=external)
        files.update({f"{kind}_int8": name for kind, name in QUANTIZED.items()})
    model.config.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    manifest = {"format_version": 1, "source": str(getattr(model, "name_or_path", "") or ""), "files": files,
                "audio_inputs": audio_names, "text_inputs": names}
    (out_dir / ONNX_MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out_dir


def _parser():
    parser = argparse.ArgumentParser(prog="python -m atr.export", description="Export a trained atr model.")
    formats = parser.add_subparsers(dest="format", required=True)
    onnx = formats.add_parser("onnx", help="audio, pooling and text ONNX graphs for atr.onnx.AtrOnnxModel")
    onnx.add_argument("model_dir", help="a trained atr model folder (or Hub id)")
    onnx.add_argument("out_dir", help="where the .onnx files, config and processor go")
    onnx.add_argument("--int8", action="store_true", help="also write int8 dynamically quantized audio and text graphs")
    onnx.add_argument("--overwrite", action="store_true", help="replace an export already in out_dir")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m atr.export onnx MODEL_DIR OUT_DIR [--int8] [--overwrite]`."""
    from transformers import AutoProcessor

    from .modeling_atr import AtrModel

    args = _parser().parse_args(argv)
    model = AtrModel.from_pretrained(args.model_dir)
    processor = AutoProcessor.from_pretrained(args.model_dir)
    out = export_onnx(model, processor, args.out_dir, int8=args.int8, overwrite=args.overwrite)
    print(f"wrote {', '.join(sorted(p.name for p in out.glob('*.onnx')))} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
