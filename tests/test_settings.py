"""train.py's settings and splits: JSON flags merge into the YAML, manifests split like folders, resume skips partial checkpoints."""

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pytest
from test_train import TINY, logged_losses, run_train, write_clips

ROOT = Path(__file__).resolve().parents[1]
from atr.cli import train  # noqa: E402  (train.py's code)

DEMO = str(ROOT / "configs" / "demo.yaml")


def test_the_readme_model_config_example_changes_only_its_two_keys():
    base = train.parse_args(["--config", DEMO])
    flagged = train.parse_args(["--config", DEMO, "--model_config", '{"lambda_l1": 0.5, "freeze_text_encoder": false}'])
    before, after = json.loads(base[0].model_config), json.loads(flagged[0].model_config)
    assert after == {**before, "lambda_l1": 0.5, "freeze_text_encoder": False}
    assert after["freeze_audio_encoder"] is False and after["projection_dim"] == 128  # the demo's, not AtrConfig's defaults
    for got, expected in zip(flagged, base):  # nothing else moved
        fields = [f.name for f in dataclasses.fields(got) if f.init and f.name != "model_config"]
        assert [getattr(got, name) for name in fields] == [getattr(expected, name) for name in fields]
    _, changes = train.parse_settings(["--config", DEMO, "--model_config", '{"lambda_l1": 0.5}', "--seed", "3"])
    assert changes == ["model_config.lambda_l1: (unset) -> 0.5", "seed: 0 -> 3"]


def test_a_json_flag_of_null_clears_the_yaml_block():
    model_args = train.parse_args(["--config", TINY, "--feature_extractor_config", "null"])[0]
    assert train._json(model_args.feature_extractor_config) == {}


@pytest.mark.parametrize("flag, value, suggestion", [
    ("--model_config", '{"lamda_l1": 0.5}', "lambda_l1"),
    ("--feature_extractor_config", '{"window_sec": 3}', "window_s"),
    ("--audio_config_overrides", '{"max_source_positoins": 500}', "max_source_positions"),
])
def test_an_unknown_key_in_a_json_flag_is_refused_with_a_suggestion(flag, value, suggestion):
    key = next(iter(json.loads(value)))
    with pytest.raises(ValueError, match=rf"{flag}.*'{key}'.*did you mean '{suggestion}'"):
        train.parse_args(["--config", TINY, flag, value])


def test_an_unknown_setting_in_the_yaml_file_is_refused_with_a_suggestion(tmp_path):
    (tmp_path / "typo.yaml").write_text(Path(TINY).read_text() + "learning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"'learning_rat'.*did you mean 'learning_rate'"):
        train.parse_args(["--config", str(tmp_path / "typo.yaml")])


def write_manifest(tmp_path, with_split):
    """A CSV manifest of 8 train and 8 test clips (a `split` column or none); returns its path."""
    lines = ["file_name,caption" + (",split" if with_split else "")]
    for split in ("train", "test"):
        for name, caps in write_clips(tmp_path / "clips" / split, 8, seed=len(split), fmt="wav"):
            lines.append(f"clips/{split}/{name},{caps[0]}" + (f",{split}" if with_split else ""))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def paths(dataset):
    return {row["path"] for row in dataset["audio"]}


def test_a_manifest_with_a_split_column_trains_on_train_and_tests_on_test(tmp_path, tiny_text):
    manifest = write_manifest(tmp_path, with_split=True)
    _, data_args, _, training_args = train.parse_args(["--config", TINY, "--dataset", str(manifest), "--eval_strategy", "steps"])
    splits = train.load_splits(data_args, training_args)
    assert all("/clips/test/" in p for p in paths(splits["test"])) and len(splits["test"]) == 8
    assert all("/clips/train/" in p for p in paths(splits["train"]) | paths(splits["eval"]))  # validation held out of train
    assert not paths(splits["train"]) & paths(splits["eval"]) and len(splits["train"]) + len(splits["eval"]) == 8
    # end to end, as an audiofolder without validation/: no --eval_split "" needed
    results, _ = run_train(tmp_path / "run", tiny_text, "--dataset", str(manifest), "--max_steps", "1")
    assert 0 <= results["test_t2a_mAP10"] <= 1


def test_a_manifest_without_a_split_column_holds_out_a_seeded_test_split(tmp_path, caplog):
    manifest = write_manifest(tmp_path, with_split=False)
    _, data_args, _, training_args = train.parse_args(["--config", TINY, "--dataset", str(manifest)])
    with caplog.at_level(logging.INFO):
        splits = train.load_splits(data_args, training_args)
    assert "held out 2 of 16 rows as the test split" in caplog.text
    assert len(splits["test"]) == 2 and len(splits["train"]) == 14 and splits["eval"] is None
    assert not paths(splits["train"]) & paths(splits["test"])  # never a test on training rows
    assert paths(train.load_splits(data_args, training_args)["test"]) == paths(splits["test"])  # seeded
    _, data_args, _, training_args = train.parse_args(["--config", TINY, "--dataset", str(manifest), "--eval_strategy", "steps"])
    splits = train.load_splits(data_args, training_args)
    assert len(splits["test"]) == 2 and len(splits["eval"]) >= 1
    assert not (paths(splits["train"]) & paths(splits["test"]) or paths(splits["train"]) & paths(splits["eval"])
                or paths(splits["eval"]) & paths(splits["test"]))


def test_resume_latest_skips_a_partial_newest_checkpoint(tmp_path, tiny_text, caplog):
    base = ["--test_split", "", "--eval_split", "", "--save_steps", "3"]
    _, out = run_train(tmp_path, tiny_text, *base, "--max_steps", "3")
    partial = out / "checkpoint-6"  # killed while saving: everything but trainer_state.json
    shutil.copytree(out / "checkpoint-3", partial)
    (partial / "trainer_state.json").unlink()
    with caplog.at_level(logging.WARNING):
        run_train(tmp_path, tiny_text, *base, "--max_steps", "6", "--resume_from_checkpoint", "latest")
    assert "checkpoint-6" in caplog.text and "checkpoint-3" in caplog.text
    assert sorted(logged_losses(out)) == [1, 2, 3, 4, 5, 6]  # continued from step 3, then saved a whole checkpoint-6
