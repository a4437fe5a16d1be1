"""Frozen-encoder output cache: same loss as the uncached path, cache contents, invalidation, and train.py end to end."""

import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_atr_config, tiny_tokenizer

from atr import AtrFeatureExtractor, AtrModel, AtrProcessor
from atr.cache import CachedCollator, build_audio_cache, build_text_cache, view_seed
from atr.augmentation import make_noise_augmentation
from atr.collator import AtrCollator
from atr.data import decode_audio, load_audio_text_dataset

ROOT = Path(__file__).resolve().parents[1]
NOISE = {"min_snr_db": 5.0, "max_snr_db": 15.0}
# tests/configs/tiny.yaml's heads with a frozen (random) audio encoder, whose outputs train.py then caches
FROZEN_AUDIO = '{"projection_dim": 16, "head_hidden_size": 32, "head_heads": 4, "cross_modal_heads": 4, "freeze_audio_encoder": true}'


@pytest.fixture(scope="module")
def setup():
    """A tiny frozen-encoder model (Whisper + BERT), its processor and 6 synthetic clips with a clip_index column."""
    torch.manual_seed(0)
    config = tiny_atr_config(audio="whisper", text="bert", text_pooling="mean", freeze_audio_encoder=True, freeze_text_encoder=True)
    model = AtrModel(config).eval()
    extractor = AtrFeatureExtractor.from_audio_config(config.audio_config, window_s=2.0)
    processor = AtrProcessor(extractor, tiny_tokenizer())
    dataset = load_audio_text_dataset("synthetic", "train", load_kwargs={"n": 6, "max_duration_s": 6.0})
    return model, processor, dataset


def with_index(dataset):
    """The training rows the cached collator reads: clip_index plus the original columns."""
    return dataset.add_column("clip_index", list(range(len(dataset))))


def loss_of(model, batch):
    """The hybrid loss of one batch in eval mode (no dropout), as a float."""
    with torch.no_grad():
        return model(**batch).loss.item()


def test_cached_rows_are_read_as_datasets_reads_them_across_record_batches_and_views(tmp_path):
    """The collator's direct Arrow reader gives each row's array as datasets' numpy format does, in any order."""
    from datasets import Array3D, Dataset, Features, List, Value
    from datasets.arrow_writer import ArrowWriter

    from atr.cache import _ColumnRows

    rng = np.random.default_rng(0)
    features = Features({"states": Array3D(shape=(None, 2, 3), dtype="float16"), "frames": List(Value("int64"))})
    rows = [{"states": rng.standard_normal((n, 2, 3)).astype("float16"), "frames": list(range(n))} for n in (1, 3, 2, 4, 1, 2, 3)]
    with ArrowWriter(features=features, path=str(tmp_path / "data.arrow"), writer_batch_size=3) as writer:
        for row in rows:
            writer.write(row)
        writer.finalize()
    cache = Dataset.from_file(str(tmp_path / "data.arrow"))
    assert cache.data.table.column("states").num_chunks == 3  # rows split over record batches
    # the whole file, an index mapping, and a contiguous selection (a table slice across record batches)
    for view in (cache, cache.select([6, 0, 4, 1]), cache.select(range(2, 6))):
        order = [3, 0, 2, 2, 1] if view is cache else [0, 3, 1, 2]
        expected = view.with_format("numpy")[order]
        states = _ColumnRows(view, "states", (2, 3))
        states.take([0])  # built views are dropped when pickled (a DataLoader worker rebuilds them)
        for reader in (states, pickle.loads(pickle.dumps(states))):
            for got, want in zip(reader.take(order), expected["states"]):
                np.testing.assert_array_equal(got, want)
        for got, want in zip(_ColumnRows(view, "frames", ()).take(order), expected["frames"]):
            np.testing.assert_array_equal(got, want)


def test_text_cache_gives_the_uncached_loss(setup, tmp_path):
    model, processor, dataset = setup
    augment = make_noise_augmentation(p=0.5, **NOISE)
    text_cache = build_text_cache(model, processor, dataset, tmp_path, batch_size=4)
    rows = list(with_index(dataset))
    # Same seed: the same captions are drawn and the same noise is mixed into the (uncached) audio.
    cached = CachedCollator(processor, text_cache=text_cache, augment=augment, seed=3)(rows)
    uncached = AtrCollator(processor, training=True, augment=augment, seed=3)(rows)
    assert "input_ids" not in cached and cached["text_hidden_states"].shape[-1] == model.config.text_config.hidden_size
    assert torch.equal(cached["input_features"], uncached["input_features"])
    assert loss_of(model, cached) == pytest.approx(loss_of(model, uncached), abs=1e-5)


