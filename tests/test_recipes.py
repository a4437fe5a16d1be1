"""The real-run recipes on tiny stand-ins of their sources (same features, split names and caption counts), a user's
train/test-only folder, and best-model selection on validation."""

import importlib.util
import io
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file
from test_prepare import fake_fsd50k_hub, make_clotho_release
from tiny import tiny_atr_config, tiny_bert_config, tiny_clap_audio_config, tiny_roberta_config, tiny_tokenizer, tiny_whisper_config
from transformers import BertModel, ClapConfig, ClapModel, RobertaModel, WhisperModel

import atr.data
from atr import AtrFeatureExtractor, AtrModel, AtrProcessor, prepare

ROOT = Path(__file__).resolve().parents[1]
from atr.cli import train  # noqa: E402  (train.py's code)

_spec = importlib.util.spec_from_file_location("atr_evaluate_cli", ROOT / "evaluate.py")
evaluate_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate_cli)

pytestmark = pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")
# Only what a CPU test needs changes; data settings, head, loss and the eval/save/best-model set-up stay the recipe's.
CPU = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4", "--dataloader_num_workers", "0",
       "--bf16", "false", "--use_cpu", "true", "--warmup_steps", "0", "--disable_tqdm", "true", "--noise_probability", "0"]
# The recipes' 512-wide heads are built by test_train.py's config test; here only their sizes shrink.
TINY_HEAD = {"projection_dim": 16, "head_hidden_size": 32, "head_heads": 4, "cross_modal_heads": 4}


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """Tiny random CLAP, Whisper and RoBERTa checkpoints standing in for the recipes' Hub backbones."""
    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    clap = ClapConfig(audio_config=tiny_clap_audio_config().to_dict(), text_config=tiny_roberta_config().to_dict())
    ClapModel(clap).save_pretrained(root / "clap")
    WhisperModel(tiny_whisper_config()).save_pretrained(root / "whisper")
    RobertaModel(tiny_roberta_config()).save_pretrained(root / "text")
    tiny_tokenizer().save_pretrained(root / "text")
    return {name: str(root / name) for name in ("clap", "whisper", "text")}


