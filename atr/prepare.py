"""Download public datasets that have no loadable Hub copy and lay them out as audiofolders: `python -m atr.prepare clotho OUT_DIR`.

`fsd50k` writes FSD50K's evaluation set as `test/` (`file_name`, `labels`) for zero-shot evaluation.

The result is what `atr.data.load_audio_text_dataset(OUT_DIR, split)` reads: `train/`, `validation/` and `test/`, each
with the audio files and a `metadata.csv` (`file_name`, `caption_1` ... `caption_5`). Downloads go to
`OUT_DIR/.downloads/`, resume where an interrupted run stopped, and are checked against the publisher's MD5 sums;
`OUT_DIR/prepared.json` marks a finished folder, which is never overwritten. See docs/data.md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
DOWNLOADS = ".downloads"
FINISHED = "prepared.json"
# Clotho v2.1 on Zenodo (record 4783391); MD5 sums as published with the record (also in Labbeti/aac-datasets,
# src/aac_datasets/datasets/functional/clotho.py). The `development` set is the usual training split, `evaluation` the test.
CLOTHO_URL = "https://zenodo.org/records/4783391/files/{name}?download=1"
CLOTHO_MD5 = {
    "clotho_audio_development.7z": "c8b05bc7acdb13895bb3c6a29608667e",
    "clotho_audio_validation.7z": "7dba730be08bada48bd15dc4e668df59",
    "clotho_audio_evaluation.7z": "4569624ccadf96223f19cb59fe4f849f",
    "clotho_captions_development.csv": "d4090b39ce9f2491908eebf4d5b09bae",
    "clotho_captions_validation.csv": "5879e023032b22a2c930aaa0528bead4",
    "clotho_captions_evaluation.csv": "1b16b9e57cf7bdb7f13a13802aeb57e2",
}
CLOTHO_SPLITS = {"train": "development", "validation": "validation", "test": "evaluation"}
# FSD50K's evaluation set from its Hub copy (raw WAVs + the official labels/eval.csv: fname, labels, mids).
FSD50K_REPO = "Fhrozen/FSD50k"
FSD50K_FILES = ["clips/eval/*.wav", "labels/eval.csv"]
CLOTHO_CAPTIONS = tuple(f"caption_{i}" for i in range(1, 6))
# 7z of 16-bit WAV saves little: the extracted audio is taken as 1.5x the archives until the exact size is known.
EXTRACT_RATIO = 1.5


@dataclass(frozen=True)
class RemoteFile:
    """One file to download: where from and its MD5 sum."""

    name: str
    url: str
    md5: str


@dataclass(frozen=True)
class Recipe:
    """A dataset to prepare: its files and, per output split, (archive, captions CSV, folder inside the archive)."""

    name: str
    files: tuple[RemoteFile, ...]
    splits: dict = field(default_factory=dict)


def clotho_recipe(url_template: str = CLOTHO_URL, checksums: dict | None = None) -> Recipe:
    """Clotho v2.1: three 7z audio archives and three caption CSVs (file_name, caption_1..caption_5)."""
    checksums = checksums or CLOTHO_MD5
    files = tuple(RemoteFile(name, url_template.format(name=name), md5) for name, md5 in checksums.items())
    splits = {split: (f"clotho_audio_{part}.7z", f"clotho_captions_{part}.csv", part) for split, part in CLOTHO_SPLITS.items()}
    return Recipe("clotho", files, splits)




def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _remote_size(url: str) -> int | None:
    """The size of a URL's content in bytes (file:// or an HTTP HEAD's Content-Length), None when unknown."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return os.path.getsize(urllib.request.url2pathname(parsed.path))
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60) as response:
            length = response.headers.get("Content-Length")
    except OSError as error:  # URLError, HTTPError, a timeout
        raise _download_failed(url, error) from error
    return int(length) if length else None


def _download_failed(source: str, error: Exception) -> OSError:
    """The one-line error of a download that could not start or finish: what failed and what to do."""
    reason = getattr(error, "reason", None) or (str(error).splitlines() or [type(error).__name__])[0]
    return OSError(f"downloading {source} failed ({reason}): check the network connection (or proxy) and run the same "
                   "command again; finished downloads are kept and a partial one resumes")


