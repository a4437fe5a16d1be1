"""The paper-claim studies (benchmarks/study_*.py) on a minimal setting, so that they cannot rot; plus their shared parts."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_bert_config, tiny_tokenizer
from transformers import BertModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _study  # noqa: E402

from atr import AtrFeatureExtractor, AtrModel  # noqa: E402

TINY = str(ROOT / "tests" / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def study_args(tmp_path_factory):
    """Command-line arguments of a minimal study: a tiny study encoder (trained once by train.py, 2 steps), 12 train and 8 test clips."""
    root = tmp_path_factory.mktemp("studies")
    text = root / "tiny-bert"
    torch.manual_seed(0)
    BertModel(tiny_bert_config()).save_pretrained(text)
    tiny_tokenizer().save_pretrained(text)
    args = ["--config", TINY, "--encoder", str(root / "encoder"), "--encoder_steps", "2", "--text_backbone", str(text),
            "--synthetic_sizes", "12,0,8", "--samples_seen", "8", "--batch_size", "4", "--seeds", "0",
            "--encoder_cache_dir", str(root / "cache"), "--threads", "1"]
    return args, root


def flag(command, name):
    """The value a command line gives a flag (its last occurrence wins, as in argparse)."""
    return command[len(command) - 1 - command[::-1].index(name) + 1]


def run_study(module_name, study_args, extra=()):
    """Run one study's main() and return (summary rows, results.json, output dir)."""
    args, root = study_args
    module = __import__(module_name)
    output_dir = root / module_name
    rows = module.main(args + ["--output_dir", str(output_dir), *extra])
    results = json.loads((output_dir / "results.json").read_text())
    assert (output_dir / f"{module_name}.png").stat().st_size > 0
    assert "| " in (output_dir / "results.md").read_text()
    for row in rows:
        for key in _study.METRIC_KEYS:
            assert 0.0 <= row[key] <= 1.0
    # every run is train.py on frozen encoders with the encoder-output cache
    for run in results["runs"]:
        assert run["command"][0] == "train.py" and "--cache_encoder_outputs" in run["command"]
        head = json.loads(flag(run["command"], "--model_config"))
        assert head["freeze_audio_encoder"] and head["freeze_text_encoder"]
    return rows, results, output_dir


def test_batch_size_study_runs_both_losses_at_each_batch_size(study_args):
    rows, results, _ = run_study("study_batch_size", study_args, ["--batch_sizes", "4,8"])
    assert {(r["loss"], r["batch_size"]) for r in rows} == {(l, b) for l in ("hybrid", "contrastive only") for b in (4, 8)}
    # the same samples seen at every batch size
    assert {(r["batch_size"], r["steps"]) for r in results["runs"]} == {(4, 2), (8, 1)}
    contrastive = [json.loads(flag(r["command"], "--model_config")) for r in results["runs"] if r["loss"] == "contrastive only"]
    assert all(h["lambda_cosine"] == 0 and h["lambda_l1"] == 0 and h["lambda_contrastive"] == 1 for h in contrastive)


def test_batch_size_study_at_equal_steps(study_args):
    _, results, _ = run_study("study_batch_size", study_args, ["--batch_sizes", "4,8", "--equal_steps", "2", "--overwrite"])
    assert {(r["batch_size"], r["steps"]) for r in results["runs"]} == {(4, 2), (8, 2)}


def test_ablation_study_runs_every_variant(study_args):
    rows, results, _ = run_study("study_ablation", study_args)
    assert [r["variant"] for r in rows] == list(__import__("study_ablation").VARIANTS)
    assert all(run["steps"] == 2 for run in results["runs"])


def test_noise_study_trains_with_and_without_noise_and_tests_every_condition(study_args):
    rows, results, _ = run_study("study_noise", study_args, ["--cache_num_views", "1", "--test_snrs", "10,5"])
    assert {(r["training"], r["test"]) for r in rows} == {(t, c) for t in ("clean", "noise-augmented") for c in ("clean", "10 dB", "5 dB")}
    probability = {r["training"]: flag(r["command"], "--noise_probability") for r in results["runs"]}
    assert probability == {"clean": "0.0", "noise-augmented": "0.5"}
    assert all(r["evaluate_command"][0] == "evaluate.py" and "5" in r["evaluate_command"] for r in results["runs"])


