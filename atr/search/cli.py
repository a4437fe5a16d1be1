"""`atr-search`: search a folder by text or example (`atr-search QUERY --audio-dir DIR`), or `build`, `serve`, `space`.

    atr-search "a dog barks" --audio-dir recordings/ --model M [-k 10] [--chunks] [--json]
    atr-search --query-audio clip.wav --audio-dir recordings/ --model M
    atr-search build --audio-dir recordings/ --model M [--skip-bad-audio] [--backend ondisk]
    atr-search serve --index-dir recordings/.atr-index [--model M] [--port 7860] [--audio-dir recordings/]
    atr-search space OUT_DIR --model REPO [--audio-dir DIR]
    atr-search export --index-dir DIR --to QDRANT_FOLDER_OR_URL [--collection atr]
    atr-search "a dog barks" --qdrant QDRANT_FOLDER_OR_URL [--model M]      (--backend qdrant)

`--backend` picks the search backend over the pooled embeddings (atr.search.BACKENDS): exact, FAISS flat / pq / hnsw,
ondisk (the IVF-PQ fast-scan index, vectors on disk) or qdrant; `build --backend NAME` builds it ahead of searches.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..cli_errors import both_spellings, one_line_errors
from ..loading import load_model
from .backends import BACKENDS
from .index import AudioIndex
from .manifest import _read_manifest

if TYPE_CHECKING:
    from .results import SearchResult

COMMANDS = ("build", "serve", "space", "export")
BACKEND_HELP = ("the search backend: exact (default), FAISS flat / pq / hnsw, ondisk (IVF-PQ fast scan, vectors on disk: "
                "for collections past RAM) or qdrant (in memory over the index, or the collection of --qdrant)")


def _load(model_id, args, device=None):
    """The model and processor of `model_id` by atr's one loader (remote code only with --trust_remote_code)."""
    model, processor, _ = load_model(model_id, device or args.device, trust_remote_code=args.trust_remote_code)
    return model, processor


def resolve_model_id(model_id: str | None, index_dir: str | Path) -> str:
    """--model, or the id the index recorded (said on stderr; it is loaded without remote code unless the user allows it)."""
    if model_id is not None:
        return model_id
    previous = _read_manifest(index_dir) if Path(index_dir).exists() else None
    if previous is None or not previous["model"]:
        raise SystemExit(f"atr-search: --model is required: no index with a recorded model at {str(index_dir)!r}")
    print(f"atr-search: using the model recorded in {str(Path(index_dir) / 'manifest.json')!r}: {previous['model']!r} "
          "(pass --model to choose another)", file=sys.stderr)
    return previous["model"]


