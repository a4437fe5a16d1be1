"""The command lines as a user meets them: both flag spellings, short help, one-line flag errors, CLI names in messages."""

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from atr import prepare
from atr.cli.flags import DatasetArguments, RemoteCodeArguments
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


# ---------------------------------------------------------------- the CLIs in the package, the top-level entry points

def test_the_top_level_scripts_are_thin_entry_points():
    for script in ("train.py", "evaluate.py"):
        lines = (ROOT / script).read_text().splitlines()
        assert len(lines) < 40, f"{script} has {len(lines)} lines: its code belongs in atr/cli/"


def check_help(text, starts, first_flag):
    """A short usage line, then one paragraph that starts with `starts`, and `first_flag` as the first option listed."""
    usage, description = text.split("\n\n")[:2]
    assert len(usage.splitlines()) == 1 and len(usage) < 120, usage
    assert description.startswith(starts) and len(description.splitlines()) <= 6, description
    options = text.split("\n\n", 2)[2]
    first_option = next(line.strip() for line in options.splitlines() if line.strip().startswith("--"))
    assert first_option.startswith(first_flag), first_option


@pytest.mark.parametrize("script, starts, first_flag", [("train.py", "Train", "--config"), ("evaluate.py", "Evaluate", "--model")])
def test_each_top_level_script_helps_with_a_description_then_its_first_flag(script, starts, first_flag):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: {script} ")
    check_help(result.stdout.removeprefix("usage: "), starts, first_flag)


@pytest.mark.parametrize("command, module, starts, first_flag", [
    ("atr-train", train, "Train", "--config"), ("atr-evaluate", evaluate_script, "Evaluate", "--model"),
])
def test_each_console_script_exists_and_helps_with_a_description_then_its_first_flag(command, module, starts, first_flag,
                                                                                    capsys, monkeypatch):
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[command] == f"{module.__name__}:cli" and {"atr-search", "atr-convert-whisper"} <= set(scripts)
    monkeypatch.setattr(sys, "argv", [command, "--help"])
    with pytest.raises(SystemExit) as stopped:
        module.cli()  # what the installed command runs
    assert stopped.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {command} ")
    check_help(text.removeprefix("usage: "), starts, first_flag)


def test_the_data_flags_are_defined_once_and_both_commands_take_them():
    shared = {f.name: f for f in dataclasses.fields(DatasetArguments)} | {f.name: f for f in dataclasses.fields(RemoteCodeArguments)}
    parsers = {"train": train.help_ordered_parser(), "evaluate": evaluate_script.build_parser()}
    actions = {name: {action.dest: action for action in parser._actions} for name, parser in parsers.items()}
    # what both commands take: the shared definitions, plus help and the two flags of another meaning
    assert set(actions["train"]) & set(actions["evaluate"]) == set(shared) | {"help", "seed", "output_dir"}
    for name, field in shared.items():
        for command in parsers:
            action = actions[command][name]
            assert (action.default, action.help) == (field.default, field.metadata["help"]), (command, name)
    # a data flag parses the same on both
    argv = ["--dataset", "d.csv", "--caption-columns", "a,b", "--skip_bad_audio", "--group_by", "clip"]
    (_, data_args, _, _), _ = train.parse_settings(argv)
    args = evaluate_script.build_parser().parse_args(argv)
    assert all(getattr(data_args, f.name) == getattr(args, f.name) for f in dataclasses.fields(DatasetArguments))
    assert (data_args.dataset, data_args.caption_columns, data_args.skip_bad_audio) == ("d.csv", "a,b", True)


def test_another_audio_backbone_is_warned_that_the_config_keeps_its_encoder_depth():
    def warning(*flags):
        (model_args, *_), changes = train.parse_settings(["--config", "configs/pretrained.yaml", *flags])
        return train.kept_depth_warning(model_args, changes)

    message = warning("--audio_backbone", "openai/whisper-base")
    assert "openai/whisper-base" in message and "first 2 encoder layers" in message and "openai/whisper-tiny.en" in message
    assert """--audio_config_overrides '{"encoder_layers": N}'""" in message
    assert warning("--audio_backbone", "openai/whisper-base", "--audio_config_overrides", '{"encoder_layers": 3}') is None
    assert warning() is None and warning("--seed", "3") is None