def test_full_cache_gives_the_uncached_loss_with_chunk_sampling(setup, tmp_path):
    model, processor, dataset = setup
    text_cache = build_text_cache(model, processor, dataset, tmp_path)
    audio_cache = build_audio_cache(model, processor, dataset, tmp_path, num_views=2, augment=make_noise_augmentation(p=1.0, **NOISE))
    rows = list(with_index(dataset))
    kwargs = {"seed": 5, "processor_kwargs": {"max_train_chunks": 1}}
    # noise_probability=0: every clip uses its clean view, which is what the uncached collator without noise sees.
    collator = CachedCollator(processor, text_cache=text_cache, audio_cache=audio_cache, noise_probability=0.0, **kwargs)
    cached = collator(rows)
    uncached = AtrCollator(processor, training=True, augment=None, **kwargs)(rows)
    assert cached["audio_hidden_states"].shape[:2] == uncached["chunk_mask"].shape == (6, 1)
    assert uncached["chunk_spans"].shape[1] == 1
    assert loss_of(model, cached) == pytest.approx(loss_of(model, uncached), abs=1e-5)
    # Losses across several batches with chunk counts > 1 (no cap) also agree.
    for seed in (0, 1):
        cached = CachedCollator(processor, text_cache=text_cache, audio_cache=audio_cache, noise_probability=0.0, seed=seed)(rows)
        uncached = AtrCollator(processor, training=True, seed=seed)(rows)
        assert uncached["chunk_mask"].shape[1] > 1
        assert loss_of(model, cached) == pytest.approx(loss_of(model, uncached), abs=1e-5)


def test_noisy_views_hold_the_encoder_states_of_the_seeded_augmented_audio(setup, tmp_path):
    model, processor, dataset = setup
    augment = make_noise_augmentation(p=1.0, **NOISE)
    cache = build_audio_cache(model, processor, dataset, tmp_path, num_views=2, seed=7, augment=augment).with_format("torch")
    assert len(cache) == 6 * 3 and cache[4]["clip"] == 1 and cache[4]["view"] == 1
    extractor = processor.feature_extractor
    wave = decode_audio(dataset[1]["audio"], extractor.sampling_rate)
    noisy = AtrCollator(processor, augment=augment)._augment(wave, view_seed(7, 1, 1))
    for view, audio in ((0, wave), (1, noisy)):
        features = extractor(audio, sampling_rate=extractor.sampling_rate, return_tensors="pt")
        with torch.no_grad():
            expected = model.get_audio_encoder_states(features["input_features"][features["chunk_mask"].bool()])
        torch.testing.assert_close(cache[3 + view]["audio_states"], expected, atol=1e-5, rtol=0)
    assert not torch.allclose(cache[3]["audio_states"], cache[4]["audio_states"])
    # noise_probability=1: every row uses a noisy view.
    collator = CachedCollator(processor, audio_cache=cache, noise_probability=1.0)
    assert collator.num_views == 2 and all(collator._view(seed) in (1, 2) for seed in range(20))


def test_cache_is_reused_and_invalidated(setup, tmp_path):
    model, processor, dataset = setup
    augment = make_noise_augmentation(p=1.0, **NOISE)
    build = lambda m=model, p=processor, d=dataset, **kw: build_audio_cache(m, p, d, tmp_path, augment=augment, **{"num_views": 1, **kw})  # noqa: E731
    first = build()
    calls = []
    hook = model.audio_model.register_forward_hook(lambda *args: calls.append(1))
    try:
        assert build().cache_files == first.cache_files and not calls  # reused: the encoder never ran
        # The same data loaded again has the same fingerprint.
        again = load_audio_text_dataset("synthetic", "train", load_kwargs={"n": 6, "max_duration_s": 6.0})
        assert build(d=again).cache_files == first.cache_files and not calls
    finally:
        hook.remove()
    other_model = AtrModel(model.config).eval()  # different random weights
    other_extractor = AtrProcessor(AtrFeatureExtractor.from_audio_config(model.config.audio_config, window_s=1.5), processor.tokenizer)
    variants = [build(num_views=2), build(seed=1), build(m=other_model), build(p=other_extractor), build(d=dataset.select(range(5)))]
    files = {v.cache_files[0]["filename"] for v in variants} | {first.cache_files[0]["filename"]}
    assert len(files) == 6
    text = build_text_cache(model, processor, dataset, tmp_path)
    assert build_text_cache(model, processor, dataset, tmp_path, text_options={"max_length": 4}).cache_files != text.cache_files


