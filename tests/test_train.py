"""train.py end to end on tiny configs: local data sources, bad audio, resume, multi-process, Hub upload, real-run configs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tiny import tiny_bert_config, tiny_clap_audio_config, tiny_roberta_config, tiny_tokenizer, tiny_whisper_config
from transformers import AutoModel, AutoProcessor, BertModel

ROOT = Path(__file__).resolve().parents[1]
from atr.cli import train  # noqa: E402  (train.py's code)

TINY = str(ROOT / "tests" / "configs" / "tiny.yaml")
EVENTS = {"dog bark": 440.0, "siren": 900.0, "bell": 1500.0, "engine": 120.0}


def write_clips(folder, count, seed, fmt, seconds=(1.0, 2.0)):
    """Write `count` tone clips (wav or flac) of `seconds` (min, max); return (file name, 5 captions) rows."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        event, freq = list(EVENTS.items())[index % len(EVENTS)]
        t = np.arange(int(16000 * rng.uniform(*seconds))) / 16000
        wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))
        name = f"clip{index}.{fmt}"
        sf.write(folder / name, wave.astype(np.float32), 16000)
        captions = [f"a {event}", f"the {event} sound", f"{event} near", f"a loud {event}", f"this is a {event}"]
        rows.append((name, captions))
    return rows


def run_train(tmp_path, tiny_text, *extra):
    """Run train.main on the tiny config and return (results, output_dir)."""
    output_dir = tmp_path / "out"
    argv = ["--config", TINY, "--text_backbone", tiny_text, "--output_dir", str(output_dir), "--noise_probability", "0", *extra]
    _, results = train.main(argv)
    return results, output_dir


def test_trains_from_audiofolder_and_csv_manifest(tmp_path, tiny_text):
    folder = tmp_path / "folder"
    for split, fmt in (("train", "wav"), ("test", "flac")):
        rows = write_clips(folder / split, 8, seed=len(split), fmt=fmt)
        lines = ["file_name,captions"] + [f'{name},"{json.dumps(caps).replace(chr(34), chr(34) * 2)}"' for name, caps in rows]
        (folder / split / "metadata.csv").write_text("\n".join(lines) + "\n")
    results, out = run_train(tmp_path / "a", tiny_text, "--dataset", str(folder), "--eval_split", "", "--max_steps", "2")
    assert 0 <= results["test_t2a_mAP10"] <= 1 and "test_a2t_R1" in results
    assert type(AutoModel.from_pretrained(out)).__module__ == "atr.modeling_atr"  # import atr registered it: no remote code

    # a CSV manifest: one row per clip, five caption columns, a split column, flac and wav files
    lines = ["file_name,split," + ",".join(f"caption_{i}" for i in range(1, 6))]
    for split, fmt in (("train", "flac"), ("test", "wav")):
        for name, caps in write_clips(tmp_path / "clips" / split, 8, seed=3, fmt=fmt):
            lines.append(f"clips/{split}/{name},{split}," + ",".join(caps))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    results, _ = run_train(tmp_path / "b", tiny_text, "--dataset", str(manifest), "--eval_split", "", "--max_steps", "2")
    # 8 test clips x 5 captions: the a2t metrics saw every caption
    assert 0 <= results["test_a2t_mAP10"] <= 1


