"""The web page of `atr-search serve` and of a written Space (Gradio): search by text or by example, listen to the hits.

Each hit shows its score, path, the matched chunk's span, the waveform with the span marked, and an audio player
whose source carries a media fragment (`#t=start,end`), so it plays the hit from its span.
"""

from __future__ import annotations

import html
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np
import soundfile as sf

if TYPE_CHECKING:
    import gradio as gr

    from .index import AudioIndex
    from .results import SearchResult

WAVE_POINTS = 240  # columns of the waveform drawing
# Sessions whose page state Gradio keeps (each holds a copy of the page's config and its last result list, ~50 KB+):
# Gradio's default of 10,000 let the server grow by that much per visitor. The page keeps no state of its own
# between requests, so an evicted session loses nothing.
SESSIONS = 64
UPLOADS_KEPT_S = 3600  # uploaded example clips are deleted this long after upload (checked as often)
CSS = """
.atr-hit { border: 1px solid #ddd; border-radius: 8px; padding: 8px 12px; margin: 6px 0; }
.atr-hit svg { width: 100%; height: 48px; display: block; }
.atr-hit audio { width: 100%; }
.atr-span { color: #b5179e; font-weight: 600; }
"""


@lru_cache(maxsize=512)
def waveform_envelope(path, points=WAVE_POINTS):
    """Peak envelope (points,) in [0, 1] of an audio file and its duration in seconds; None if it cannot be read."""
    try:
        wave, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception:  # an unreadable or non-file item still gets its row, without a drawing
        return None
    wave = np.abs(wave).max(axis=1)
    edges = np.linspace(0, len(wave), points + 1).astype(int)
    peaks = np.array([wave[a:b].max() if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:])])
    return peaks / max(float(peaks.max()), 1e-9), len(wave) / rate


def waveform_svg(path: str, spans: list[list[float]]) -> str:
    """An inline SVG of the file's waveform with the matched spans shaded."""
    drawn = waveform_envelope(path)
    if drawn is None:
        return ""
    peaks, duration = drawn
    x = np.arange(len(peaks))
    top = " ".join(f"{i},{24 - 22 * p:.1f}" for i, p in zip(x, peaks))
    bottom = " ".join(f"{i},{24 + 22 * p:.1f}" for i, p in zip(x[::-1], peaks[::-1]))
    scale = len(peaks) / max(duration, 1e-9)
    marks = "".join(
        f'<rect class="atr-mark" x="{a * scale:.1f}" y="0" width="{max((b - a) * scale, 1):.1f}" height="48" fill="#b5179e" fill-opacity="0.25"/>'
        for a, b in spans
    )
    return (f'<svg viewBox="0 0 {len(peaks)} 48" preserveAspectRatio="none">{marks}'
            f'<polygon points="{top} {bottom}" fill="#4361ee"/></svg>')


def render_hits(hits: list[SearchResult], query: str = "") -> str:
    """The result list as HTML: one block per hit with score, path, span, waveform and a player starting at the span."""
    opening = f'<div id="atr-results" data-query="{html.escape(query)}">'
    if not hits:
        return opening + "<p>No results.</p></div>"
    rows = []
    for rank, hit in enumerate(hits, 1):
        span = f"{hit.start:.2f}&ndash;{hit.end:.2f} s"
        source = f"/gradio_api/file={quote(hit.path)}#t={hit.start:.3f},{hit.end:.3f}"
        rows.append(
            f'<div class="atr-hit" data-name="{html.escape(hit.name)}" data-start="{hit.start:.3f}" data-end="{hit.end:.3f}">'
            f'<div>{rank}. <b class="atr-name">{html.escape(hit.name)}</b> &middot; score <span class="atr-score">{hit.score:.4f}</span>'
            f' &middot; <span class="atr-span">{span}</span></div>'
            f'{waveform_svg(hit.path, hit.spans)}'
            f'<audio controls preload="metadata" src="{html.escape(source)}"></audio></div>'
        )
    return opening + "".join(rows) + "</div>"


def build_demo(index: AudioIndex, title: str = "atr: search recordings by sound") -> gr.Blocks:
    """The Gradio page over a loaded `AudioIndex` (with its model): text box, example clip, result list."""
    import gradio as gr

    def by_text(query, k, chunks):
        query = (query or "").strip()
        return render_hits(index.search(query, k=int(k), chunks=chunks), query) if query else render_hits([])

    def by_example(clip, k, chunks):
        return render_hits(index.search_audio(clip, k=int(k), chunks=chunks)) if clip else render_hits([])

    with gr.Blocks(title=title, delete_cache=(UPLOADS_KEPT_S, UPLOADS_KEPT_S)) as demo:
        gr.Markdown(f"## {title}\n{len(index)} recordings. Type a description (results update as you type), "
                    "or upload / record a clip to find recordings that sound like it. Each player starts at the matched span.")
        with gr.Row():
            query = gr.Textbox(label="Describe a sound", placeholder="a dog barks while a siren passes", elem_id="atr-query", scale=4)
            k = gr.Slider(1, 50, value=10, step=1, label="Results", scale=1)
            chunks = gr.Checkbox(label="Rank chunks (one recording can appear at several times)", scale=1)
        example = gr.Audio(sources=["upload", "microphone"], type="filepath", label="...or find sounds like this clip")
        results = gr.HTML(render_hits([]), elem_id="atr-results-box", js_on_load=None)
        for event in (query.submit, query.change):
            event(by_text, [query, k, chunks], results, trigger_mode="always_last", show_progress="hidden")
        example.change(by_example, [example, k, chunks], results)
    return demo


def served_paths(index: AudioIndex) -> list[str]:
    """What the page may serve: each indexed recording's resolved path, if it is a file inside the indexed folder.

    A root the user passed (`audio_root`, `--audio-dir`) is trusted as it is; a root read from the manifest only for
    the recordings found there as indexed (size and mtime_ns), so an edited manifest cannot name other files.
    """
    paths = set()
    for row, path in enumerate(index.items):
        resolved = Path(path).resolve()
        if (index.root is None or resolved.is_relative_to(index.root)) and (index.unchanged(row) or (index.root_given and resolved.is_file())):
            paths.add(str(resolved))
    return sorted(paths)


def launch_options(index: AudioIndex) -> dict:
    """`launch()` arguments: serve exactly the indexed recordings, never the index folder; keep few sessions' state."""
    served, out = served_paths(index), index.out_dir.resolve()
    # The allowlist already leaves the index's files out; blocking its folder too is a second lock, unless the
    # recordings were indexed into their own folder (--index-dir = --audio-dir), where it would block them all.
    blocked = [] if any(Path(path).is_relative_to(out) for path in served) else [str(out)]
    return {"allowed_paths": served, "blocked_paths": blocked, "css": CSS, "state_session_capacity": SESSIONS}


def serve(index: AudioIndex, host: str = "127.0.0.1", port: int = 7860, **launch_kwargs) -> None:
    """Start the page on host:port and block (Ctrl-C stops it)."""
    build_demo(index).launch(server_name=host, server_port=port, **{**launch_options(index), **launch_kwargs})