def test_rewritten_audio_file_at_the_same_path_rebuilds_the_audio_cache(setup, tmp_path):
    """A local manifest keys its files by (path, size, mtime_ns): re-exported audio is re-encoded, not read stale."""
    import soundfile as sf

    model, processor, _ = setup
    rate = processor.feature_extractor.sampling_rate
    tone = lambda freq, seconds=1.0: 0.3 * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)  # noqa: E731
    for index in range(2):
        sf.write(tmp_path / f"clip{index}.wav", tone(300 + 200 * index), rate)
    (tmp_path / "manifest.csv").write_text("file_name,caption\nclip0.wav,a low tone\nclip1.wav,a high tone\n")
    load = lambda: load_audio_text_dataset(str(tmp_path / "manifest.csv"), "train")  # noqa: E731
    first = build_audio_cache(model, processor, load(), tmp_path / "cache")
    assert build_audio_cache(model, processor, load(), tmp_path / "cache").cache_files == first.cache_files  # reused
    sf.write(tmp_path / "clip1.wav", tone(1500, seconds=1.5), rate)  # re-exported: same path, new audio
    rebuilt = build_audio_cache(model, processor, load(), tmp_path / "cache")
    assert rebuilt.cache_files != first.cache_files
    extractor = processor.feature_extractor
    features = extractor(decode_audio(str(tmp_path / "clip1.wav"), rate), sampling_rate=rate, return_tensors="pt")
    with torch.no_grad():
        expected = model.get_audio_encoder_states(features["input_features"][features["chunk_mask"].bool()])
    torch.testing.assert_close(rebuilt.with_format("torch")[1]["audio_states"], expected, atol=1e-5, rtol=0)


def test_two_concurrent_builds_of_one_cache_encode_once_and_both_read_it(setup, tmp_path):
    """The second build waits on the first one's file lock, then reads its finished cache; no temp folder is left."""
    import threading
    import time

    model, processor, dataset = setup
    calls, started = [], threading.Event()

    def slow_first_batch(*args):
        calls.append(1)
        if not started.is_set():
            started.set()
            time.sleep(1.0)  # the other build starts while this one is mid-write

    hook = model.text_model.register_forward_hook(slow_first_batch)
    results = {}
    try:
        first = threading.Thread(target=lambda: results.setdefault("first", build_text_cache(model, processor, dataset, tmp_path, batch_size=8)))
        first.start()
        started.wait(timeout=60)
        results["second"] = build_text_cache(model, processor, dataset, tmp_path, batch_size=8)
        first.join()
    finally:
        hook.remove()
    captions = sum(len(c) for c in dataset["captions"])
    assert len(calls) == -(-captions // 8)  # one build's batches: the second build never ran the encoder
    assert results["first"].cache_files == results["second"].cache_files and len(results["second"]) == captions
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_errors_name_the_problem(setup, tmp_path):
    model, processor, dataset = setup
    trainable = AtrModel(tiny_atr_config(audio="whisper", text="bert", freeze_audio_encoder=False))
    with pytest.raises(ValueError, match="frozen audio encoder"):
        build_audio_cache(trainable, processor, dataset, tmp_path)
    states = torch.zeros(2, 1, 50, 16)
    with pytest.raises(ValueError, match="bypasses an encoder that is being trained"):
        trainable.train()(audio_hidden_states=states, input_ids=torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="both input_features and audio_hidden_states"):
        model(input_features=torch.zeros(2, 1, 80, 100), audio_hidden_states=states)
    with pytest.raises(ValueError, match="clip_index"):
        CachedCollator(processor, text_cache=build_text_cache(model, processor, dataset, tmp_path))(list(dataset))
    with pytest.raises(ValueError, match="streaming"):
        build_text_cache(model, processor, dataset.to_iterable_dataset(), tmp_path)


def test_train_py_with_cached_encoder_outputs(tmp_path, tiny_text):
    sys.path.insert(0, str(ROOT))
    import train
    from test_train import TINY

    base = ["--config", TINY, "--text_backbone", tiny_text, "--eval_split", "", "--max_steps", "4", "--save_strategy", "no",
            "--encoder_cache_dir", str(tmp_path / "cache"), "--cache_encoder_outputs"]
    trainer, results = train.main([*base, "--output_dir", str(tmp_path / "a"), "--model_config", FROZEN_AUDIO, "--cache_num_views", "1"])
    assert isinstance(trainer.data_collator, CachedCollator) and trainer.data_collator.num_views == 1
    assert trainer.data_collator.text_cache is not None and 0 <= results["test_t2a_mAP10"] <= 1
    assert np.isfinite([log["loss"] for log in trainer.state.log_history if "loss" in log]).all()
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir() if p.is_dir()) == ["audio", "text"]
    # The tiny config trains its audio encoder: only the (frozen) text encoder's outputs are cached.
    trainer, _ = train.main([*base, "--output_dir", str(tmp_path / "b")])
    assert trainer.data_collator.audio_cache is None and trainer.data_collator.text_cache is not None


