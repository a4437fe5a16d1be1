"""evaluate.py end to end: exact-SNR noise conditions, outputs, --compare vs scipy, the ClapModel adapter, zero-shot, card."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.stats import wilcoxon
from tiny import tiny_bert_config, tiny_clap_audio_config, tiny_roberta_config, tiny_tokenizer
from transformers import BertModel, ClapConfig, ClapFeatureExtractor, ClapModel

from atr import evaluation, loading

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train  # noqa: E402

# Imported under another name: `evaluate` is the Hugging Face library.
_spec = importlib.util.spec_from_file_location("atr_evaluate_cli", ROOT / "evaluate.py")
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)

RATE = 16000
# The tiny 16-mel CLAP extractor leaves some mel filters empty; harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")
EVENTS = {"dog bark": 440.0, "siren": 900.0, "bell": 1500.0, "engine": 120.0}


def write_split(folder, count, seed, label_column=False):
    """`count` 1-2 s tone clips with 2 captions each (or a `label` column) and a metadata.csv."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["file_name,label" if label_column else "file_name,caption_1,caption_2"]
    for index in range(count):
        event, freq = list(EVENTS.items())[index % len(EVENTS)]
        t = np.arange(int(RATE * rng.uniform(1.0, 2.0))) / RATE
        wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))
        sf.write(folder / f"clip{index}.wav", wave.astype(np.float32), RATE)
        lines.append(f"clip{index}.wav,{event}" if label_column else f"clip{index}.wav,a {event},the {event} sound")
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """An audiofolder with 8 train and 8 test clips."""
    root = tmp_path_factory.mktemp("data")
    write_split(root / "train", 8, seed=1)
    write_split(root / "test", 8, seed=2)
    return root


@pytest.fixture(scope="module")
def atr_model(tmp_path_factory, data):
    """A tiny atr model trained for 2 steps by train.py (with its model card)."""
    tmp = tmp_path_factory.mktemp("atr")
    torch.manual_seed(0)
    BertModel(tiny_bert_config()).save_pretrained(tmp / "bert")
    tiny_tokenizer().save_pretrained(tmp / "bert")
    out = tmp / "model"
    train.main([
        "--config", str(ROOT / "tests" / "configs" / "tiny.yaml"), "--text_backbone", str(tmp / "bert"), "--output_dir", str(out),
        "--dataset", str(data), "--eval_split", "", "--test_split", "", "--max_steps", "2", "--noise_probability", "0",
    ])
    return out


@pytest.fixture(scope="module")
def clap_model(tmp_path_factory):
    """A tiny random transformers ClapModel saved with its feature extractor (16 kHz, 2 s window) and a tokenizer."""
    path = tmp_path_factory.mktemp("clap")
    torch.manual_seed(0)
    config = ClapConfig(audio_config=tiny_clap_audio_config().to_dict(), text_config=tiny_roberta_config().to_dict(), projection_dim=16)
    ClapModel(config).save_pretrained(path)
    ClapFeatureExtractor(
        feature_size=16, sampling_rate=RATE, hop_length=160, max_length_s=2, fft_window_size=1024, truncation="rand_trunc"  # as laion/clap-htsat-unfused
    ).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def evaluate_cli(*args):
    """Run evaluate.main in this process."""
    return cli.main([*args, "--no_progress"])