def test_long_form_study_compares_chunking_with_a_single_crop(study_args):
    rows, results, output_dir = run_study("study_long_form", study_args, ["--min_long_s", "12", "--max_long_s", "15"])
    assert [r["input"] for r in rows] == ["all chunks + attention pooling", "first 10 s only", "random 10 s only"]
    assert "overlaps the first 10 s" in (output_dir / "results.md").read_text()
    # the evaluated clips are the long ones and their 10 s crops
    rate = AtrFeatureExtractor.from_pretrained(results["runs"][0]["model_dir"]).sampling_rate
    import soundfile as sf

    lengths = {folder: sf.info(output_dir / "data" / folder / "test" / "clip00000.flac").frames / rate for folder in ("full", "first", "random")}
    assert 12 <= lengths["full"] <= 15 and lengths["first"] == lengths["random"] == 10


def test_head_runs_train_fresh_heads_on_the_frozen_study_encoder(study_args):
    """A head run's audio encoder and features are the study encoder's; its heads use the paper's method."""
    args, root = study_args
    parsed = _study.study_parser("", "x").parse_args(args + ["--output_dir", str(root / "heads")])
    _study.setup(parsed)
    run = _study.train_run(parsed, root / "heads" / "run", seed=0)
    encoder, heads = AtrModel.from_pretrained(parsed.encoder), AtrModel.from_pretrained(run["model_dir"])
    assert encoder.config.lambda_cosine == 0.0 and not encoder.config.cross_modal_attention  # the study encoder's recipe
    assert (heads.config.lambda_cosine, heads.config.lambda_l1, heads.config.lambda_contrastive) == (1.0, 1.0, 1.0)
    assert heads.config.cross_modal_attention and heads.config.freeze_audio_encoder and heads.config.freeze_text_encoder
    for name, value in encoder.audio_model.state_dict().items():
        torch.testing.assert_close(heads.audio_model.state_dict()[name], value, rtol=0, atol=0, msg=name)
    for name, value in encoder.text_model.state_dict().items():
        torch.testing.assert_close(heads.text_model.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert AtrFeatureExtractor.from_pretrained(run["model_dir"]).to_dict() == AtrFeatureExtractor.from_pretrained(parsed.encoder).to_dict()
    assert run["steps"] == 2 and set(run["metrics"]) == set(_study.METRIC_KEYS)


def test_study_refuses_to_replace_earlier_results(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    parsed = _study.study_parser("", "x").parse_args(["--output_dir", str(tmp_path)])
    with pytest.raises(FileExistsError, match="--overwrite"):
        _study.setup(parsed)


def test_long_form_clip_holds_the_scene_where_the_layout_says():
    long_form = __import__("study_long_form")
    scene = np.sin(np.linspace(0, 3000, 16000 * 4)).astype(np.float32) * 0.5
    for index in range(6):
        wave = long_form.make_long_form(scene, index, 16000, 30, 60)
        total, start, background = long_form.long_form_layout(index, scene.size, 16000, 30, 60)
        assert wave.shape == (total,) and 30 * 16000 <= total <= 60 * 16000
        inside = np.mean(wave[start : start + scene.size] ** 2)
        outside = np.mean(np.delete(wave, np.arange(start, start + scene.size)) ** 2)
        assert 10 * np.log10(inside / outside) > 20  # the scene stands out of its background
        assert np.array_equal(wave, long_form.make_long_form(scene, index, 16000, 30, 60))  # seeded


def test_crop_keeps_one_window():
    long_form = __import__("study_long_form")
    wave = np.arange(16000 * 40, dtype=np.float32)
    first = long_form.crop(10, 16000, "first")(wave, 0)
    assert np.array_equal(first, wave[: 160000])
    random = long_form.crop(10, 16000, "random")(wave, 5)
    assert random.size == 160000 and np.array_equal(random, wave[int(random[0]) : int(random[0]) + 160000])
