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

TINY = str(ROOT / "tests" / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def study_args(tmp_path_factory):
    """Command-line arguments of a minimal study: a tiny study encoder (trained once, 2 steps), 12 train and 8 test clips."""
    root = tmp_path_factory.mktemp("studies")
    text = root / "tiny-bert"
    torch.manual_seed(0)
    BertModel(tiny_bert_config()).save_pretrained(text)
    tiny_tokenizer().save_pretrained(text)
    args = ["--encoder", str(root / "encoder"), "--encoder_config", TINY, "--encoder_steps", "2", "--text_backbone", str(text),
            "--synthetic_sizes", "12,0,8", "--samples_seen", "8", "--seeds", "0", "--cache_dir", str(root / "cache"), "--threads", "1"]
    _study.ensure_encoder(_study.study_parser("", "x").parse_args(args))
    return args, root


def run_study(module_name, study_args, extra):
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
    return rows, results, output_dir


def test_batch_size_study_runs_both_losses_at_each_batch_size(study_args):
    rows, results, _ = run_study("study_batch_size", study_args, ["--batch_sizes", "4,8"])
    assert {(r["loss"], r["batch_size"]) for r in rows} == {(l, b) for l in ("hybrid", "contrastive only") for b in (4, 8)}
    # the same samples seen at every batch size
    assert {(r["batch_size"], r["steps"]) for r in results["runs"]} == {(4, 2), (8, 1)}


def test_ablation_study_runs_every_variant(study_args):
    rows, results, _ = run_study("study_ablation", study_args, ["--batch_size", "4"])
    assert [r["variant"] for r in rows] == list(__import__("study_ablation").VARIANTS)
    assert all(run["steps"] == 2 for run in results["runs"])


def test_noise_study_trains_with_and_without_noise_and_tests_every_condition(study_args):
    rows, _, _ = run_study("study_noise", study_args, ["--batch_size", "4", "--noisy_copies", "1", "--test_snrs", "10,5"])
    assert {(r["training"], r["test"]) for r in rows} == {(t, c) for t in ("clean", "noise-augmented") for c in ("clean", "10 dB", "5 dB")}


def test_noise_study_test_noise_is_at_the_exact_snr():
    noise = __import__("study_noise")
    wave = np.sin(np.linspace(0, 200, 16000)).astype(np.float32)
    noisy = noise.fixed_noise("white", 5.0)(wave, 3)
    snr = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean((noisy - wave).astype(np.float64) ** 2))
    assert snr == pytest.approx(5.0, abs=0.01)
    assert np.array_equal(noisy, noise.fixed_noise("white", 5.0)(wave, 3))  # seeded per clip


def test_cached_heads_give_the_same_embeddings_as_the_full_model(study_args):
    """The cache path is exact: heads over cached encoder outputs embed like the model run on the features."""
    args, root = study_args
    model, processor = _study.ensure_encoder(_study.study_parser("", "x").parse_args(args))
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(int(16000 * s)).astype(np.float32) * 0.1 for s in (3.0, 7.5)]
    captions = [["a dog barks", "rain"], ["a siren"]]
    heads = _study.head_model(model, seed=0)
    heads.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(("audio_model.", "text_model."))}, strict=False)
    audio = _study.encode_audio(model, processor, waves)
    text = _study.encode_text(model, processor, captions)
    audio_embeds, text_embeds = _study.embed_cached(heads, {**audio, "tokens": audio["tokens"].float()}, {**text, "tokens": text["tokens"].float()})
    inputs = processor(audio=waves, text=[c for clip in captions for c in clip], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        expected_audio = model.get_audio_features(input_features=inputs["input_features"], chunk_mask=inputs["chunk_mask"]).pooler_output
        expected_text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).pooler_output
    # the cache stores float16 tokens: equal to fp16 precision
    torch.testing.assert_close(audio_embeds, expected_audio, atol=5e-3, rtol=0)
    torch.testing.assert_close(text_embeds, expected_text, atol=5e-3, rtol=0)


def test_long_form_study_compares_chunking_with_a_single_crop(study_args):
    rows, _, output_dir = run_study("study_long_form", study_args, ["--batch_size", "4", "--min_long_s", "12", "--max_long_s", "15"])
    assert [r["input"] for r in rows] == ["all chunks + attention pooling", "all chunks + mean pooling", "first 10 s only", "random 10 s only"]
    assert "overlaps the first 10 s" in (output_dir / "results.md").read_text()


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


def test_heads_use_the_papers_method_whatever_the_encoder_was_trained_with(study_args):
    args, _ = study_args
    encoder, _ = _study.ensure_encoder(_study.study_parser("", "x").parse_args(args))
    assert encoder.config.lambda_cosine == 0.0 and not encoder.config.cross_modal_attention  # the study encoder's recipe
    heads = _study.head_model(encoder, seed=0)
    assert (heads.config.lambda_cosine, heads.config.lambda_l1, heads.config.lambda_contrastive) == (1.0, 1.0, 1.0)
    assert heads.config.cross_modal_attention and hasattr(heads, "audio_to_text")
    assert not _study.head_model(encoder, seed=0, cross_modal_attention=False).config.cross_modal_attention
