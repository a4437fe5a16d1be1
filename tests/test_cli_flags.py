"""The command lines as a user meets them: both flag spellings, short help, one-line flag errors, CLI names in messages."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from atr import prepare
from atr.cli_errors import run_cli
from atr.search import cli
from atr.search.index import SearchResult

ROOT = Path(__file__).resolve().parents[1]
from atr.cli import evaluate as evaluate_script  # noqa: E402  (evaluate.py's code)
from atr.cli import train  # noqa: E402  (train.py's code)


def parsers():
    """Every argparse parser of atr's command lines, by name."""
    return {"evaluate.py": evaluate_script.build_parser(), "python -m atr.prepare": prepare.build_parser(),
            **{f"atr-search {name}".strip(): build() for name, build in cli.PARSERS.items()}}


@pytest.mark.parametrize("name", ["evaluate.py", "python -m atr.prepare", "atr-search", "atr-search build",
                                  "atr-search serve", "atr-search space", "atr-search export"])
def test_every_flag_takes_both_spellings(name):
    parser = parsers()[name]
    flags = {flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")}
    for flag in flags:
        other = "--" + (flag[2:].replace("_", "-") if "_" in flag else flag[2:].replace("-", "_"))
        assert other in flags, f"{name}: {flag} has no {other}"


def test_the_other_spelling_parses_to_the_same_setting():
    args = cli.search_parser().parse_args(["a dog", "--audio_dir", "x", "--skip-bad-audio", "--batch_size", "2", "--top_k", "3"])
    assert (args.audio_dir, args.skip_bad_audio, args.batch_size, args.top_k) == ("x", True, 2, 3)
    args = evaluate_script.build_parser().parse_args(["--skip-bad-audio", "--output-dir", "o", "--no-progress"])
    assert (args.skip_bad_audio, args.output_dir, args.no_progress) == (True, "o", True)
    assert prepare.build_parser().parse_args(["clotho", "d", "--keep-downloads"]).keep_downloads
    (_, data_args, _, training_args), _ = train.parse_settings(["--skip-bad-audio", "--max-steps", "3"])
    assert data_args.skip_bad_audio and training_args.max_steps == 3


def test_messages_use_the_flags_not_the_api_arguments(capsys):
    def fails(argv):
        raise ValueError("audio file x.wav cannot be read: remove it or load the dataset with skip_bad_audio=True")

    assert run_cli("evaluate.py", fails, []) == 2
    err = capsys.readouterr().err
    assert "--skip-bad-audio" in err and "skip_bad_audio=True" not in err

    def conflicts(argv):
        raise ValueError("index at 'i' was built with another model: use another out_dir, or overwrite=True to rebuild it "
                         "(or pass skip_bad_audio=True / --skip_bad_audio to leave it out)")

    assert run_cli("atr-search", conflicts, [], names={"out_dir": "--index-dir"}) == 2
    err = capsys.readouterr().err
    assert "use another --index-dir, or --overwrite to rebuild" in err and "pass --skip-bad-audio to leave" in err, err


def test_train_help_starts_with_a_description_and_config_then_atr_groups(capsys):
    with pytest.raises(SystemExit):
        train.parse_settings(["--help"])
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert len(lines[0]) < 120 and "--config" in lines[0]  # a short usage line, not every flag
    description = text.split("\n\n")[1]
    assert "Train" in description and len(description.splitlines()) <= 6
    first_option = next(line.strip() for line in lines if line.strip().startswith("--"))
    assert first_option.startswith("--config")
    positions = [text.index(flag) for flag in ("--config", "--audio_backbone", "--dataset ", "--hp_search", "--learning_rate")]
    assert positions == sorted(positions), positions


def test_a_misspelled_train_flag_is_one_line_with_the_closest_flag(capsys):
    with pytest.raises(SystemExit) as stopped:
        train.parse_settings(["--lerning_rate", "1e-4"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lerning_rate" in err[0] and "--learning_rate" in err[0], err


def test_prepare_offline_says_the_download_failed_in_one_line(tmp_path):
    env = {**os.environ, "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "no_proxy": "", "ATR_DEBUG": ""}
    result = subprocess.run([sys.executable, "-m", "atr.prepare", "clotho", str(tmp_path / "c")], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "download" in errors[0] and "zenodo.org" in errors[0] and "again" in errors[0], result.stderr


def test_serve_help_documents_host_and_port_and_no_false_default(capsys):
    text = cli.PARSERS["serve"]().format_help()
    assert "default: <audio-dir>/.atr-index" not in text
    for flag in ("--host", "--port"):
        assert text.split(flag, 1)[1].split("\n  --", 1)[0].strip().split(None, 1)[-1], f"{flag} has no help"
    assert "7860" in text and "127.0.0.1" in text


def test_a_plain_text_hit_stays_on_one_line(capsys):
    hit = SearchResult(path="two\nlines\t.wav", score=0.5, index=0, start=0.0, end=1.0)
    cli.print_hits("q", [hit], as_json=False)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and '"two\\nlines\\t.wav"' in out


def test_a_symlink_loop_is_skipped_with_a_warning(tmp_path, caplog):
    from atr.search.sources import collect_items

    sf.write(tmp_path / "good.wav", np.zeros(160, np.float32), 16000)
    (tmp_path / "loop.wav").symlink_to(tmp_path / "loop.wav")
    with caplog.at_level(logging.WARNING):
        source = collect_items(str(tmp_path))
    assert [item["name"] for item in source.items] == ["good.wav"]
    assert any("loop.wav" in record.getMessage() for record in caplog.records)


def test_a_silent_clip_warns_that_its_scores_mean_nothing(caplog):
    from transformers.utils import logging as hf_logging

    from atr import AtrFeatureExtractor

    extractor = AtrFeatureExtractor(backbone="whisper", sampling_rate=16000, window_s=1.0, feature_size=8)
    logging.Logger.warning_once.cache_clear()  # said once per process: an earlier test may have said it
    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            extractor([np.zeros(16000, np.float32)], sampling_rate=16000, return_tensors="np")
    finally:
        hf_logging.disable_propagation()
    assert any("silent throughout" in record.getMessage() for record in caplog.records)
