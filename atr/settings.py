"""train.py's settings: a YAML file gives the defaults, command-line flags override them, JSON blocks merge key by key.

`--model_config`, `--feature_extractor_config` and `--audio_config_overrides` update the YAML's block of the same name
one key at a time (`null` clears the block); every key, in the file or on the command line, must be a real setting, and
a misspelled one is refused with the closest valid names.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from transformers import HfArgumentParser

JSON_BLOCKS = ("model_config", "feature_extractor_config", "audio_config_overrides")
UNSET = "(unset)"


def _suggest(key, valid) -> str:
    """' (did you mean 'a' or 'b'?)' for the valid names closest to `key`, else ''."""
    close = difflib.get_close_matches(key, sorted(valid), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(name) for name in close)}?)" if close else ""


def _refuse_unknown(keys, valid, where, fix):
    """Raise naming every key of `keys` not in `valid`, each with its closest valid names."""
    unknown = [key for key in keys if key not in valid]
    if unknown:
        named = "; ".join(f"{key!r}{_suggest(key, valid)}" for key in unknown)
        raise ValueError(f"{where} has unknown settings: {named}. {fix}")


def block_keys(block: str) -> set[str]:
    """The settings a JSON block may hold: AtrConfig fields, AtrFeatureExtractor arguments, audio config fields of any family."""
    from .backbones_atr import AUDIO_BACKBONES
    from .configuration_atr import AtrConfig
    from .feature_extraction_atr import AtrFeatureExtractor

    if block == "model_config":
        return {f.name for f in dataclasses.fields(AtrConfig)} - {"audio_config", "text_config"}
    if block == "feature_extractor_config":
        return set(inspect.signature(AtrFeatureExtractor.__init__).parameters) - {"self", "kwargs"}
    # the backbone is only known once loaded: a key of any registered audio config family is accepted
    return {f.name for spec in AUDIO_BACKBONES.values() if spec.config_class for f in dataclasses.fields(spec.config_class)}


def read_config(path: str | os.PathLike, known: set[str]) -> dict:
    """A YAML config's settings (nested blocks as JSON strings, as the flags take them); unknown names are refused."""
    values = yaml.safe_load(Path(path).read_text()) or {}
    _refuse_unknown(values, known, f"config file {path}", "Check the spelling against `python train.py --help`.")
    # Nested settings travel as JSON strings so that the CLI can override them too.
    values = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in values.items()}
    if values.get("short_clip_config"):  # a path beside the config file
        values["short_clip_config"] = str(Path(path).parent / values["short_clip_config"])
    return values


def _load_block(flag, value):
    """A JSON block's dict (None for null or unset); a value that is not a JSON object is refused naming the flag."""
    if value is None or isinstance(value, dict):
        return value
    try:
        loaded = json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"--{flag} {value!r} is not valid JSON ({error}): pass an object, e.g. '{{\"key\": 1}}'") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"--{flag} {value!r} is not a JSON object: pass one, e.g. '{{\"key\": 1}}', or null")
    return loaded


def merge_blocks(config_values: dict, namespace: argparse.Namespace) -> None:
    """Update each JSON block of `namespace` (the parsed flags) with the file's block underneath, key by key; check keys."""
    for block in JSON_BLOCKS:
        if not hasattr(namespace, block):
            continue
        from_file = _load_block(block, config_values.get(block))
        given = getattr(namespace, block)
        if given != config_values.get(block):  # the flag was given: it updates the file's block, null clears it
            flag = _load_block(block, given)
            merged = None if flag is None else {**(from_file or {}), **flag}
        else:
            merged = from_file
        if merged:
            _refuse_unknown(merged, block_keys(block), f"--{block}", f"Fix the key on the command line or under {block}: in the config file.")
        setattr(namespace, block, None if merged is None else json.dumps(merged))


def _flatten(values) -> dict:
    """Settings as name -> value, each JSON block spread into `block.key` entries."""
    flat = {}
    for name, value in values.items():
        if name in JSON_BLOCKS:
            flat.update({f"{name}.{key}": v for key, v in (_load_block(name, value) or {}).items()})
        else:
            flat[name] = value
    return flat


def parse_with_config(parser: HfArgumentParser, config_path: str | os.PathLike | None, argv: list[str] | None) -> tuple[tuple, list[str]]:
    """(the parser's dataclasses from `config_path` + `argv`, the 'name: file -> effective' lines of every setting that differs)."""
    config_values = {}
    if config_path:
        config_values = read_config(config_path, {action.dest for action in parser._actions})
        parser.set_defaults(**config_values)
    defaults = parser.parse_args([])
    merge_blocks(config_values, defaults)
    namespace = parser.parse_args(argv)
    merge_blocks(config_values, namespace)
    before, after = _flatten(vars(defaults)), _flatten(vars(namespace))
    changes = [f"{name}: {before.get(name, UNSET)} -> {after.get(name, UNSET)}"
               for name in sorted(set(before) | set(after)) if before.get(name, UNSET) != after.get(name, UNSET)]
    return parser.parse_dict(vars(namespace)), changes