def test_a_clean_only_audio_cache_is_shared_by_every_seed(setup):
    from atr.cache import audio_cache_fingerprint

    model, processor, dataset = setup
    # Without noisy views the stored states do not depend on the seed, so seeds 1 and 2 reuse seed 0's build.
    assert audio_cache_fingerprint(model, processor, dataset, 0, 0) == audio_cache_fingerprint(model, processor, dataset, 0, 1)
    assert audio_cache_fingerprint(model, processor, dataset, 2, 0, NOISE) != audio_cache_fingerprint(model, processor, dataset, 2, 1, NOISE)


def test_a_killed_builds_temporary_folder_is_removed_by_the_next_build(setup, tmp_path):
    model, processor, dataset = setup
    cache = build_text_cache(model, processor, dataset, tmp_path)
    folder = Path(cache.cache_files[0]["filename"]).parent
    shutil.rmtree(folder)
    stale = tmp_path / f"{folder.name}.tmp-killed"  # what a SIGKILL mid-build leaves (its except clause never ran)
    stale.mkdir()
    (stale / "data.arrow").write_bytes(b"partial")
    build_text_cache(model, processor, dataset, tmp_path)
    assert not stale.exists() and not list(tmp_path.glob("*.tmp-*"))


def test_speed_perturbation_reaches_the_cached_views(tmp_path, monkeypatch, tiny_text):
    sys.path.insert(0, str(ROOT))
    import train
    from test_train import TINY

    import atr.cache

    builds = []
    build = atr.cache.build_audio_cache
    monkeypatch.setattr(atr.cache, "build_audio_cache", lambda *args, **kwargs: builds.append(kwargs["augment"]) or build(*args, **kwargs))
    base = ["--config", TINY, "--text_backbone", tiny_text, "--eval_split", "", "--max_steps", "2", "--save_strategy", "no",
            "--model_config", FROZEN_AUDIO, "--encoder_cache_dir", str(tmp_path / "cache"), "--cache_encoder_outputs", "--cache_num_views", "2"]
    plain, _ = train.main([*base, "--output_dir", str(tmp_path / "a")])
    sped, _ = train.main([*base, "--output_dir", str(tmp_path / "b"), "--speed_perturbation", "0.3"])
    plain_cache, sped_cache = plain.data_collator.audio_cache, sped.data_collator.audio_cache
    assert plain_cache.cache_files != sped_cache.cache_files  # the speed is part of the cache's key
    clean = lambda cache: [row["audio_states"] for row in cache if row["view"] == 0]  # noqa: E731
    assert all(np.allclose(a, b, atol=1e-4) for a, b in zip(clean(plain_cache), clean(sped_cache), strict=True))  # view 0 stays clean
    second = np.sin(np.linspace(0, 440 * 2 * np.pi, 16000)).astype(np.float32)
    lengths = {}
    for name, augment in zip(("plain", "sped"), builds):
        np.random.seed(0)
        views = [augment(samples=second, sample_rate=16000) for _ in range(20)]
        assert all(not np.array_equal(view[: len(second)], second) for view in views)  # every view is noisy
        lengths[name] = {len(view) for view in views}
    assert lengths["plain"] == {16000} and 16000 in lengths["sped"] and min(lengths["sped"]) >= 16000 * 0.7 - 1 and len(lengths["sped"]) > 5
    with pytest.raises(ValueError, match="--speed_perturbation.*--cache_num_views"):
        train.main([*base, "--output_dir", str(tmp_path / "c"), "--speed_perturbation", "0.3", "--cache_num_views", "0"])