def _open_source(url: str, offset: int):
    """(readable stream starting at `offset`, whether it really starts there) for a file:// or HTTP(S) URL."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        handle = open(urllib.request.url2pathname(parsed.path), "rb")
        handle.seek(offset)
        return handle, True
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
    except OSError as error:
        raise _download_failed(url, error) from error
    return response, offset == 0 or response.status == 206


def download(remote: RemoteFile, folder: Path) -> Path:
    """Download `remote` into `folder` (resuming a `.part` file), check its MD5 and return the finished path."""
    final = folder / remote.name
    if final.is_file():
        return final
    part = folder / f"{remote.name}.part"
    offset = part.stat().st_size if part.is_file() else 0
    source, resumed = _open_source(remote.url, offset)
    with source:
        if offset and resumed:
            logger.info("resuming %s at %d bytes", remote.name, offset)
        elif offset:
            logger.info("the server of %s does not resume downloads: starting it again", remote.name)
        else:
            logger.info("downloading %s", remote.url)
        with open(part, "ab" if resumed else "wb") as target:
            try:
                for block in iter(lambda: source.read(CHUNK_BYTES), b""):
                    target.write(block)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:  # the connection broke mid-file
                raise _download_failed(remote.url, error) from error
    found = _md5(part)
    if found != remote.md5:
        part.unlink()
        raise ValueError(
            f"downloaded {remote.name} has MD5 {found}, expected {remote.md5}: the file was removed. Run the command "
            f"again to download it afresh; if it fails again the file at {remote.url} changed, so report it"
        )
    part.rename(final)
    return final


def disk_needed(recipe: Recipe, downloads: Path) -> tuple[int, int]:
    """(bytes still to download, bytes the extracted audio is expected to take) for `recipe`."""
    to_download = extracted = 0
    for remote in recipe.files:
        final, part = downloads / remote.name, downloads / f"{remote.name}.part"
        size = final.stat().st_size if final.is_file() else _remote_size(remote.url) or 0
        if not final.is_file():
            to_download += size - (part.stat().st_size if part.is_file() else 0)
        if remote.name.endswith(".7z"):
            extracted += int(size * EXTRACT_RATIO)
    return to_download, extracted


def _check_free(folder: Path, needed: int, what: str):
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(f"{what} needs {needed / 1e9:.1f} GB free on {folder}, but only {free / 1e9:.1f} GB are free: "
                      "free some space or pass another OUT_DIR")


def _extract(archive: Path, target: Path):
    """Extract a 7z archive into `target`, after checking there is room for its uncompressed size."""
    try:
        import py7zr
    except ImportError as error:
        raise ImportError("extracting 7z archives needs py7zr: pip install 'atr[prepare]' (or pip install py7zr)") from error

    target.mkdir(parents=True)
    with py7zr.SevenZipFile(archive) as seven_zip:
        _check_free(target, seven_zip.archiveinfo().uncompressed, f"extracting {archive.name}")
        seven_zip.extractall(path=target)


def _write_split(recipe: Recipe, split: str, downloads: Path, out: Path) -> int:
    """Extract one split's audio into `out/split` and write its metadata.csv; returns the number of clips."""
    archive, captions_csv, inner = recipe.splits[split]
    staging = out / f".{split}.extract"
    shutil.rmtree(staging, ignore_errors=True)
    _extract(downloads / archive, staging)
    audio_dir = staging / inner
    if not audio_dir.is_dir():
        raise ValueError(f"{archive} has no {inner}/ folder (found {sorted(p.name for p in staging.iterdir())}): "
                         "the archive is not the expected release")
    with open(downloads / captions_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for index, row in enumerate(rows):
        captions = [(row.get(column) or "").strip() for column in CLOTHO_CAPTIONS]
        if not all(captions):
            raise ValueError(f"{captions_csv} row {index} ({row.get('file_name')!r}) has {sum(map(bool, captions))} of 5 captions")
        if not (audio_dir / row["file_name"]).is_file():
            raise ValueError(f"{captions_csv} row {index} names {row['file_name']!r}, which {archive} does not hold")
    split_dir = out / split
    shutil.rmtree(split_dir, ignore_errors=True)
    audio_dir.rename(split_dir)
    shutil.rmtree(staging)
    with open(split_dir / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", *CLOTHO_CAPTIONS])
        writer.writerows([row["file_name"], *(row[c].strip() for c in CLOTHO_CAPTIONS)] for row in rows)
    return len(rows)


def _start(out_dir, name: str) -> Path:
    """The output folder with its downloads folder; refuses a finished folder or a non-empty one atr.prepare did not start."""
    out = Path(out_dir)
    if (out / FINISHED).exists():
        raise FileExistsError(f"{out} already holds a prepared {name} ({out / FINISHED}): use it as it is, or "
                              "delete the folder to prepare it again")
    if out.is_dir() and any(out.iterdir()) and not (out / DOWNLOADS).is_dir():
        raise FileExistsError(f"{out} is not empty and was not started by atr.prepare: choose an empty or new OUT_DIR")
    (out / DOWNLOADS).mkdir(parents=True, exist_ok=True)
    return out


def _finish(out: Path, name: str, counts: dict, keep_downloads: bool, **provenance) -> Path:
    if not keep_downloads:
        shutil.rmtree(out / DOWNLOADS)
    (out / FINISHED).write_text(json.dumps({"dataset": name, "clips": counts, **provenance}, indent=2) + "\n")
    logger.info("prepared %s in %s: %s", name, out, counts)
    return out


def prepare(recipe: Recipe, out_dir: str | os.PathLike, keep_downloads: bool = False) -> Path:
    """Download, verify, extract and lay out `recipe` in `out_dir`; refuses a finished or foreign non-empty folder."""
    out = _start(out_dir, recipe.name)
    downloads = out / DOWNLOADS
    to_download, extracted = disk_needed(recipe, downloads)
    logger.info("%s needs about %.1f GB on %s: %.1f GB still to download, about %.1f GB of extracted audio",
                recipe.name, (to_download + extracted) / 1e9, out, to_download / 1e9, extracted / 1e9)
    _check_free(out, to_download + extracted, f"preparing {recipe.name}")
    for remote in recipe.files:
        download(remote, downloads)
    counts = {split: _write_split(recipe, split, downloads, out) for split in recipe.splits}
    return _finish(out, recipe.name, counts, keep_downloads, md5={r.name: r.md5 for r in recipe.files},
                   sources=[r.url for r in recipe.files])


def prepare_fsd50k(out_dir: str | os.PathLike, keep_downloads: bool = False, repo_id: str = FSD50K_REPO) -> Path:
    """FSD50K's evaluation set (multi-label, 200 classes) as `out_dir/test/` with `file_name` and `labels` ("A,B")."""
    from huggingface_hub import snapshot_download

    out = _start(out_dir, "fsd50k")
    downloads = out / DOWNLOADS
    # huggingface_hub resumes interrupted files and checks each against the Hub's hash
    fetch = dict(repo_id=repo_id, repo_type="dataset", allow_patterns=FSD50K_FILES, local_dir=downloads)
    from huggingface_hub.errors import HfHubHTTPError

    try:
        needed = sum(f.file_size or 0 for f in snapshot_download(**fetch, dry_run=True) if f.will_download)
        logger.info("fsd50k needs about %.1f GB on %s (downloaded clips are moved, not copied)", needed / 1e9, out)
        _check_free(out, needed, "preparing fsd50k")
        snapshot_download(**fetch)
    except (HfHubHTTPError, ValueError, OSError) as error:  # offline (LocalEntryNotFoundError), a Hub error, a broken connection
        if isinstance(error, OSError) and "free on" in str(error):
            raise
        raise _download_failed(f"dataset {repo_id} from the Hugging Face Hub", error) from error
    with open(downloads / "labels" / "eval.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    split_dir = out / "test"
    split_dir.mkdir(exist_ok=True)
    for index, row in enumerate(rows):
        name, source = f"{row['fname']}.wav", downloads / "clips" / "eval" / f"{row['fname']}.wav"
        if not source.is_file() and not (split_dir / name).is_file():
            raise ValueError(f"labels/eval.csv row {index} names clip {row['fname']}, which {repo_id} did not provide")
        if source.is_file():
            source.replace(split_dir / name)
    with open(split_dir / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "labels"])
        writer.writerows([f"{row['fname']}.wav", row["labels"]] for row in rows)
    return _finish(out, "fsd50k", {"test": len(rows)}, keep_downloads, source=f"https://huggingface.co/datasets/{repo_id}")


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (`--keep_downloads` also as `--keep-downloads`)."""
    from .cli_errors import both_spellings, one_line_errors

    parser = argparse.ArgumentParser(prog="python -m atr.prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["clotho", "fsd50k"])
    parser.add_argument("out_dir", metavar="OUT_DIR", help="Folder to write (new or empty; an interrupted run's folder resumes).")
    parser.add_argument("--keep_downloads", action="store_true", help="Keep the archives in OUT_DIR/.downloads.")
    return one_line_errors(both_spellings(parser))


def main(argv: list[str] | None = None) -> None:
    """The command line: `python -m atr.prepare {clotho,fsd50k} OUT_DIR [--keep_downloads]`."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.dataset == "fsd50k":
        prepare_fsd50k(args.out_dir, keep_downloads=args.keep_downloads)
    else:
        prepare(clotho_recipe(), args.out_dir, keep_downloads=args.keep_downloads)


if __name__ == "__main__":
    import sys

    from .cli_errors import run_cli

    sys.exit(run_cli("python -m atr.prepare", main))  # a user error: status 2 and one line (ATR_DEBUG=1: traceback)