@pytest.mark.parametrize("noise", ["white", "pink", "folder"])
def test_noise_conditions_hit_the_target_snr(tmp_path, noise):
    clips = tmp_path / "clips"
    write_split(clips, 3, seed=0)
    if noise == "folder":
        (tmp_path / "noise").mkdir()
        # Shorter than the clips: the recording is looped to length.
        sf.write(tmp_path / "noise" / "hum.wav", 0.1 * np.random.default_rng(0).standard_normal(RATE // 2).astype(np.float32), RATE)
        noise = str(tmp_path / "noise")
    rows = [{"audio": {"path": str(clips / f"clip{i}.wav"), "bytes": None}, "captions": ["x"], "eval_index": i} for i in range(3)]

    class Capture:
        sampling_rate = RATE

        def __call__(self, rows):
            return [row["audio"]["array"] for row in rows]

    source = evaluation.load_noise(noise, RATE)
    for snr in (5.0, 10.0, 15.0):
        noisy = evaluation.NoisyEvalCollator(Capture(), source, snr, seed=3)(rows)
        again = evaluation.NoisyEvalCollator(Capture(), source, snr, seed=3)(rows)
        other_seed = evaluation.NoisyEvalCollator(Capture(), source, snr, seed=4)(rows)
        for row, wave, same, other in zip(rows, noisy, again, other_seed):
            clean = sf.read(row["audio"]["path"], dtype="float32")[0]
            assert abs(evaluation.realised_snr_db(clean, wave) - snr) < 0.1
            np.testing.assert_array_equal(wave, same)  # deterministic by seed
            assert not np.array_equal(wave, other)


def test_parse_conditions_and_errors():
    assert evaluation.parse_conditions(["clean", "15", "7.5"]) == [None, 15.0, 7.5]
    with pytest.raises(ValueError, match="'loud' is neither 'clean' nor a number"):
        evaluation.parse_conditions(["loud"])
    with pytest.raises(ValueError, match="neither one of"):
        evaluation.load_noise("no/such/folder", RATE)


def test_end_to_end_outputs_compare_and_model_card(tmp_path, data, atr_model, clap_model):
    card_before = (atr_model / "README.md").read_text()
    # The real command line, as a user runs it from the repo root (where evaluate.py shadows the evaluate library).
    subprocess.run(
        [sys.executable, "evaluate.py", "--model", str(atr_model), "--dataset", str(data), "--split", "test", "--snr", "clean", "10",
         "--noise", "pink", "--batch_size", "4", "--output_dir", str(tmp_path / "atr"), "--update_model_card", "--no_progress"],
        check=True, cwd=ROOT,
    )
    out = tmp_path / "atr"
    results = json.loads((out / "results.json").read_text())
    assert [c["condition"] for c in results["conditions"]] == ["clean", "pink 10 dB"]
    assert [c["snr_db"] for c in results["conditions"]] == [None, 10.0]
    assert results["model_type"] == "atr" and results["split"] == "test" and results["seed"] == 0
    assert results["atr_version"] and results["_library_versions"]["torch"] and results["_evaluate_version"]
    clean = results["conditions"][0]
    assert len(clean["per_query"]["t2a"]["AP10"]) == 16 and len(clean["per_query"]["a2t"]["AP10"]) == 8
    assert clean["metrics"]["t2a_mAP10"] == pytest.approx(np.mean(clean["per_query"]["t2a"]["AP10"]))
    table = (out / "results.md").read_text()
    assert "| condition | T2A R@1 | T2A R@5 | T2A R@10 | T2A mAP@10 | A2T R@1 | A2T R@5 | A2T R@10 | A2T mAP@10 |" in table
    assert f"| pink 10 dB | {results['conditions'][1]['metrics']['t2a_R1']:.4f} |" in table
    for name in ("metrics_vs_snr_t2a.png", "metrics_vs_snr_a2t.png", "recall_at_k.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"

    # The card gets a model-index entry per metric and condition; the rest of it stays.
    from huggingface_hub import ModelCard

    card = ModelCard.load(atr_model / "README.md")
    configs = {(r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
    assert configs[("t2a_mAP10", "pink 10 dB")] == pytest.approx(results["conditions"][1]["metrics"]["t2a_mAP10"], abs=5e-5)  # card values are rounded to 4 places
    assert card_before.split("## Evaluation")[0].split("---")[-1] in card.text

    # Results are never overwritten silently.
    with pytest.raises(FileExistsError, match="--overwrite"):
        evaluate_cli("--model", str(atr_model), "--dataset", str(data), "--output_dir", str(out))

    # The same protocol for a ClapModel; then the significance test against a direct scipy call.
    evaluate_cli("--model", str(clap_model), "--dataset", str(data), "--split", "test", "--snr", "clean", "10", "--noise", "pink",
                 "--batch_size", "4", "--output_dir", str(tmp_path / "clap"))
    clap = json.loads((tmp_path / "clap" / "results.json").read_text())
    assert clap["model_type"] == "clap" and "mean of the L2-normalised chunk embeddings" in clap["audio_protocol"]
    assert clap["dataset_fingerprint"] == results["dataset_fingerprint"]
    rows = evaluate_cli("--compare", str(out / "results.json"), str(tmp_path / "clap" / "results.json"), "--output_dir", str(tmp_path / "cmp"))
    assert len(rows) == 2 * 2 * 4  # conditions x directions x metrics
    tested = 0
    for row in rows:
        condition = [c["condition"] for c in results["conditions"]].index(row["condition"])
        key = evaluation.PER_QUERY_METRIC[row["metric"]]
        a = results["conditions"][condition]["per_query"][row["direction"]][key]
        b = clap["conditions"][condition]["per_query"][row["direction"]][key]
        if row["num_differing"] == 0:
            assert row["p_value"] is None and a == b  # nothing to test
            continue
        assert row["p_value"] == pytest.approx(wilcoxon(a, b).pvalue, rel=1e-12)
        tested += 1
    assert tested > 0
    assert "| p-value |" in (tmp_path / "cmp" / "comparison.md").read_text()


def test_compare_refuses_unpaired_results(tmp_path):
    base = {"task": "retrieval", "dataset": "d", "split": "test", "model": "m", "conditions": []}
    for name, fingerprint in (("a", "1"), ("b", "2")):
        (tmp_path / f"{name}.json").write_text(json.dumps({**base, "dataset_fingerprint": fingerprint}))
    with pytest.raises(ValueError, match="different rows"):
        evaluate_cli("--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"))


def test_clap_adapter_is_deterministic_and_matches_clap_model(clap_model):
    model, processor, info = loading.load_model(str(clap_model))
    rng = np.random.default_rng(0)
    short = (0.3 * np.sin(np.arange(RATE * 1.5) * 0.2) + 0.01 * rng.standard_normal(int(RATE * 1.5))).astype(np.float32)
    long = (0.3 * np.sin(np.arange(RATE * 5) * 0.05) + 0.01 * rng.standard_normal(RATE * 5)).astype(np.float32)
    batch = processor(audio=[short, long], sampling_rate=RATE)
    assert batch["chunk_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]  # 5 s in 2 s windows: 3 equal chunks, no random crop
    with torch.no_grad():
        embeds = model.get_audio_features(**batch).pooler_output
        again = model.get_audio_features(**processor(audio=[short, long], sampling_rate=RATE)).pooler_output
        # A short clip is exactly what ClapModel sees through its own feature extractor.
        native = processor.feature_extractor(short, sampling_rate=RATE, return_tensors="pt")
        reference = model.clap.get_audio_features(input_features=native["input_features"]).pooler_output
        # A long clip is the mean of its chunks' embeddings.
        packed = processor.chunker.chunk_spans(long)
        chunks = processor.feature_extractor([np.concatenate([long[s:e] for s, e in spans]) for spans in packed], sampling_rate=RATE, return_tensors="pt")
        chunk_mean = model.clap.get_audio_features(input_features=chunks["input_features"]).pooler_output.mean(0)
    torch.testing.assert_close(embeds, again, rtol=0, atol=0)
    torch.testing.assert_close(embeds[0], reference[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(embeds[1], torch.nn.functional.normalize(chunk_mean, dim=-1), rtol=1e-5, atol=1e-5)
    text = model.get_text_features(**processor(text=["a dog bark"])).pooler_output
    assert text.shape == (1, 16) and torch.allclose(text.norm(dim=-1), torch.ones(1))


def test_zero_shot_on_a_labelled_audiofolder(tmp_path, atr_model):
    write_split(tmp_path / "esc" / "test", 8, seed=5, label_column=True)
    results = evaluate_cli("--model", str(atr_model), "--dataset", str(tmp_path / "esc"), "--task", "zero-shot", "--label_column", "label",
                           "--snr", "clean", "--output_dir", str(tmp_path / "out"))
    assert results["class_names"] == sorted(EVENTS) and results["prompt_template"] == "This is a sound of {label}."
    metrics = results["conditions"][0]["metrics"]
    assert metrics["accuracy"] == metrics["R1"] and 0 <= metrics["mAP10"] <= 1
    assert len(results["conditions"][0]["per_query"]["zero_shot"]["rank"]) == 8
    assert "| condition | Acc | R@5 | R@10 | mAP@10 |" in (tmp_path / "out" / "results.md").read_text()
    assert (tmp_path / "out" / "recall_at_k.png").exists()

    # Integer labels with the names given in index order score the same as the names themselves.
    names = sorted(EVENTS)
    meta = (tmp_path / "esc" / "test" / "metadata.csv").read_text().splitlines()
    ints = [meta[0]] + [f"{line.split(',')[0]},{names.index(line.split(',')[1])}" for line in meta[1:]]
    write_split(tmp_path / "esc_int" / "test", 8, seed=5, label_column=True)
    (tmp_path / "esc_int" / "test" / "metadata.csv").write_text("\n".join(ints) + "\n")
    by_index = evaluate_cli("--model", str(atr_model), "--dataset", str(tmp_path / "esc_int"), "--task", "zero-shot", "--snr", "clean",
                            "--class_names", *names)
    assert by_index["conditions"][0]["metrics"]["mAP10"] == pytest.approx(metrics["mAP10"])
    with pytest.raises(ValueError, match="no class names are known"):
        evaluate_cli("--model", str(atr_model), "--dataset", str(tmp_path / "esc_int"), "--task", "zero-shot", "--snr", "clean")


def test_the_script_does_not_shadow_the_evaluate_library():
    # Same sys.path as `python evaluate.py` (the repo root first), then the script's top level, then `import evaluate`.
    code = (
        "import runpy, sys; sys.path.insert(0, sys.argv[1]); runpy.run_path(sys.argv[1] + '/evaluate.py', run_name='cli'); "
        "import evaluate; print(evaluate.__file__); assert hasattr(evaluate, 'load')"
    )
    result = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, cwd="/", check=True)
    assert "site-packages" in result.stdout or "evaluate/__init__" in result.stdout


def test_clap_adapter_on_a_fused_checkpoint_is_deterministic(tmp_path):
    # Fused CLAP marks one random clip "longer" in its extractor; the adapter passes is_longer=False for every chunk.
    audio_config = tiny_clap_audio_config()
    audio_config.enable_fusion = True
    config = ClapConfig(audio_config=audio_config.to_dict(), text_config=tiny_roberta_config().to_dict(), projection_dim=16)
    torch.manual_seed(0)
    ClapModel(config).save_pretrained(tmp_path)
    ClapFeatureExtractor(feature_size=16, sampling_rate=RATE, hop_length=160, max_length_s=2, fft_window_size=1024, truncation="fusion").save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model, processor, _ = loading.load_model(str(tmp_path))
    clip = 0.1 * np.random.default_rng(0).standard_normal(RATE * 5).astype(np.float32)
    with torch.no_grad():
        first = model.get_audio_features(**processor(audio=[clip, clip[:RATE]], sampling_rate=RATE)).pooler_output
        second = model.get_audio_features(**processor(audio=[clip, clip[:RATE]], sampling_rate=RATE)).pooler_output
    assert first.shape == (2, 16)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
