"""atr.prepare on a tiny Clotho-shaped release served from file:// URLs: layout, resume, checksums, refusals."""

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import py7zr
import pytest
import soundfile as sf

from atr import prepare
from atr.data import load_audio_text_dataset

# Clotho names its files with spaces and punctuation; the layout must keep them readable.
CLIP_NAMES = ["Rain on a roof.wav", "dog, barking twice.wav", "Siren_far 01.wav"]


def make_clotho_release(folder, clips_per_split=3):
    """Write a tiny Clotho v2.1 release (3 7z archives of WAVs + 3 caption CSVs); returns {file name: md5}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for part in prepare.CLOTHO_SPLITS.values():
        audio_dir = folder / "src" / part
        audio_dir.mkdir(parents=True)
        rows = []
        for index in range(clips_per_split):
            name = CLIP_NAMES[index % len(CLIP_NAMES)].replace(".wav", f" {index}.wav")
            sf.write(audio_dir / name, (0.1 * rng.standard_normal(44100)).astype(np.float32), 44100)
            rows.append([name] + [f"{part} clip {index} caption {k}" for k in range(1, 6)])
        with py7zr.SevenZipFile(folder / f"clotho_audio_{part}.7z", "w") as archive:
            archive.writeall(audio_dir, arcname=part)
        with open(folder / f"clotho_captions_{part}.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([["file_name", *prepare.CLOTHO_CAPTIONS], *rows])
    return {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in prepare.CLOTHO_MD5}


@pytest.fixture()
def release(tmp_path):
    """(recipe served from file:// URLs, release folder)."""
    folder = tmp_path / "zenodo"
    checksums = make_clotho_release(folder)
    return prepare.clotho_recipe(url_template=folder.as_uri() + "/{name}", checksums=checksums), folder


def test_prepares_an_audiofolder_the_loader_reads(tmp_path, release, caplog):
    recipe, _ = release
    with caplog.at_level("INFO", logger="atr.prepare"):
        out = prepare.prepare(recipe, tmp_path / "clotho")
    assert any("needs about" in r.getMessage() and "GB" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in out.iterdir()) == ["prepared.json", "test", "train", "validation"]
    assert json.loads((out / "prepared.json").read_text())["clips"] == {"train": 3, "validation": 3, "test": 3}
    for split, part in prepare.CLOTHO_SPLITS.items():
        dataset = load_audio_text_dataset(out, split)
        assert len(dataset) == 3
        assert dataset[1]["captions"] == [f"{part} clip 1 caption {k}" for k in range(1, 6)]
        assert dataset[1]["audio"]["path"].endswith("dog, barking twice 1.wav")


def test_interrupted_download_resumes_where_it_stopped(tmp_path, release, monkeypatch, caplog):
    recipe, _ = release
    monkeypatch.setattr(prepare, "CHUNK_BYTES", 1024)
    real_open = prepare._open_source

    class Dropped:
        """A stream that breaks after its first block, like a dropped connection."""

        def __init__(self, stream):
            self.stream, self.reads = stream, 0

        def read(self, size):
            self.reads += 1
            if self.reads > 1:
                raise ConnectionResetError("connection dropped")
            return self.stream.read(size)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()

    monkeypatch.setattr(prepare, "_open_source", lambda url, offset: (Dropped(real_open(url, offset)[0]), True))
    with pytest.raises(OSError, match="connection dropped.*run the same command again"):  # one line for the CLI
        prepare.prepare(recipe, tmp_path / "clotho")
    first = recipe.files[0].name
    part = tmp_path / "clotho" / ".downloads" / f"{first}.part"
    assert part.stat().st_size == 1024
    monkeypatch.setattr(prepare, "_open_source", real_open)
    with caplog.at_level("INFO", logger="atr.prepare"):
        out = prepare.prepare(recipe, tmp_path / "clotho")
    assert f"resuming {first} at 1024 bytes" in caplog.text
    assert len(load_audio_text_dataset(out, "train")) == 3


def test_checksum_mismatch_is_refused_and_the_file_removed(tmp_path, release):
    recipe, folder = release
    with open(folder / "clotho_captions_validation.csv", "a") as handle:
        handle.write("tampered.wav,a,b,c,d,e\n")
    with pytest.raises(ValueError, match=r"clotho_captions_validation.csv has MD5 \w+, expected \w+"):
        prepare.prepare(recipe, tmp_path / "clotho")
    downloads = tmp_path / "clotho" / ".downloads"
    assert not any(p.name.startswith("clotho_captions_validation") for p in downloads.iterdir())
    assert not (tmp_path / "clotho" / "prepared.json").exists()


def test_finished_and_foreign_folders_are_never_overwritten(tmp_path, release):
    recipe, _ = release
    out = prepare.prepare(recipe, tmp_path / "clotho")
    before = (out / "train" / "metadata.csv").read_text()
    with pytest.raises(FileExistsError, match="already holds a prepared clotho"):
        prepare.prepare(recipe, out)
    assert (out / "train" / "metadata.csv").read_text() == before
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty and was not started by atr.prepare"):
        prepare.prepare(recipe, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_not_enough_disk_is_said_before_downloading(tmp_path, release, monkeypatch):
    recipe, _ = release
    monkeypatch.setattr(prepare.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 10})())
    with pytest.raises(OSError, match=r"preparing clotho needs 0\.0 GB free on .*, but only 0\.0 GB are free"):
        prepare.prepare(recipe, tmp_path / "clotho")
    assert not any((tmp_path / "clotho" / ".downloads").iterdir())


def test_command_line_names_the_datasets(capsys):
    with pytest.raises(SystemExit):
        prepare.main(["--help"])
    assert "clotho" in capsys.readouterr().out


def fake_fsd50k_hub(calls, labels=("Electric_guitar,Guitar", "Bird_vocalization,Bird")):
    """A stand-in for huggingface_hub.snapshot_download serving Fhrozen/FSD50k's layout: clips/eval/<fname>.wav, labels/eval.csv."""
    import huggingface_hub

    def snapshot_download(repo_id, repo_type, allow_patterns, local_dir, dry_run=False):
        calls.append((repo_id, repo_type, tuple(allow_patterns), dry_run))
        if dry_run:
            return [huggingface_hub.file_download.DryRunFileInfo("0" * 40, 1000, "labels/eval.csv", "", False, True)]
        rng = np.random.default_rng(0)
        (Path(local_dir) / "clips" / "eval").mkdir(parents=True)
        (Path(local_dir) / "labels").mkdir()
        lines = ["fname,labels,mids"]
        for index, label in enumerate(labels):
            fname = 865 + index
            sf.write(Path(local_dir) / "clips" / "eval" / f"{fname}.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32), 44100)
            lines.append(f'{fname},"{label}",/m/0')
        (Path(local_dir) / "labels" / "eval.csv").write_text("\n".join(lines) + "\n")
        return str(local_dir)

    return snapshot_download


def test_fsd50k_eval_set_becomes_a_zero_shot_test_split(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_fsd50k_hub(calls))
    out = prepare.prepare_fsd50k(tmp_path / "fsd50k")
    assert [c[:2] for c in calls] == [("Fhrozen/FSD50k", "dataset")] * 2 and calls[0][3] and not calls[1][3]
    dataset = load_audio_text_dataset(out, "test", caption_columns="labels")
    assert dataset["labels"] == ["Electric_guitar,Guitar", "Bird_vocalization,Bird"]
    assert dataset[1]["audio"]["path"].endswith("test/866.wav")
    with pytest.raises(FileExistsError):
        prepare.prepare_fsd50k(out)