def wav_bytes(seconds, rate, seed):
    """A short noise clip encoded as WAV bytes (how parquet Hub datasets embed audio)."""
    buffer = io.BytesIO()
    sf.write(buffer, (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


def write_hub_copy(folder, features, splits):
    """A local stand-in of a parquet Hub dataset: data/<split>-00000-of-00001.parquet, as the Hub names them."""
    # built with a plain struct, then cast: encoding through Audio() would need torchcodec
    raw = datasets.Features({k: {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
                             if isinstance(v, datasets.Audio) else v for k, v in features.items()})
    for split, rows in splits.items():
        table = datasets.Dataset.from_dict({k: [row[k] for row in rows] for k in features}, features=raw).cast(features)
        (folder / "data").mkdir(parents=True, exist_ok=True)
        table.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


@pytest.fixture()
def hub(monkeypatch):
    """Route Hub dataset ids to local folders: `hub["OpenSound/AudioCaps"] = folder`."""
    routes = {}

    def routed(real):
        return lambda source, *a, **k: real(str(routes.get(source, source)), *a, **k)

    # patched where atr.data looks them up, the module that reaches the Hub
    for name in ("load_dataset", "get_dataset_split_names"):
        monkeypatch.setattr(atr.data, name, routed(getattr(atr.data, name)))
    return routes


def recipe_argv(config, backbones, out, *extra):
    """The recipe's settings with tiny backbones and a tiny head of the recipe's kind (its pooling, freezing, loss)."""
    audio = backbones["whisper"] if "whisper" in config else backbones["clap"]
    head = {**yaml.safe_load((ROOT / "configs" / config).read_text())["model_config"], **TINY_HEAD}
    return ["--config", str(ROOT / "configs" / config), "--audio_backbone", audio, "--text_backbone", backbones["text"],
            "--model_config", json.dumps(head), "--output_dir", str(out), *CPU, *extra]


def run_recipe(argv, captions_per_clip):
    """Load the recipe's splits, check each clip's caption count, then train 2 steps, evaluate, and return the results."""
    _, data_args, _, training_args = train.parse_args(argv)
    splits = train.load_splits(data_args, training_args)
    assert {name: [len(c) for c in split["captions"]] for name, split in splits.items()} == captions_per_clip
    trainer, results = train.main(argv)
    assert any("eval_t2a_mAP10" in entry for entry in trainer.state.log_history)  # validation during training
    assert 0 <= results["test_t2a_mAP10"] <= 1 and "test_a2t_R1" in results
    return trainer, results


@pytest.fixture(scope="module")
def clotho(tmp_path_factory):
    """A tiny Clotho v2.1 release prepared by atr.prepare (4 clips per split, 5 captions each)."""
    root = tmp_path_factory.mktemp("clotho")
    checksums = make_clotho_release(root / "zenodo", clips_per_split=4)
    recipe = prepare.clotho_recipe(url_template=(root / "zenodo").as_uri() + "/{name}", checksums=checksums)
    return prepare.prepare(recipe, root / "clotho")


@pytest.mark.parametrize("config", ["clotho.yaml", "clotho_whisper.yaml"])
def test_clotho_recipes_train_on_the_prepared_folder(tmp_path, backbones, clotho, config):
    assert yaml.safe_load((ROOT / "configs" / config).read_text())["dataset"] == "./data/clotho"
    run_recipe(recipe_argv(config, backbones, tmp_path / "out", "--dataset", str(clotho)),
               {"train": [5] * 4, "eval": [5] * 4, "test": [5] * 4})


def test_audiocaps_recipe_groups_the_caption_rows_of_each_clip(tmp_path, backbones, hub):
    # OpenSound/AudioCaps: parquet, one row per caption (train 1 per clip, validation/test 5), audio embedded
    features = datasets.Features({"audiocap_id": datasets.Value("int64"), "youtube_id": datasets.Value("string"),
                                  "start_time": datasets.Value("int64"), "caption": datasets.Value("string"), "audio": datasets.Audio()})
    rows, next_id = {}, 0
    for split, clips, captions in (("train", 4, 1), ("validation", 2, 5), ("test", 3, 5)):
        rows[split] = []
        for clip in range(clips):
            audio = {"bytes": wav_bytes(1.0, 48000, seed=next_id), "path": f"{split}{clip}.wav"}
            for k in range(captions):
                rows[split].append({"audiocap_id": next_id, "youtube_id": f"{split}-yt{clip}", "start_time": 30,
                                    "caption": f"a dog barks {k}", "audio": audio})
                next_id += 1
    hub["OpenSound/AudioCaps"] = write_hub_copy(tmp_path / "audiocaps", features, rows)
    run_recipe(recipe_argv("audiocaps.yaml", backbones, tmp_path / "out"), {"train": [1] * 4, "eval": [5] * 2, "test": [5] * 3})


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A saved tiny atr model (CLAP audio, RoBERTa text) for evaluate.py."""
    path = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    config = tiny_atr_config()
    AtrModel(config).save_pretrained(path)
    AtrProcessor(AtrFeatureExtractor.from_audio_config(config.audio_config), tiny_tokenizer()).save_pretrained(path)
    return str(path)


def test_esc50_zero_shot_recipe(tmp_path, tiny_model, hub):
    # ashraq/esc50: one train split holding the 5 folds; `category` names like chirping_birds, `target` the index
    features = datasets.Features({
        "filename": datasets.Value("string"), "fold": datasets.Value("int64"), "target": datasets.Value("int64"),
        "category": datasets.Value("string"), "esc10": datasets.Value("bool"), "src_file": datasets.Value("int64"),
        "take": datasets.Value("string"), "audio": datasets.Audio(),
    })
    categories = [("dog", 0), ("chirping_birds", 14), ("rain", 10)]
    rows = [{"filename": f"{fold}-1000{fold}-A-{categories[fold % 3][1]}.wav", "fold": fold, "target": categories[fold % 3][1],
             "category": categories[fold % 3][0], "esc10": fold % 3 != 1, "src_file": 1000 + fold, "take": "A",
             "audio": {"bytes": wav_bytes(5.0, 44100, seed=fold), "path": f"{fold}.wav"}} for fold in range(1, 6)]
    hub["ashraq/esc50"] = write_hub_copy(tmp_path / "esc50", features, {"train": rows})
    results = evaluate_cli.main(["--model", tiny_model, "--dataset", "ashraq/esc50", "--split", "train", "--task", "zero-shot",
                                 "--label_column", "category", "--label_underscores_to_spaces", "--output_dir", str(tmp_path / "r"), "--no_progress"])
    assert results["num_clips"] == 5 and results["class_names"] == ["chirping birds", "dog", "rain"]
    assert results["prompt_template"] == "This is a sound of {label}."
    assert 0 <= results["conditions"][0]["metrics"]["accuracy"] <= 1


def test_fsd50k_zero_shot_recipe(tmp_path, tiny_model, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_fsd50k_hub([], labels=("Electric_guitar,Guitar", "Bird_vocalization,Bird", "Guitar")))
    data = prepare.prepare_fsd50k(tmp_path / "fsd50k")
    results = evaluate_cli.main(["--model", tiny_model, "--dataset", str(data), "--split", "test", "--task", "zero-shot", "--label_column",
                                 "labels", "--label_separator", ",", "--label_underscores_to_spaces", "--output_dir", str(tmp_path / "r"), "--no_progress"])
    assert results["class_names"] == ["Bird", "Bird vocalization", "Electric guitar", "Guitar"]
    assert 0 <= results["conditions"][0]["metrics"]["mAP10"] <= 1


def train_test_folder(folder, count=10):
    """The common layout of a user's own data: train/ and test/ only."""
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True)
        lines = ["file_name,caption"]
        for index in range(count):
            sf.write(folder / split / f"c{index}.wav", (0.1 * np.random.default_rng(index).standard_normal(16000)).astype(np.float32), 16000)
            lines.append(f"c{index}.wav,a dog barks {index}")
        (folder / split / "metadata.csv").write_text("\n".join(lines) + "\n")
    return folder


def tiny_argv(out, tiny_text, *extra):
    return ["--config", str(ROOT / "tests" / "configs" / "tiny.yaml"), "--text_backbone", tiny_text, "--output_dir", str(out),
            "--noise_probability", "0", *extra]


def test_folder_without_validation_holds_out_train_clips_only_when_evaluating(tmp_path, tiny_text, caplog):
    folder = train_test_folder(tmp_path / "mine")
    with caplog.at_level("INFO", logger="atr.train"):
        trainer, results = train.main(tiny_argv(tmp_path / "a", tiny_text, "--dataset", str(folder), "--max_steps", "1"))
    assert "has no 'validation' split and evaluation during training is off" in caplog.text
    assert trainer.eval_dataset is None and len(trainer.train_dataset) == 10 and "test_t2a_mAP10" in results
    caplog.clear()
    with caplog.at_level("INFO", logger="atr.train"):
        trainer, _ = train.main(tiny_argv(tmp_path / "b", tiny_text, "--dataset", str(folder), "--max_steps", "1",
                                          "--eval_strategy", "steps", "--eval_steps", "1", "--validation_fraction", "0.2"))
    assert "holding out 20% of the train clips (seed 0)" in caplog.text
    held = {row["audio"]["path"] for row in trainer.eval_dataset}
    kept = {row["audio"]["path"] for row in trainer.train_dataset}
    assert len(held) == 2 and len(kept) == 8 and not held & kept and all("/train/" in p for p in held)
    assert any("eval_t2a_mAP10" in entry for entry in trainer.state.log_history)


def test_best_model_is_the_best_validation_step_and_is_reloaded(tmp_path, tiny_text):
    metric = yaml.safe_load((ROOT / "configs" / "clotho.yaml").read_text())["metric_for_best_model"]
    out = tmp_path / "out"
    trainer, _ = train.main(tiny_argv(out, tiny_text, "--max_steps", "3", "--learning_rate", "0.01", "--eval_strategy", "steps",
                                      "--eval_steps", "1", "--save_steps", "1", "--load_best_model_at_end", "true",
                                      "--metric_for_best_model", metric, "--max_eval_samples", "6"))
    scores = {entry["step"]: entry[f"eval_{metric}"] for entry in trainer.state.log_history if f"eval_{metric}" in entry}
    assert sorted(scores) == [1, 2, 3]  # validation scored at every step; the test split never enters the choice
    best_step = max(scores, key=lambda step: (scores[step], -step))  # Trainer keeps the first of equal scores
    assert trainer.state.best_metric == scores[best_step]
    assert trainer.state.best_model_checkpoint == str(out / f"checkpoint-{best_step}")
    final = load_file(out / "model.safetensors")
    best = load_file(out / f"checkpoint-{best_step}" / "model.safetensors")
    assert all(torch.equal(final[k], best[k]) for k in best)  # the best validation step's weights were reloaded
    last = load_file(out / "checkpoint-3" / "model.safetensors")
    if best_step != 3:
        assert not all(torch.equal(final[k], last[k]) for k in last)


def test_caption_separator_splits_captions_joined_in_one_string(tmp_path, hub):
    # copies such as CLAPv2/Clotho join a clip's 5 captions into one `text` string
    features = datasets.Features({"audio": datasets.Audio(), "text": datasets.Value("string")})
    rows = [{"audio": {"bytes": wav_bytes(0.5, 16000, seed=i), "path": f"{i}.wav"},
             "text": "\n".join(f"clip {i} caption {k}" for k in range(1, 6))} for i in range(2)]
    hub["someone/clotho-joined"] = write_hub_copy(tmp_path / "joined", features, {"test": rows})
    joined = atr.data.load_audio_text_dataset("someone/clotho-joined", "test", caption_columns="text")
    split = atr.data.load_audio_text_dataset("someone/clotho-joined", "test", caption_columns="text", caption_separator="\n")
    assert [len(c) for c in joined["captions"]] == [1, 1]
    assert split["captions"][1] == [f"clip 1 caption {k}" for k in range(1, 6)]
