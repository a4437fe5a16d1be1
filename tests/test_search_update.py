"""The index over time and under stress: incremental updates, moved folders, bad and hidden files, damaged shards,
concurrent builds, per-query spans, ranking chunks, query by example, and no remote code from a manifest."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch

from atr import search
from atr.search import AudioIndex
from atr.search import index as search_index
from tests.test_search import RATE, model_and_processor, model_dir  # noqa: F401 (fixtures)


def tone(seconds, freq, rate=16000, seed=0):
    """A sine at freq Hz with a little noise."""
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * np.random.default_rng(seed).standard_normal(t.size)).astype(np.float32)


def write_folder(folder, names=("a.wav", "b.wav", "c.wav", "sub/d.wav")):
    """Short 16 kHz recordings, one tone each."""
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(folder / name, tone(0.5 + 0.3 * i, 250 + 200 * i, seed=i), 16000)
    return folder


def same_index(a, b):
    """Two indexes hold the same recordings with the same pooled and chunk embeddings and spans."""
    assert a.names == b.names
    torch.testing.assert_close(a.embeddings, b.embeddings, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.chunk_embeddings.float(), b.chunk_embeddings.float(), atol=2e-3, rtol=0)
    assert torch.equal(a.chunk_offsets, b.chunk_offsets)
    np.testing.assert_allclose(a.chunk_spans, b.chunk_spans)


def test_update_embeds_exactly_the_added_changed_files_and_equals_a_fresh_build(tmp_path, model_and_processor, monkeypatch):
    model, processor = model_and_processor
    folder = write_folder(tmp_path / "audio")
    AudioIndex.build(model, processor, folder, tmp_path / "index", shard_size=2, progress=False)

    sf.write(folder / "new.wav", tone(0.9, 900), 16000)  # added
    (folder / "b.wav").unlink()  # removed
    sf.write(folder / "c.wav", tone(1.2, 1200), 16000)  # modified (size and mtime change)
    decoded = []
    real = search_index.decode_audio
    monkeypatch.setattr(search_index, "decode_audio", lambda s, r: decoded.append(os.path.basename(s)) or real(s, r))
    updated = AudioIndex.update(model, processor, folder, tmp_path / "index", shard_size=2, progress=False)
    assert sorted(decoded) == ["c.wav", "new.wav"]
    assert sorted(updated.last_update["embedded"]) == ["c.wav", "new.wav"]
    assert updated.last_update["removed"] == ["b.wav"] and updated.last_update["kept"] == 2

    fresh = AudioIndex.build(model, processor, folder, tmp_path / "fresh", progress=False)
    same_index(updated, fresh)
    same_index(AudioIndex.load(tmp_path / "index", model, processor), fresh)
    shards = json.loads((tmp_path / "index" / "manifest.json").read_text())["shards"]
    assert sorted(p.name for p in (tmp_path / "index").glob("shard-*")) == sorted(shards)  # emptied shards deleted


def test_rewritten_file_with_same_size_is_embedded_again(tmp_path, model_and_processor):
    model, processor = model_and_processor
    folder = write_folder(tmp_path / "audio", ["a.wav"])
    first = AudioIndex.build(model, processor, folder, tmp_path / "index", progress=False)
    sf.write(folder / "a.wav", tone(0.5, 3000), 16000)  # same length, so same size: only mtime_ns tells
    os.utime(folder / "a.wav", ns=(1, os.stat(folder / "a.wav").st_mtime_ns + 10**9))
    second = AudioIndex.update(model, processor, folder, tmp_path / "index", progress=False)
    assert second.last_update["embedded"] == ["a.wav"]
    assert not torch.allclose(first.embeddings, second.embeddings)


def test_moved_folder_is_not_embedded_again(tmp_path, model_and_processor):
    model, processor = model_and_processor
    folder = write_folder(tmp_path / "audio")
    AudioIndex.build(model, processor, folder, folder / ".atr-index", progress=False)
    moved = tmp_path / "elsewhere" / "audio"
    moved.parent.mkdir()
    shutil.move(folder, moved)  # a rename keeps mtimes
    reopened = AudioIndex.load(moved / ".atr-index", model, processor)
    assert reopened.items == [str(moved.resolve() / n) for n in reopened.names]
    assert AudioIndex.update(model, processor, moved, moved / ".atr-index", progress=False).last_update["embedded"] == []


def test_hidden_and_appledouble_files_are_ignored_bad_audio_is_named_or_skipped(tmp_path, model_and_processor, model_dir, capsys):
    model, processor = model_and_processor
    folder = write_folder(tmp_path / "audio", ["a.wav", "b.wav"])
    (folder / "._a.wav").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    (folder / ".hidden").mkdir()
    sf.write(folder / ".hidden" / "x.wav", tone(0.5, 500), 16000)
    index = AudioIndex.build(model, processor, folder, tmp_path / "index", progress=False)
    assert index.names == ["a.wav", "b.wav"]

    (folder / "broken.wav").write_bytes(b"RIFF not really a wave file")
    with pytest.raises(ValueError, match=r"could not decode audio file .*broken\.wav.*--skip_bad_audio"):
        AudioIndex.update(model, processor, folder, tmp_path / "index", progress=False)
    index = AudioIndex.update(model, processor, folder, tmp_path / "index", skip_bad_audio=True, progress=False)
    assert index.names == ["a.wav", "b.wav"] and [s["name"] for s in index.skipped] == ["broken.wav"]
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert [s["name"] for s in manifest["skipped"]] == ["broken.wav"] and "could not decode" in manifest["skipped"][0]["error"]

    argv = ["bell", "--audio-dir", str(folder), "--index-dir", str(tmp_path / "cli"), "--model", str(model_dir), "--quiet", "--skip_bad_audio"]
    assert search.main(argv) == 0
    assert "skipped broken.wav: could not decode" in capsys.readouterr().err


def test_damaged_shard_is_named_by_load_and_rebuilt_by_update(tmp_path, model_and_processor):
    model, processor = model_and_processor
    folder = write_folder(tmp_path / "audio")
    out = tmp_path / "index"
    built = AudioIndex.build(model, processor, folder, out, shard_size=2, progress=False)
    shards = sorted(json.loads((out / "manifest.json").read_text())["shards"])
    (out / shards[1]).write_bytes((out / shards[1]).read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=rf"index shard .*{shards[1]}.* is damaged"):
        AudioIndex.load(out, model, processor)
    shutil.copy(out / shards[0], out / shards[1])  # a readable shard, but of other recordings and sizes
    with pytest.raises(ValueError, match=rf"index shard .*{shards[1]}.* is damaged: .*manifest expects"):
        AudioIndex.load(out, model, processor)
    repaired = AudioIndex.update(model, processor, folder, out, shard_size=2, progress=False)
    assert len(repaired.last_update["embedded"]) == 2
    same_index(repaired, built)


def test_two_builds_of_one_folder_at_once_leave_a_complete_correct_index(tmp_path, model_and_processor, model_dir):
    model, processor = model_and_processor
    folder = write_folder(tmp_path / "audio", [f"x{i}.wav" for i in range(6)])
    argv = ["build", "--audio-dir", str(folder), "--model", str(model_dir), "--index-dir", str(tmp_path / "index"), "--quiet"]
    runs = [subprocess.Popen([sys.executable, "-m", "atr.search", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    errors = []
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
        errors.append(err)
    # the lock makes them take turns: one embeds the folder, the other finds it done
    assert sorted("embedded 6," in err for err in errors) == [False, True]
    same_index(AudioIndex.load(tmp_path / "index", model, processor),
               AudioIndex.build(model, processor, folder, tmp_path / "fresh", progress=False))
    assert not list((tmp_path / "index").glob("*.tmp"))


def test_two_event_recording_gives_each_query_its_own_span(tmp_path, model_and_processor):
    model, processor = model_and_processor
    folder = tmp_path / "audio"
    folder.mkdir()
    low, high = tone(0.8, 300), tone(0.8, 2500, seed=1)
    # low tone 0-0.8 s, 2 s of silence (dropped by the chunking), high tone 2.8-3.6 s
    sf.write(folder / "scene.wav", np.concatenate([low, np.zeros(32000, np.float32), high]), 16000)
    sf.write(folder / "other.wav", tone(1.0, 1000, seed=2), 16000)
    sf.write(tmp_path / "low.wav", low, 16000)
    sf.write(tmp_path / "high.wav", high, 16000)
    index = AudioIndex.build(model, processor, folder, tmp_path / "index", progress=False)
    # query by example with each event alone: the scene's hit names the chunk holding that event
    by_low, by_high = (next(h for h in hits if h.name == "scene.wav")
                       for hits in index.search_audio([str(tmp_path / "low.wav"), str(tmp_path / "high.wav")], k=2))
    assert (by_low.start, by_low.end) != (by_high.start, by_high.end)
    assert by_low.start < 0.8 and by_low.end > 0.0  # overlaps the low tone
    assert by_high.start < 3.6 and by_high.end > 2.8  # overlaps the high tone


def test_chunks_rank_several_spans_of_one_long_recording_and_example_finds_itself(tmp_path, model_and_processor, model_dir, capsys):
    model, processor = model_and_processor
    folder = write_folder(tmp_path / "audio", ["a.wav", "b.wav"])
    sf.write(folder / "long.wav", np.concatenate([tone(1.0, f, seed=f) for f in (400, 800, 1600, 3200)]), 16000)
    index = AudioIndex.build(model, processor, folder, tmp_path / "index", progress=False)
    hits = index.search("a dog bark", k=int(index.chunk_offsets[-1]), chunks=True)
    spans = [(h.start, h.end) for h in hits if h.name == "long.wav"]
    assert len(spans) == 4 and len(set(spans)) == 4  # every chunk of the long recording, each at its own time
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    first = index.search_audio(str(folder / "b.wav"), k=3)[0]
    assert first.name == "b.wav" and first.score == pytest.approx(1.0, abs=1e-4)
    argv = ["--query-audio", str(folder / "long.wav"), "--audio-dir", str(folder), "--index-dir", str(tmp_path / "index"),
            "--model", str(model_dir), "--json", "--quiet", "--chunks", "-k", "4"]
    assert search.main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4 and rows[0]["name"] == "long.wav"


def test_a_manifest_naming_a_non_atr_model_runs_no_remote_code_without_the_flag(tmp_path, model_and_processor):
    model, processor = model_and_processor
    folder = write_folder(tmp_path / "audio", ["a.wav"])
    out = folder / ".atr-index"
    AudioIndex.build(model, processor, folder, out, progress=False)
    # a "downloaded" model folder whose code would leave a marker if it ever ran
    evil = tmp_path / "evil-model"
    evil.mkdir()
    marker = tmp_path / "remote-code-ran"
    (evil / "configuration_evil.py").write_text(textwrap.dedent(f"""
        open({str(marker)!r}, "w").write("ran")
        from transformers import PretrainedConfig
        class EvilConfig(PretrainedConfig):
            model_type = "evil"
    """))
    (evil / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {
        "AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "configuration_evil.EvilConfig"}}))
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "model": str(evil)}))
    with pytest.raises(ValueError, match=r"not an atr model .* it was not run\. Pass --trust_remote_code"):
        search.main(["a dog bark", "--audio-dir", str(folder), "--quiet"])
    assert not marker.exists()
