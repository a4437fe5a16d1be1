"""`atr-search space OUT_DIR --model REPO`: write a Hugging Face Space (Gradio) that serves the search page for a model.

Hub widgets do not run custom-code models, so a pushed atr model's interactive demo is a Space. The Space holds
`app.py`, `requirements.txt`, a README with the Space metadata (fields as in https://huggingface.co/docs/hub/spaces-config-reference),
a copy of the `atr` package (it is not on PyPI) and a small example index over a few recordings.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from ..loading import load_model
from .index import AudioIndex
from .manifest import BadIndexError
from .sources import collect_items

if TYPE_CHECKING:
    import gradio as gr

APP = '''"""Search recordings by sound with {model!r}: the page of `atr-search serve`, as a Hugging Face Space."""

from pathlib import Path

from atr.search.space import space_demo

HERE = Path(__file__).parent
demo, launch_kwargs = space_demo({model!r}, HERE / "audio", HERE / "index", trust_remote_code={trust!r})

if __name__ == "__main__":
    demo.launch(**launch_kwargs)
'''

README = """---
title: {title}
emoji: 🔊
colorFrom: indigo
colorTo: pink
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
models:
- {model}
---

# Search recordings by sound with [{model}](https://huggingface.co/{model})

Type a description or upload a clip: the page ranks the recordings in `audio/` with the model and plays each hit from
the span that matched. Written by `atr-search space`. Add recordings to `audio/`; the index in `index/` is brought up
to date when the Space starts (only new or changed files are embedded). Audio files need Git LFS when pushed.
"""


def _requirements():
    """The installed atr's own dependencies (not its extras) plus gradio."""
    wanted = [r for r in importlib.metadata.requires("atr") or [] if "extra ==" not in r]
    import gradio

    return "\n".join(wanted + [f"gradio=={gradio.__version__}"]) + "\n"


def example_recordings(folder: Path, count: int = 4, seed: int = 0, sampling_rate: int = 16000) -> None:
    """A few synthetic scenes (atr.synthetic) as wav files, named after their captions' events."""
    from ..synthetic import synthesize_clip

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        clip = synthesize_clip(rng, sampling_rate=sampling_rate, min_duration_s=4.0, max_duration_s=8.0)
        name = "-".join(event["label"] for event in clip["events"])
        sf.write(folder / f"{i:02d}-{name}.wav", clip["array"], sampling_rate)


def write_space(out_dir: str | os.PathLike, model: str, audio_dir: str | os.PathLike | None = None, trust_remote_code: bool = False) -> Path:
    """Write the Space folder: app, requirements, README, the atr package and an example index built with the model."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{str(out_dir)!r} is not empty: choose a new folder for the Space (nothing is overwritten)")
    out_dir.mkdir(parents=True, exist_ok=True)
    package = Path(__file__).resolve().parents[1]
    shutil.copytree(package, out_dir / "atr", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    audio = out_dir / "audio"
    if audio_dir is None:
        example_recordings(audio)
    else:
        source = collect_items(audio_dir)
        for item in source.items:
            (audio / item["name"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source.root / item["name"], audio / item["name"])
    model_obj, processor, _ = load_model(model, trust_remote_code=trust_remote_code)
    AudioIndex.build(model_obj, processor, audio, out_dir / "index", progress=False)
    hub_id = str(model)
    (out_dir / "app.py").write_text(APP.format(model=hub_id, trust=bool(trust_remote_code)))
    (out_dir / "requirements.txt").write_text(_requirements())
    import gradio

    title = re.sub(r"[^A-Za-z0-9 _-]", " ", hub_id.rsplit("/", 1)[-1]).strip()[:30] or "atr search"
    (out_dir / "README.md").write_text(README.format(title=title, gradio_version=gradio.__version__, model=hub_id))
    (out_dir / ".gitattributes").write_text("*.wav filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    return out_dir


def space_demo(model: str | os.PathLike, audio_dir: str | os.PathLike, index_dir: str | os.PathLike,
               trust_remote_code: bool = False) -> tuple[gr.Blocks, dict]:
    """The Space's page and launch arguments: the model, its index brought up to date, the folder it may serve."""
    from .app import build_demo, launch_options

    model_obj, processor, _ = load_model(str(model), trust_remote_code=trust_remote_code)
    try:
        index = AudioIndex.update(model_obj, processor, audio_dir, index_dir, progress=False, skip_bad_audio=True)
    except ValueError as error:
        if "built with another model" not in str(error) and not isinstance(error, BadIndexError):
            raise
        # the model on the Hub changed since the Space was written, or its index is damaged or older: its own small index is rebuilt
        index = AudioIndex.update(model_obj, processor, audio_dir, index_dir, progress=False, skip_bad_audio=True, overwrite=True)
    return build_demo(index), launch_options(index)