def _common(parser, index_required=False):
    parser.add_argument("--model", help="model folder, Hub id or ONNX export folder; default: the one the index records")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="allow a model that is not an atr model to run its repository's code (off by default)")
    parser.add_argument("--index-dir", required=index_required, help="the index folder (made by `atr-search build`)" if index_required
                        else "where embeddings are stored; default: <audio-dir>/.atr-index")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _build_options(parser, folder_required=True):
    parser.add_argument("--audio-dir", required=folder_required, help="folder of audio files (searched recursively, hidden files ignored)")
    parser.add_argument("--batch-size", type=int, default=8, help="recordings embedded at once")
    parser.add_argument("--shard-size", type=int, default=1024, help="recordings per shard file (an interrupted build resumes from the last one)")
    parser.add_argument("--skip-bad-audio", action="store_true", help="leave unreadable files out (listed in the manifest) instead of stopping")
    parser.add_argument("--overwrite", action="store_true", help="rebuild the index even if it was made with another model")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def search_parser() -> argparse.ArgumentParser:
    """The parser of `atr-search QUERY ... --audio-dir DIR`."""
    parser = argparse.ArgumentParser(
        prog="atr-search", epilog="Other commands: atr-search build | serve | space | export (each with --help).",
        description="Find the recordings in a folder that match a sentence or sound like a clip (embeds new or changed files only).",
    )
    parser.add_argument("queries", nargs="*", help="text queries, e.g. 'a dog barks in the rain'")
    parser.add_argument("--query-audio", action="append", default=[], help="an audio file: find recordings that sound like it (repeatable)")
    _build_options(parser, folder_required=False)
    _common(parser)
    parser.add_argument("--qdrant", help="search a collection written by `atr-search export` (a folder or a URL) instead of --audio-dir")
    parser.add_argument("--collection", default="atr", help="the Qdrant collection (default atr)")
    parser.add_argument("-k", "--top-k", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("--chunks", action="store_true", help="rank chunks, not recordings: a long recording can appear at several times")
    _backend_options(parser)
    parser.add_argument("--nprobe", type=int, help="ondisk: inverted lists scanned per query (default 32)")
    parser.add_argument("--k-factor", type=int, help="pq / ondisk: re-rank the top k * k_factor candidates exactly (default 700 / 50)")
    parser.add_argument("--json", action="store_true", help="print results as JSON lines")
    return finish(parser)


def _backend_options(parser):
    parser.add_argument("--backend", choices=tuple(BACKENDS), default="exact", help=BACKEND_HELP)
    parser.add_argument("--nlist", type=int, help="ondisk, when it is built: inverted lists (default about 4 sqrt(N))")
    parser.add_argument("--pq-m", type=int, help="ondisk, when it is built: PQ sub-quantisers (default the largest divisor of D up to D/8)")


def _options(parser, args, keys, method):
    """The given options among `keys`, refused with one line if the chosen backend's `method` does not take them."""
    given = {key: getattr(args, key) for key in keys if getattr(args, key, None) is not None}
    taken = inspect.signature(getattr(BACKENDS[args.backend], method)).parameters
    for key in given:
        if key not in taken:
            parser.error(f"--{key.replace('_', '-')} does not apply to --backend {args.backend}")
    return given


def finish(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`parser` taking `--a-b` and `--a_b` alike and ending a bad command line with one line."""
    return one_line_errors(both_spellings(parser))


def _index_dir(args):
    """--index-dir, else the folder's own `.atr-index`; a missing --audio-dir or an --index-dir that is a file is refused."""
    if getattr(args, "audio_dir", None) and not Path(args.audio_dir).is_dir():
        what = "is not a folder" if Path(args.audio_dir).exists() else "does not exist"
        raise FileNotFoundError(f"--audio-dir {args.audio_dir!r} {what}: pass the folder that holds your recordings")
    index_dir = Path(args.index_dir) if args.index_dir else Path(args.audio_dir) / ".atr-index"
    if index_dir.exists() and not index_dir.is_dir():
        raise FileExistsError(f"--index-dir {str(index_dir)!r} is a file, not a folder: pass a folder (new or an index's)")
    return index_dir


def _open_index(args):
    """Load the model and bring the folder's index up to date; report what changed and what was skipped."""
    index_dir = _index_dir(args)
    model, processor = _load(resolve_model_id(args.model, index_dir), args)
    index = AudioIndex.update(model, processor, args.audio_dir, index_dir, batch_size=args.batch_size, shard_size=args.shard_size,
                              overwrite=args.overwrite, skip_bad_audio=args.skip_bad_audio, progress=not args.quiet)
    report = index.last_update
    if report["embedded"] or report["removed"]:
        print(f"atr-search: embedded {len(report['embedded'])}, kept {report['kept']}, removed {len(report['removed'])}", file=sys.stderr)
    for item in index.skipped:
        print(f"atr-search: skipped {item['name']}: {item['error']}", file=sys.stderr)
    return index


def print_hits(query: str, hits: list[SearchResult], as_json: bool) -> None:
    """One line per hit: query, rank, score, path and the matched chunk's span (or a JSON object)."""
    for rank, hit in enumerate(hits, 1):
        if as_json:
            print(json.dumps({"query": query, "rank": rank, **hit.__dict__}))
        else:
            print(f"{_field(query)}\t{rank}\t{hit.score:.4f}\t{_field(hit.path)}  [{hit.start:.1f}-{hit.end:.1f} s]")


def _field(text):
    """`text` as it is, or JSON-quoted when a newline, tab or other control character would break the line into fields."""
    return text if text.isprintable() else json.dumps(text)


def _search(argv):
    parser = search_parser()
    args = parser.parse_args(argv)
    if not args.queries and not args.query_audio:
        parser.error("give a text query or --query-audio FILE")
    if args.qdrant:  # the qdrant backend over an exported collection; `--qdrant` alone says --backend qdrant
        if args.backend not in ("exact", "qdrant"):
            parser.error(f"--qdrant searches an exported collection with the qdrant backend, not --backend {args.backend}")
        return _search_qdrant(parser, args)
    if args.audio_dir is None:
        parser.error("give --audio-dir DIR (the recordings to search) or --qdrant TARGET (an exported collection)")
    searched, built = _options(parser, args, ("nprobe", "k_factor"), "search"), _options(parser, args, ("nlist", "pq_m"), "build")
    index = _open_index(args)
    if not args.chunks:  # chunks are ranked exactly; the backend is built with the options given
        index.backend(args.backend, **built)
    options = dict(k=args.top_k, backend=args.backend, chunks=args.chunks, **searched)
    if args.queries:
        for query, hits in zip(args.queries, index.search(args.queries, **options)):
            print_hits(query, hits, args.json)
    if args.query_audio:
        for clip, hits in zip(args.query_audio, index.search_audio(list(args.query_audio), **options)):
            print_hits(clip, hits, args.json)
    return 0


def _search_qdrant(parser, args):
    """Text queries against an exported Qdrant collection, with the model it records unless --model says otherwise."""
    from .vectordb import QdrantIndex

    if args.query_audio:
        parser.error("--query-audio searches an index folder (--audio-dir); with --qdrant, give text queries")
    model_id = args.model or QdrantIndex(args.qdrant, collection=args.collection).info["model"]
    if not model_id:
        raise SystemExit(f"atr-search: --model is required: collection {args.collection!r} records no model")
    model, processor = _load(model_id, args)
    index = QdrantIndex(args.qdrant, model, processor, collection=args.collection)
    for query, hits in zip(args.queries, index.search(args.queries, k=args.top_k, chunks=args.chunks)):
        print_hits(query, hits, args.json)
    return 0


def export_parser() -> argparse.ArgumentParser:
    """The parser of `atr-search export`."""
    parser = argparse.ArgumentParser(prog="atr-search export", description="Write an index (recordings and chunks) to Qdrant.")
    parser.add_argument("--index-dir", required=True, help="the index folder to export")
    parser.add_argument("--to", required=True, help="a folder (Qdrant local mode, no server) or a server URL, http(s)://host:6333")
    parser.add_argument("--collection", default="atr", help="collection name (chunks go to <name>-chunks); default atr")
    parser.add_argument("--overwrite", action="store_true", help="replace collections of that name")
    parser.add_argument("--shard-number", type=int, help="shards of each collection on a Qdrant cluster")
    parser.add_argument("--replication-factor", type=int, help="copies of each shard on a Qdrant cluster")
    return finish(parser)


def _export(argv):
    args = export_parser().parse_args(argv)
    index = AudioIndex.load(args.index_dir)
    index.export(args.to, args.collection, overwrite=args.overwrite, shard_number=args.shard_number,
                 replication_factor=args.replication_factor)
    print(f"atr-search: exported {len(index)} recordings and {len(index.chunk_embeddings)} chunks to collection "
          f"{args.collection!r} at {args.to!r}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of `atr-search build`."""
    parser = argparse.ArgumentParser(
        prog="atr-search build", description="Embed a folder, or bring its index up to date; under `accelerate launch`, "
        "every process embeds its part of the folder (see atr.search.distributed).")
    parser.add_argument("folder", nargs="?", help="folder of audio files (the same as --audio-dir)")
    _build_options(parser, folder_required=False)
    _common(parser)
    _backend_options(parser)
    return finish(parser)


def _build(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    built = _options(parser, args, ("nlist", "pq_m"), "build")
    if (args.folder is None) == (args.audio_dir is None):
        parser.error("give the folder of recordings once: as FOLDER or as --audio-dir")
    args.audio_dir = args.audio_dir or args.folder
    from accelerate import PartialState

    state = PartialState(cpu=args.device == "cpu")  # without cpu=True, CPU processes would each think they are alone
    if state.num_processes == 1:
        index = _open_index(args)
    else:
        from .distributed import build_distributed

        index_dir = _index_dir(args)
        model, processor = _load(resolve_model_id(args.model, index_dir), args, state.device)
        index, report = build_distributed(model, processor, args.audio_dir, index_dir, batch_size=args.batch_size,
                                          shard_size=args.shard_size, overwrite=args.overwrite,
                                          skip_bad_audio=args.skip_bad_audio, progress=not args.quiet and state.is_main_process, state=state)
        print(f"atr-search: rank {state.process_index} of {state.num_processes} embedded {len(report['embedded'])}, "
              f"kept {report['kept']}", file=sys.stderr)
        if not state.is_main_process:
            return 0
    print(f"atr-search: {len(index)} recordings indexed in {str(index.out_dir)!r}", file=sys.stderr)
    if args.backend != "exact":  # built now, so searches find it ready
        index.backend(args.backend, **built)
        print(f"atr-search: the {args.backend} backend is ready", file=sys.stderr)
    return 0


def serve_parser() -> argparse.ArgumentParser:
    """The parser of `atr-search serve`."""
    parser = argparse.ArgumentParser(prog="atr-search serve", description="A local web page to search an index and listen to hits.")
    _common(parser, index_required=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                        "0.0.0.0 lets other machines in)")
    parser.add_argument("--port", type=int, default=7860, help="port of the page (default 7860): open http://HOST:PORT")
    parser.add_argument("--audio-dir", help="the recordings' folder, if the index is not inside it or was moved without it "
                        "(default: the folder the manifest records, checked against the recordings)")
    return finish(parser)


def _serve(argv):
    args = serve_parser().parse_args(argv)
    from .app import serve

    model, processor = _load(resolve_model_id(args.model, args.index_dir), args)
    index = AudioIndex.load(args.index_dir, model, processor, audio_root=args.audio_dir)
    aiff = sum(Path(path).suffix.lower() in (".aif", ".aiff", ".aifc") for path in index.items)
    if aiff:  # the page serves the files as they are; browsers other than Safari have no AIFF decoder
        print(f"atr-search: {aiff} indexed recordings are AIFF, which Chrome and Firefox do not play: their hits are listed, "
              "but only Safari plays them; convert them to WAV or FLAC to listen in any browser", file=sys.stderr)
    serve(index, host=args.host, port=args.port)
    return 0


def space_parser() -> argparse.ArgumentParser:
    """The parser of `atr-search space`."""
    parser = argparse.ArgumentParser(prog="atr-search space", description="Write a Gradio Space that serves the search page for a model.")
    parser.add_argument("out_dir", help="folder to write the Space into (must be empty or new)")
    parser.add_argument("--model", required=True, help="the model's Hub id (the Space loads it) or a local folder")
    parser.add_argument("--audio-dir", help="recordings for the example index (default: a few synthetic scenes)")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow a model that is not an atr model to run its code")
    return finish(parser)


def _space(argv):
    args = space_parser().parse_args(argv)
    from .space import write_space

    print(f"atr-search: wrote a Space to {str(write_space(args.out_dir, args.model, args.audio_dir, args.trust_remote_code))!r}", file=sys.stderr)
    return 0


PARSERS = {"": search_parser, "build": build_parser, "serve": serve_parser, "space": space_parser, "export": export_parser}


def main(argv: list[str] | None = None) -> int:
    """Console entry point `atr-search`: the first word picks build / serve / space / export; otherwise search by text or example.

    From the command line (argv None) a user error exits 2 with one line (atr.cli_errors); called with argv, it raises.
    """
    if argv is None:
        from ..cli_errors import run_cli

        return run_cli("atr-search", main, names={"out_dir": "--index-dir", "AudioIndex.build": "`atr-search build`"})
    argv = list(argv)
    command = {"build": _build, "serve": _serve, "space": _space, "export": _export}.get(argv[0] if argv else None, None)
    return command(argv[1:]) if command else _search(argv)
