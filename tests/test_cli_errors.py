"""A user error on the command line exits with status 2 and one line naming the input: no traceback (ATR_DEBUG=1 shows it)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "configs" / "tiny.yaml")


def cases(tmp, tiny_text):
    """(argv after the interpreter, text the message must hold) per user error."""
    (tmp / "audio").mkdir()
    sf.write(tmp / "audio" / "good.wav", np.zeros(1600, np.float32), 16000)
    (tmp / "audio" / "bad.wav").write_bytes(b"not audio")
    (tmp / "manifest.csv").write_text("file_name,caption\naudio/good.wav,a dog\naudio/bad.wav,a bell\n")
    (tmp / "a-file").write_text("")
    train = ["train.py", "--config", TINY, "--text_backbone", tiny_text, "--output_dir", str(tmp / "out"), "--max_steps", "1"]
    search = ["-m", "atr.search"]
    (tmp / "done").mkdir()
    (tmp / "done" / "results.json").write_text("{}")
    return {
        "train: misspelled flag": ([*train, "--lerning_rate", "1e-4"], "--learning_rate"),
        "train: unknown model_config key": ([*train, "--model_config", '{"lamda_l1": 0.5}'], "'lamda_l1'"),
        "train: missing dataset folder": ([*train, "--dataset", str(tmp / "no-such-folder")], "no-such-folder"),
        "train: corrupt audio file": ([*train, "--dataset", str(tmp / "manifest.csv")], "bad.wav"),
        "search: missing audio folder": ([*search, "a dog", "--audio-dir", str(tmp / "nowhere"), "--model", "m"], "nowhere' does not exist"),
        "search: index-dir is a file": ([*search, "build", "--audio-dir", str(tmp / "audio"), "--index-dir", str(tmp / "a-file"),
                                         "--model", "m"], "a-file"),
        "search: model that cannot load": ([*search, "serve", "--index-dir", str(tmp / "idx"), "--model", str(tmp / "no-model")],
                                           "no-model"),
        "search: misspelled flag": ([*search, "build", "--audio-dri", str(tmp / "audio")], "--audio-dir"),
        "evaluate: missing --compare file": (["evaluate.py", "--compare", str(tmp / "a.json"), str(tmp / "b.json")], "a.json"),
        "evaluate: results already there": (["evaluate.py", "--model", "m", "--output-dir", str(tmp / "done")], "--overwrite"),
        "evaluate: misspelled flag": (["evaluate.py", "--skip_bad_audoi"], "--skip_bad_audio"),
        "prepare: a folder it did not start": (["-m", "atr.prepare", "clotho", str(tmp / "audio")], "not empty"),
    }


NAMES = ["train: unknown model_config key", "train: missing dataset folder", "train: corrupt audio file",
         "search: missing audio folder", "search: index-dir is a file", "search: model that cannot load",
         "train: misspelled flag", "search: misspelled flag", "evaluate: missing --compare file", "evaluate: results already there",
         "evaluate: misspelled flag", "prepare: a folder it did not start"]


@pytest.mark.parametrize("name", NAMES)
def test_a_user_error_exits_2_with_one_line(name, tmp_path, tiny_text):
    argv, named = cases(tmp_path, tiny_text)[name]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ATR_DEBUG": ""}
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and named in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and named in errors[0], result.stderr[-2000:]
