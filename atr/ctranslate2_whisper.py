"""faster-whisper (CTranslate2) Whisper checkpoints read exactly and converted into transformers Whisper checkpoints."""

import hashlib
import json
import logging
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

# The binary layout written by ctranslate2/specs/model_spec.py (`_serialize`): little-endian, no padding.
BINARY_VERSION = 6
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}  # 5: bfloat16 bits
BFLOAT16_ID = 5
PART_PATTERN = re.compile(r"^model\.bin\.part(\d+)$")


def model_bin_parts(folder: str | os.PathLike) -> list[Path]:
    """The folder's `model.bin`, or its `model.bin.part1`, `.part2`, ... in order; empty when it has neither."""
    folder = Path(folder)
    if (folder / "model.bin").is_file():
        return [folder / "model.bin"]
    parts = sorted((int(m.group(1)), p) for p in folder.glob("model.bin.part*") if (m := PART_PATTERN.match(p.name)))
    return [p for _, p in parts]


def is_ctranslate2_whisper(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a CTranslate2 Whisper model (faster-whisper's layout), not a transformers checkpoint."""
    parts = model_bin_parts(folder) if Path(folder).is_dir() else []
    if not parts:
        return False
    with open(parts[0], "rb") as stream:
        head = stream.read(4 + 2 + 32)
    if len(head) < 8 or struct.unpack_from("<I", head)[0] != BINARY_VERSION:
        return False
    length = struct.unpack_from("<H", head, 4)[0]
    return head[6 : 6 + length - 1] == b"WhisperSpec"


def read_model_bin(parts: list[Path]) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 `model.bin` (given as its parts, in order), aliases resolved; refuses a damaged file."""
    name = " + ".join(str(p) for p in parts)
    data = b"".join(Path(p).read_bytes() for p in parts)
    pos = 0

    def damaged(what):
        return ValueError(
            f"{name} is not a complete CTranslate2 model.bin ({what}): the file is truncated, or its parts are missing or "
            "out of order (join model.bin.part1, .part2, ... in that order); download the model again"
        )

    def take(fmt):
        nonlocal pos
        if pos + struct.calcsize(fmt) > len(data):
            raise damaged(f"it ends at byte {len(data)} inside a header")
        value = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value[0]

    def string():
        nonlocal pos
        length = take("H")
        if length == 0 or pos + length > len(data) or data[pos + length - 1] != 0:
            raise damaged(f"a malformed name at byte {pos}")
        value = data[pos : pos + length - 1].decode("utf-8", errors="replace")
        pos += length
        return value

    version = take("I")
    if version != BINARY_VERSION:
        raise damaged(f"binary version {version}, expected {BINARY_VERSION}")
    spec = string()
    if spec != "WhisperSpec":
        raise ValueError(f"{name} holds a CTranslate2 {spec!r}, not a Whisper model: pass a faster-whisper Whisper folder")
    take("I")  # the spec's revision
    variables = {}
    for _ in range(take("I")):
        key, dims = string(), None
        dims = [take("I") for _ in range(take("B"))]
        dtype_id, size = take("B"), take("I")
        if dtype_id not in DTYPES:
            raise damaged(f"{key!r} has unknown dtype id {dtype_id}")
        if size != int(np.prod(dims, dtype=np.int64)) * np.dtype(DTYPES[dtype_id]).itemsize or pos + size > len(data):
            raise damaged(f"{key!r} ({dims}) has {size} bytes where its shape needs another count, or the file ends first")
        array = np.frombuffer(data, dtype=DTYPES[dtype_id], count=int(np.prod(dims, dtype=np.int64)), offset=pos).reshape(dims)
        variables[key] = (array, dtype_id)
        pos += size
    aliases = {string(): string() for _ in range(take("I"))}
    if pos != len(data):
        raise damaged(f"{len(data) - pos} bytes after the last entry")
    unknown = sorted(target for target in aliases.values() if target not in variables)
    if unknown:
        raise damaged(f"aliases point at missing variables {unknown[:3]}")
    variables.update({alias: variables[target] for alias, target in aliases.items()})  # ctranslate2 stores equal tensors once
    return {key: _to_float(array, dtype_id) for key, (array, dtype_id) in variables.items()}


def _to_float(array, dtype_id):
    """float32 values of a stored array (float16 and bfloat16 widen exactly); integer scalars stay as they are."""
    if dtype_id == BFLOAT16_ID:
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32) if array.dtype == np.float16 else array


def _layer_count(variables, prefix):
    return len({m.group(1) for k in variables if (m := re.match(rf"{prefix}/layer_(\d+)/", k))})


def _vocabulary(folder):
    """The token strings of vocabulary.txt (or vocabulary.json), indexed by id; empty when the folder has neither."""
    folder = Path(folder)
    if (folder / "vocabulary.json").is_file():
        return json.loads((folder / "vocabulary.json").read_text())
    if (folder / "vocabulary.txt").is_file():
        return (folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    return []


def whisper_config(variables, vocabulary=()):
    """The `WhisperConfig` whose model has exactly these CTranslate2 variables (sizes read off the tensors)."""
    from transformers import WhisperConfig

    positions_encoder = variables["encoder/position_encodings/encodings"].shape
    embeddings = variables["decoder/embeddings/weight"].shape
    token = {t: i for i, t in enumerate(vocabulary)}.get
    end, start = token("<|endoftext|>"), token("<|startoftranscript|>")
    special = {"decoder_start_token_id": start} if start is not None else {}  # an int field: WhisperConfig's default
    return WhisperConfig(
        vocab_size=embeddings[0],
        num_mel_bins=variables["encoder/conv1/weight"].shape[1],
        d_model=positions_encoder[1],
        encoder_layers=_layer_count(variables, "encoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_layers=_layer_count(variables, "decoder"),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=positions_encoder[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        bos_token_id=end,
        eos_token_id=end,
        pad_token_id=end,
        **special,
    )


def whisper_state_dict(variables, config) -> dict[str, torch.Tensor]:
    """transformers `WhisperForConditionalGeneration` weights from CTranslate2 variables: fused q/k/v split back."""
    state, d = {}, config.d_model

    def put(target, source):
        state[target] = torch.tensor(variables[source])  # a copy: aliased variables share memory

    def linear(target, source):
        put(f"{target}.weight", f"{source}/weight")
        put(f"{target}.bias", f"{source}/bias")

    def norm(target, source):
        put(f"{target}.weight", f"{source}/gamma")
        put(f"{target}.bias", f"{source}/beta")

    def split(target_names, source):
        # ctranslate2's fuse_linear concatenates q, k, v along the output rows; k_proj has no bias (its slice is zero)
        weight, bias = variables[f"{source}/weight"], variables[f"{source}/bias"]
        for i, target in enumerate(target_names):
            state[f"{target}.weight"] = torch.tensor(weight[i * d : (i + 1) * d])
            if not target.endswith("k_proj"):
                state[f"{target}.bias"] = torch.tensor(bias[i * d : (i + 1) * d])

    for side, layers in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        stack = f"model.{side}"
        put(f"{stack}.embed_positions.weight", f"{side}/position_encodings/encodings")
        norm(f"{stack}.layer_norm", f"{side}/layer_norm")
        for i in range(layers):
            ours, theirs = f"{stack}.layers.{i}", f"{side}/layer_{i}"
            split([f"{ours}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")], f"{theirs}/self_attention/linear_0")
            linear(f"{ours}.self_attn.out_proj", f"{theirs}/self_attention/linear_1")
            norm(f"{ours}.self_attn_layer_norm", f"{theirs}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{ours}.encoder_attn.q_proj", f"{theirs}/attention/linear_0")
                split([f"{ours}.encoder_attn.{p}" for p in ("k_proj", "v_proj")], f"{theirs}/attention/linear_1")
                linear(f"{ours}.encoder_attn.out_proj", f"{theirs}/attention/linear_2")
                norm(f"{ours}.encoder_attn_layer_norm", f"{theirs}/attention/layer_norm")
            linear(f"{ours}.fc1", f"{theirs}/ffn/linear_0")
            linear(f"{ours}.fc2", f"{theirs}/ffn/linear_1")
            norm(f"{ours}.final_layer_norm", f"{theirs}/ffn/layer_norm")
    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    put("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")
    return state


def convert_ctranslate2_whisper(source: str | os.PathLike, output_dir: str | os.PathLike, parts: list[Path] | None = None) -> Path:
    """Write the CTranslate2 Whisper model in `source` (or its `parts`) to `output_dir` as a transformers checkpoint."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    parts = parts or model_bin_parts(source)
    if not parts:
        raise FileNotFoundError(f"{source} has no model.bin (or model.bin.part1, ...): pass a faster-whisper model folder")
    variables = read_model_bin(parts)
    config = whisper_config(variables, _vocabulary(source))
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    state = whisper_state_dict(variables, config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to the token embeddings, as in CTranslate2's alias
    if missing or unexpected:
        raise ValueError(f"{source}: the Whisper weights do not map onto transformers' (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(output_dir)
    return output_dir


def _content_key(parts):
    digest = hashlib.sha256()
    for part in parts:
        with open(part, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def conversion_cache_dir() -> Path:
    """Where converted checkpoints are kept: `$ATR_CACHE`, else `$HF_HOME/atr/` (huggingface_hub's HF_HOME)."""
    from huggingface_hub import constants

    return Path(os.environ.get("ATR_CACHE") or Path(constants.HF_HOME) / "atr") / "whisper-from-ctranslate2"


def converted_whisper(source: str | os.PathLike, parts: list[Path] | None = None) -> Path:
    """A transformers checkpoint of the CTranslate2 Whisper model, converted on first use and reused (keyed by content)."""
    parts = parts or model_bin_parts(source)
    target = conversion_cache_dir() / _content_key(parts)
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("converting the CTranslate2 Whisper model in %s to a transformers checkpoint in %s (once)", source, target)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
    try:
        convert_ctranslate2_whisper(source, staging, parts)
        try:
            os.replace(staging, target)  # atomic: a killed conversion never leaves a half-written target
        except OSError:  # another process finished first: its copy is the same content
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> None:
    """`atr-convert-whisper SOURCE OUTPUT_DIR`: write a faster-whisper folder as a transformers Whisper checkpoint."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="atr-convert-whisper", description=main.__doc__.split(": ", 1)[1])
    parser.add_argument("source", help="a faster-whisper / CTranslate2 Whisper folder (model.bin, or model.bin.part1, .part2, ...)")
    parser.add_argument("output_dir", help="a new folder for the transformers checkpoint (config, weights, feature extractor)")
    args = parser.parse_args(argv)
    if Path(args.output_dir).exists() and any(Path(args.output_dir).iterdir()):
        parser.exit(2, f"atr-convert-whisper: {args.output_dir} is not empty: pass a new folder\n")
    if not is_ctranslate2_whisper(args.source):
        parser.exit(2, f"atr-convert-whisper: {args.source} is not a CTranslate2 Whisper folder: pass a faster-whisper model folder\n")
    try:
        convert_ctranslate2_whisper(args.source, args.output_dir)
    except ValueError as error:
        parser.exit(2, f"atr-convert-whisper: {error}\n")
    print(f"wrote {args.output_dir}: load it with WhisperModel.from_pretrained or train.py --audio_backbone", file=sys.stderr)


if __name__ == "__main__":
    main()


__all__ = ["convert_ctranslate2_whisper", "converted_whisper", "is_ctranslate2_whisper", "model_bin_parts", "read_model_bin"]
