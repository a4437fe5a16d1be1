"""The index and its page against hostile or damaged folders: the page serves only the indexed recordings, a manifest
cannot point outside its folder, a manifest that disagrees with its shards or cannot be read is refused in one line,
and the model fingerprint does not depend on where the model was loaded from."""

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
import torch

from atr import search
from atr.search import AudioIndex, BadIndexError, model_fingerprint
from atr.search import index as search_index
from tests.test_search import model_and_processor, model_dir  # noqa: F401 (fixtures)
from tests.test_search_update import write_folder

ROOT = Path(__file__).resolve().parents[1]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}


def run_cli(*argv, timeout=300):
    """`python -m atr.search ARGV` in a subprocess: (returncode, stdout, stderr)."""
    result = subprocess.run([sys.executable, "-m", "atr.search", *argv], capture_output=True, text=True, env=env(), cwd=ROOT, timeout=timeout)
    return result.returncode, result.stdout, result.stderr


def edit_manifest(out, change):
    """Apply `change` to the parsed manifest.json of index folder `out` and write it back."""
    path = Path(out) / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def assert_one_line_refusal(code, err, *words):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("atr-search:")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]


# ---- 1. the page serves exactly the indexed recordings ---------------------------------------------------------


def status(port, path):
    """HTTP status of GET /gradio_api/file=PATH on the local page (the path sent as a browser would)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/file={quote(str(path))}", timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_page_file_route_serves_indexed_recordings_only(tmp_path, model_and_processor, model_dir):
    pytest.importorskip("gradio", reason="the web page needs gradio: pip install 'atr[search]'")
    from tests.test_search_app import free_port, start, stop

    model, processor = model_and_processor
    folder = write_folder(tmp_path / "audio", ["a.wav", "b.wav", "sub/c.wav"])
    (folder / ".env").write_text("SECRET=hunter2\n")
    (folder / "notes.txt").write_text("private notes\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_text("[remote]\n")
    (folder / "stray.wav").write_bytes((folder / "a.wav").read_bytes())  # audio, but added after the build: not indexed
    index_dir = folder / ".atr-index"
    AudioIndex.build(model, processor, folder, index_dir, progress=False)
    (folder / "stray.wav").touch()
    shard = next(index_dir.glob("shard-*.safetensors"))

    port = free_port()
    server = start([sys.executable, "-m", "atr.search", "serve", "--index-dir", str(index_dir), "--model", str(model_dir),
                    "--port", str(port)], port)
    try:
        for name in ("a.wav", "b.wav", "sub/c.wav"):
            assert status(port, (folder / name).resolve()) == 200, name
        refused = [folder / ".env", folder / "notes.txt", folder / ".git" / "config", index_dir / "manifest.json", shard,
                   folder / "stray.wav", folder / "sub" / ".." / ".env", "/etc/passwd", folder / ".." / ".." / "etc" / "passwd"]
        for path in refused:
            assert status(port, path) != 200, path
    finally:
        stop(server)


# ---- 2. a manifest cannot point outside its folder ---------------------------------------------------------------


@pytest.fixture
def built(tmp_path, model_and_processor):
    """A folder of four recordings indexed in its own .atr-index, and the index."""
    model, processor = model_and_processor
    folder = write_folder(tmp_path / "audio")
    return folder, AudioIndex.build(model, processor, folder, folder / ".atr-index", shard_size=4, progress=False)


def test_manifest_root_pointing_outside_is_refused_by_load_serve_and_served_paths(built, model_and_processor, model_dir):
    from atr.search.app import served_paths

    model, processor = model_and_processor
    folder, index = built
    out = folder / ".atr-index"
    assert served_paths(index) == sorted(str((folder / n).resolve()) for n in index.names)
    edit_manifest(out, lambda m: m.update(root="../" * 12))
    with pytest.raises(ValueError, match=r"manifest\.json.*root"):
        AudioIndex.load(out, model, processor)
    code, _, err = run_cli("serve", "--index-dir", str(out), "--model", str(model_dir), timeout=150)
    assert_one_line_refusal(code, err, "manifest.json", "root", "--audio-dir")
    # the user names the folder: it is served from there, whatever the manifest says
    reopened = AudioIndex.load(out, model, processor, audio_root=folder)
    assert served_paths(reopened) == served_paths(index)


def test_recording_path_pointing_outside_is_refused_by_load_serve_and_search(built, model_and_processor, model_dir):
    model, processor = model_and_processor
    folder, _ = built
    out = folder / ".atr-index"
    edit_manifest(out, lambda m: m["items"][0].update(name="../" * 12 + "etc/passwd"))
    with pytest.raises(ValueError, match=r"manifest\.json.*etc/passwd"):
        AudioIndex.load(out, model, processor)
    code, _, err = run_cli("serve", "--index-dir", str(out), "--model", str(model_dir), timeout=150)
    assert_one_line_refusal(code, err, "manifest.json", "--overwrite")
    code, out_text, err = run_cli("bell", "--audio-dir", str(folder), "--model", str(model_dir), "--quiet")
    assert_one_line_refusal(code, err, "manifest.json", "--overwrite")
    assert "passwd" not in out_text


def test_edited_root_with_the_folder_given_searches_that_folder(built, model_dir, capsys):
    folder, index = built
    edit_manifest(folder / ".atr-index", lambda m: m.update(root="../" * 12))
    assert search.main(["bell", "--audio-dir", str(folder), "--model", str(model_dir), "--quiet", "--json", "-k", "4"]) == 0
    paths = [json.loads(line)["path"] for line in capsys.readouterr().out.splitlines()]
    assert sorted(paths) == sorted(index.items)


# ---- 4. a manifest that disagrees with its shards, or cannot be read -------------------------------------------------


def test_swapped_shard_rows_are_refused_by_load_and_re_embedded_by_update(built, model_and_processor, monkeypatch):
    model, processor = model_and_processor
    folder, clean = built
    out = folder / ".atr-index"

    def swap(manifest):
        first, second = manifest["items"][0], manifest["items"][1]
        first["shard_row"], second["shard_row"] = second["shard_row"], first["shard_row"]

    edit_manifest(out, swap)
    with pytest.raises(ValueError, match=r"manifest\.json.*shard.*a\.wav"):
        AudioIndex.load(out, model, processor)
    repaired = AudioIndex.update(model, processor, folder, out, progress=False)
    assert sorted(repaired.last_update["embedded"]) == ["a.wav", "b.wav"]
    assert repaired.names == clean.names
    torch.testing.assert_close(repaired.embeddings, clean.embeddings, atol=1e-5, rtol=1e-4)
    for hits, expected in zip(repaired.search(["bell", "a dog bark"], k=4), clean.search(["bell", "a dog bark"], k=4)):
        assert [(h.name, round(h.score, 4)) for h in hits] == [(h.name, round(h.score, 4)) for h in expected]


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],                                       # truncated
    lambda text: "",                                                           # empty
    lambda text: "[1, 2]",                                                     # not an object
    lambda text: text.replace('"items": [', '"items": "x", "was": ['),           # mistyped
    lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "shards"}),  # a key missing
    lambda text: json.dumps({**json.loads(text), "items": [{"name": "a.wav"}]}),            # an item missing its shard
])
def test_malformed_manifest_is_one_line_naming_it_and_the_fix(built, model_dir, capsys, damage):
    folder, _ = built
    path = folder / ".atr-index" / "manifest.json"
    path.write_text(damage(path.read_text()))
    from atr.cli_errors import run_cli as run_main

    for argv in (["bell", "--audio-dir", str(folder), "--model", str(model_dir), "--quiet"],
                 ["serve", "--index-dir", str(folder / ".atr-index"), "--model", str(model_dir)]):
        with pytest.raises(BadIndexError, match=r"manifest\.json.*--overwrite"):  # from Python: one exception
            search.main(argv)
        assert run_main("atr-search", search.main, argv) == 2  # from the command line: status 2, one line
        err = capsys.readouterr().err
        assert_one_line_refusal(2, err, "manifest.json", "--overwrite")
    with pytest.raises(ValueError, match=r"manifest\.json"):
        AudioIndex.load(folder / ".atr-index")


def test_truncated_manifest_exits_2_in_one_line_without_traceback(built, model_dir):
    folder, _ = built
    path = folder / ".atr-index" / "manifest.json"
    path.write_text(path.read_text()[:200])
    code, _, err = run_cli("bell", "--audio-dir", str(folder), "--model", str(model_dir), "--quiet")
    assert_one_line_refusal(code, err, "manifest.json", "--overwrite")
    # --overwrite is the fix it names
    code, out_text, err = run_cli("bell", "--audio-dir", str(folder), "--model", str(model_dir), "--quiet", "--overwrite")
    assert code == 0 and len(out_text.splitlines()) == 4, err


# ---- 5. the fingerprint is the model's, not its path's ------------------------------------------------------------


def test_same_model_from_another_path_reuses_the_index(tmp_path, model_dir, monkeypatch):
    from transformers import AutoModel, AutoProcessor

    folder = write_folder(tmp_path / "audio")
    model, processor = AutoModel.from_pretrained(model_dir), AutoProcessor.from_pretrained(model_dir)
    AudioIndex.build(model, processor, folder, tmp_path / "index", progress=False)
    copy = shutil.copytree(model_dir, tmp_path / "elsewhere" / "model-copy")
    monkeypatch.chdir(tmp_path / "elsewhere")
    fingerprint = model_fingerprint(model, processor)
    for path in (str(model_dir) + "/", "model-copy", "./model-copy/", os.path.relpath(model_dir)):
        other, other_processor = AutoModel.from_pretrained(path), AutoProcessor.from_pretrained(path)
        assert other.name_or_path != model.name_or_path or path.endswith("/")
        assert model_fingerprint(other, other_processor) == fingerprint, path
        index = AudioIndex.update(other, other_processor, folder, tmp_path / "index", progress=False)
        assert index.last_update["embedded"] == [], path
    # the CLI too: nothing re-embedded, no --overwrite asked for
    monkeypatch.setattr(search_index, "decode_audio", lambda *a: pytest.fail("the index was re-embedded"))
    assert search.main(["bell", "--audio-dir", str(folder), "--index-dir", str(tmp_path / "index"), "--model", str(copy), "--quiet"]) == 0
    # a change that alters embeddings still counts as another model
    changed = AutoModel.from_pretrained(copy)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert model_fingerprint(changed, processor) != fingerprint


# ---- 6. a build killed with SIGKILL resumes to the clean build's index -------------------------------------------

KILL_AT_4TH_FILE = """
import os, signal, sys
from atr.search import index as search_index
from atr.search.cli import main