def test_short_clips_train_with_the_short_clip_config_unless_told_not_to(tmp_path, tiny_text, caplog, monkeypatch):
    import yaml

    built = []  # the switch is decided from the settings and the data: the model is built once, for the final config
    monkeypatch.setattr(train, "build_model", lambda *args, build=train.build_model: built.append(args[0]) or build(*args))

    folder = tmp_path / "words"
    for split in ("train", "test"):
        rows = write_clips(folder / split, 8, seed=len(split), fmt="wav", seconds=(0.3, 0.6))
        (folder / split / "metadata.csv").write_text("file_name,caption\n" + "".join(f"{name},{caps[0]}\n" for name, caps in rows))
    short = yaml.safe_load(Path(TINY).read_text())
    short["feature_extractor_config"]["window_s"] = 1.0
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(short))
    flags = ("--dataset", str(folder), "--eval_split", "", "--max_steps", "1")
    with caplog.at_level("WARNING", logger="atr.train"):
        _, out = run_train(tmp_path / "a", tiny_text, *flags, "--short_clip_config", str(tmp_path / "short.yaml"))
    assert "median duration is 0.4" in caplog.text and f"training with {tmp_path / 'short.yaml'} instead" in caplog.text
    assert AutoProcessor.from_pretrained(out).feature_extractor.window_s == 1.0
    assert json.loads((out / "config.json").read_text())["text_config"]["hidden_size"] == 32  # the CLI flags still apply
    assert len(built) == 1 and json.loads(built[0].feature_extractor_config)["window_s"] == 1.0  # the short config's
    caplog.clear()
    with caplog.at_level("WARNING", logger="atr.train"):
        _, out = run_train(tmp_path / "b", tiny_text, *flags, "--short_clip_config", "")
    assert "instead" not in caplog.text and "configs/short_clips.yaml" in caplog.text
    assert AutoProcessor.from_pretrained(out).feature_extractor.window_s == 5


def test_each_config_names_the_short_clip_config_beside_it():
    run_args = train.parse_args(["--config", str(ROOT / "configs" / "demo.yaml")])[2]
    assert run_args.short_clip_config == str(ROOT / "configs" / "short_clips.yaml")
    # no --config: the paper's regime, whose short clips keep the pretrained encoder with shorter windows
    model_args, _, run_args = train.parse_args([])[:3]
    assert run_args.short_clip_config == str(ROOT / "configs" / "pretrained_short_clips.yaml")
    assert model_args.audio_backbone == "openai/whisper-tiny.en"
    short = train.parse_args(["--config", run_args.short_clip_config])[0]
    assert short.audio_backbone == "openai/whisper-tiny.en" and '"max_source_positions": 125' in short.audio_config_overrides


def test_corrupt_file_stops_training_unless_skipped(tmp_path, tiny_text, caplog):
    rows = write_clips(tmp_path / "clips", 9, seed=0, fmt="wav")
    (tmp_path / "clips" / rows[4][0]).write_bytes(b"not audio at all")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("file_name,caption\n" + "".join(f"clips/{name},{caps[0]}\n" for name, caps in rows))
    args = ["--dataset", str(manifest), "--eval_split", "", "--test_split", "", "--max_steps", "1"]
    with pytest.raises(Exception, match=rows[4][0]):
        run_train(tmp_path / "a", tiny_text, *args)
    with caplog.at_level("WARNING"):
        run_train(tmp_path / "b", tiny_text, *args, "--skip_bad_audio")
    assert any("1" in r.getMessage() and "skip" in r.getMessage().lower() for r in caplog.records)