real, calls = search_index.decode_audio, []

def decode(source, rate):
    calls.append(source)
    if len(calls) == 4:  # inside the second shard: the first is finished and named by the manifest
        os.kill(os.getpid(), signal.SIGKILL)
    return real(source, rate)

search_index.decode_audio = decode
sys.exit(main(sys.argv[1:]))
"""


def test_build_killed_with_sigkill_resumes_to_the_clean_build(tmp_path, model_and_processor, model_dir):
    from tests.test_search_update import same_index

    model, processor = model_and_processor
    folder = write_folder(tmp_path / "audio", [f"x{i}.wav" for i in range(6)])
    clean = AudioIndex.build(model, processor, folder, tmp_path / "clean", shard_size=2, progress=False)
    script = tmp_path / "kill.py"
    script.write_text(KILL_AT_4TH_FILE)
    argv = ["build", "--audio-dir", str(folder), "--model", str(model_dir), "--index-dir", str(tmp_path / "index"),
            "--shard-size", "2", "--quiet"]
    killed = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, env=env(), cwd=ROOT, timeout=300)
    assert killed.returncode == -9, killed.stderr
    code, _, err = run_cli(*argv)
    assert code == 0, err
    resumed = AudioIndex.load(tmp_path / "index", model, processor)
    same_index(resumed, clean)
    assert resumed.search("bell", k=6)[0].name == clean.search("bell", k=6)[0].name