def logged_losses(output_dir, checkpoint=None):
    """Training loss per step from the last trainer_state.json."""
    states = sorted(Path(output_dir).glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    history = json.loads(states[-1].read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path, tiny_text):
    base = ["--test_split", "", "--eval_split", "", "--noise_probability", "0.5", "--save_steps", "3", "--max_steps", "6"]
    _, full = run_train(tmp_path / "full", tiny_text, *base)
    full_losses = logged_losses(full)
    # A run stopped at step 3 has exactly the full run's checkpoint-3: resume from it into a fresh directory.
    _, resumed = run_train(tmp_path / "resumed", tiny_text, *base, "--resume_from_checkpoint", str(full / "checkpoint-3"))
    resumed_losses = logged_losses(resumed)
    for step in range(4, 7):
        assert abs(resumed_losses[step] - full_losses[step]) < 1e-6, (step, resumed_losses, full_losses)


def test_two_processes_match_one_process_at_step_one(tmp_path, tiny_text):
    common = [
        "train.py", "--config", TINY, "--text_backbone", tiny_text, "--test_split", "", "--eval_split", "",
        "--max_steps", "1", "--noise_probability", "0", "--model_config", json.dumps({**train._json(None), "projection_dim": 16,
        "head_hidden_size": 32, "head_heads": 4, "cross_modal_heads": 4, "head_dropout": 0.0, "text_pooling": "mean", "freeze_audio_encoder": False}),
    ]
    # accelerate's --cpu with several processes needs MPI; --multi_gpu runs torchrun, which uses gloo on a CPU machine.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    subprocess.run([*launcher, *common, "--output_dir", str(tmp_path / "two"), "--per_device_train_batch_size", "2"], check=True, cwd=ROOT)
    subprocess.run([sys.executable, *common, "--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "4"], check=True, cwd=ROOT)
    two, one = logged_losses(tmp_path / "two"), logged_losses(tmp_path / "one")
    assert abs(two[1] - one[1]) < 1e-5, (two, one)


def test_push_to_hub_uploads_a_complete_model_folder(tmp_path, tiny_text, monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    calls = {}
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: calls.setdefault("repo", repo_id))

    def fake_upload(repo_id, folder_path, ignore_patterns=None, **kwargs):
        files = [str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file()]
        calls["files"] = set(filter_repo_objects(files, ignore_patterns=ignore_patterns))

    monkeypatch.setattr(huggingface_hub, "upload_folder", fake_upload)
    run_train(tmp_path, tiny_text, "--max_steps", "1", "--eval_split", "", "--push_to_hub", "--hub_model_id", "someone/atr-tiny")
    files = calls["files"]
    assert calls["repo"] == "someone/atr-tiny"
    required = {"model.safetensors", "config.json", "configuration_atr.py", "modeling_atr.py", "feature_extraction_atr.py",
                "processing_atr.py", "processor_config.json", "tokenizer.json", "tokenizer_config.json", "README.md"}
    assert required <= files, required - files
    assert not any(f.startswith("checkpoint-") or f.endswith((".bin", ".pt")) for f in files)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_atr.AtrModel"


def test_refuses_to_overwrite_a_saved_model(tmp_path, tiny_text):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="overwrite_output_dir"):
        run_train(tmp_path, tiny_text, "--max_steps", "1")


@pytest.mark.parametrize("config", ["clotho.yaml", "audiocaps.yaml", "clotho_whisper.yaml", "demo.yaml", "short_clips.yaml"])
def test_real_run_configs_parse_and_build_with_tiny_stand_ins(tmp_path, config, monkeypatch):
    from transformers import ClapConfig, ClapModel, RobertaModel, WhisperModel

    model_args, data_args, run_args, training_args = train.parse_args(["--config", str(ROOT / "configs" / config), "--bf16", "false"])  # GPU recipes; no bf16 on CPU
    assert training_args.output_dir and data_args.dataset
    torch.manual_seed(0)
    if model_args.audio_backbone:
        audio_dir = tmp_path / "audio"
        if "whisper" in model_args.audio_backbone:
            WhisperModel(tiny_whisper_config()).save_pretrained(audio_dir)
        else:
            clap = ClapConfig(audio_config=tiny_clap_audio_config().to_dict(), text_config=tiny_roberta_config().to_dict())
            ClapModel(clap).save_pretrained(audio_dir)
        model_args.audio_backbone = str(audio_dir)
    if model_args.text_backbone != train.MINILM_ID:
        RobertaModel(tiny_roberta_config()).save_pretrained(tmp_path / "text")
        tiny_tokenizer().save_pretrained(tmp_path / "text")
        model_args.text_backbone = str(tmp_path / "text")
    model, processor = train.build_model_and_processor(model_args)
    expected = json.loads(model_args.model_config)
    for key, value in expected.items():
        assert getattr(model.config, key) == value, key
    fe = processor.feature_extractor
    clip = np.random.default_rng(0).uniform(-0.5, 0.5, fe.sampling_rate * 3).astype(np.float32)
    batch = processor(audio=[clip], text=["a dog barks"], sampling_rate=fe.sampling_rate, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, return_loss=True)
    assert torch.isfinite(out.loss)


def test_hp_search_scores_trials_on_validation_and_trains_with_the_best(tmp_path, tiny_text):
    """--hp_search N runs N optuna trials (loss weights + lr), each evaluated on validation, then trains with the best."""
    pytest.importorskip("optuna")
    trainer, results = train.main([
        "--config", TINY, "--text_backbone", tiny_text, "--output_dir", str(tmp_path / "out"), "--noise_probability", "0",
        "--hp_search", "2", "--max_steps", "2",
    ])
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    searched = {config[name] for name in ("lambda_cosine", "lambda_l1", "lambda_contrastive")}
    assert all(0.0 <= value <= 2.0 for value in searched) and searched != {1.0}  # the best trial's weights, not defaults
    assert trainer.args.learning_rate != 0.001 and "t2a_mAP10" in "".join(results)


def test_resume_in_epoch_two_with_two_workers_gives_the_uninterrupted_losses(tmp_path, tiny_text, monkeypatch):
    """Noise, caption and chunk draws come from (seed, epoch, clip_index), and the sample order from (seed, epoch)."""
    from transformers import TrainerCallback

    # 32 clips / batch 4 = 8 steps per epoch: step 10 is inside epoch 2; 2 workers collate alternate batches
    base = ["--test_split", "", "--eval_split", "", "--noise_probability", "0.5", "--save_steps", "10", "--max_steps", "12",
            "--dataloader_num_workers", "2"]
    _, full = run_train(tmp_path / "full", tiny_text, *base)
    full_losses = logged_losses(full)

    class StopAtStepTen(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 10

    class InterruptedTrainer(train.AtrTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(StopAtStepTen())

    with monkeypatch.context() as patch:  # the interrupted run: stopped in epoch 2, right after checkpoint-10
        patch.setattr(train, "AtrTrainer", InterruptedTrainer)
        _, stopped = run_train(tmp_path / "stopped", tiny_text, *base)
    assert max(logged_losses(stopped)) == 10
    _, resumed = run_train(tmp_path / "resumed", tiny_text, *base, "--resume_from_checkpoint", str(stopped / "checkpoint-10"))
    resumed_losses = logged_losses(resumed)
    for step in (11, 12):
        assert abs(resumed_losses[step] - full_losses[step]) < 1e-6, (step, resumed_losses, full_losses)


def test_a_pretrained_audio_backbone_brings_its_own_preprocessing(tmp_path, tiny_text):
    """--audio_backbone uses the checkpoint's preprocessor_config.json (mel range, hop, truncation), not atr's defaults."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    torch.manual_seed(0)
    clap = ClapConfig(audio_config=tiny_clap_audio_config().to_dict(), text_config=tiny_roberta_config().to_dict())
    ClapModel(clap).save_pretrained(tmp_path / "clap")
    ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=2, fft_window_size=400,
                         frequency_min=50, frequency_max=7000, truncation="rand_trunc").save_pretrained(tmp_path / "clap")
    model_args = train.parse_args(["--config", TINY, "--text_backbone", tiny_text, "--audio_backbone", str(tmp_path / "clap"),
                                   "--audio_encoder_config", "null", "--feature_extractor_config", "null"])[0]
    _, processor = train.build_model_and_processor(model_args)
    fe = processor.feature_extractor
    assert (fe.sampling_rate, fe.hop_length, fe.n_fft, fe.frequency_min, fe.frequency_max, fe.window_s) == (16000, 160, 400, 50, 7000, 2)


def test_persistent_workers_setting_is_ignored_without_workers(tmp_path, tiny_text):
    # the shipped configs set it; --dataloader_num_workers 0 (debugging, benchmarks) must still train
    _, out = run_train(tmp_path, tiny_text, "--dataloader_num_workers", "0", "--dataloader_persistent_workers", "true",
                       "--max_steps", "2", "--eval_split", "", "--test_split", "")
    assert logged_losses(out)[2] > 0 and (out / "model.safetensors").exists()


def test_torch_threads_apply_to_training_only(tmp_path, tiny_text, monkeypatch):
    seen = []
    monkeypatch.setattr(train.AtrTrainer, "training_step", lambda self, *a, **kw: seen.append(torch.get_num_threads()) or torch.tensor(0.0))
    before = torch.get_num_threads()
    wanted = 1 if before > 1 else 2
    run_train(tmp_path, tiny_text, "--synthetic_sizes", "8,0,4", "--eval_split", "", "--max_steps", "2", "--torch_threads", str(wanted))
    assert seen == [wanted, wanted]
    assert torch.get_num_threads() == before  # the test evaluation and whatever runs next get every core back
