"""Search at scale: exact top-k vs a full sort, FAISS backends (skipped without faiss), the resumable index and the CLI."""

import builtins
import json

import numpy as np
import pytest
import torch

from atr import search
from atr.search import index as search_index
from atr.data import decode_audio
from atr.search import AudioIndex, build_faiss_index, exact_search, faiss_search


def unit(rows, dim=32, seed=0):
    """Random unit vectors (rows, dim)."""
    x = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(x, dim=1)


def full_sort(queries, corpus, k):
    """Reference: a stable full sort of every score (ties to the lower index)."""
    scores, indices = (queries @ corpus.T).sort(dim=1, descending=True, stable=True)
    return scores[:, :k], indices[:, :k]


# ---- exact search -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [7, 64, 100_000])
def test_exact_search_equals_full_sort(block_size):
    queries, corpus = unit(9, seed=1), unit(1000, seed=2)
    scores, indices = exact_search(queries, corpus, k=10, block_size=block_size)
    ref_scores, ref_indices = full_sort(queries, corpus, 10)
    assert indices.shape == (9, 10)
    assert torch.equal(indices, ref_indices)
    torch.testing.assert_close(scores, ref_scores)


@pytest.mark.parametrize("block_size", [3, 30, 1000])
def test_exact_search_breaks_ties_by_index_like_a_stable_sort(block_size):
    # Small integers: every score is exact in float32, so many exact ties, across and inside blocks.
    gen = torch.Generator().manual_seed(0)
    corpus = torch.randint(-1, 2, (60, 4), generator=gen).float()
    corpus[40:50] = corpus[0]  # duplicates in later blocks must rank after the original
    queries = torch.randint(-1, 2, (12, 4), generator=gen).float()
    scores, indices = exact_search(queries, corpus, k=17, block_size=block_size)
    ref_scores, ref_indices = full_sort(queries, corpus, 17)
    assert torch.equal(indices, ref_indices)
    assert torch.equal(scores, ref_scores)


def test_exact_search_accepts_numpy_one_query_and_caps_k():
    corpus = unit(5)
    scores, indices = exact_search(corpus[3].numpy(), corpus.numpy(), k=50)
    assert indices.shape == (1, 5)  # k capped at N
    assert indices[0, 0] == 3 and scores[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_exact_search_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"queries have shape \(2, 8\) and corpus \(5, 32\)"):
        exact_search(unit(2, dim=8), unit(5), k=3)
    with pytest.raises(ValueError, match="k is 0"):
        exact_search(unit(2), unit(5), k=0)


# ---- FAISS ----------------------------------------------------------------------------------------------------


def test_faiss_missing_raises_install_hint(monkeypatch):
    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ImportError, match=r"pip install 'atr\[faiss\]'.*backend='exact'"):
        build_faiss_index(unit(10).numpy(), "flat")


@pytest.mark.parametrize("kind", ["flat", "pq", "hnsw"])
def test_faiss_backends_match_exact_top10(kind):
    pytest.importorskip("faiss")
    queries, corpus = unit(20, dim=64, seed=3), unit(2000, dim=64, seed=4)
    _, exact = exact_search(queries, corpus, k=10)
    index = build_faiss_index(corpus.numpy(), kind)
    scores, indices = faiss_search(index, queries, k=10, corpus=corpus if kind == "pq" else None)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(indices.tolist(), exact.tolist())])
    assert indices.shape == (20, 10)
    assert recall >= (1.0 if kind == "flat" else 0.95)
    # scores are exact inner products of the returned rows, best first
    expected = (queries[:, None, :] * corpus[indices]).sum(-1)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_faiss_search_with_k_beyond_corpus_returns_only_real_rows():
    pytest.importorskip("faiss")
    corpus = unit(6, dim=16)
    scores, indices = faiss_search(build_faiss_index(corpus.numpy(), "flat"), corpus[:2], k=10)
    assert indices.shape == (2, 6) and indices.min() >= 0 and torch.isfinite(scores).all()


def test_unknown_faiss_kind_is_refused():
    pytest.importorskip("faiss")
    with pytest.raises(ValueError, match="faiss index kind is 'ivf'"):
        build_faiss_index(unit(10).numpy(), "ivf")


# ---- the on-disk index with a tiny model --------------------------------------------------------------------

RATE = 8000  # the tiny extractor's rate; files are written at 16 kHz so building also resamples


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random AtrModel + processor saved like a Hub checkpoint."""
    from atr import AtrFeatureExtractor, AtrModel, AtrProcessor
    from tests.tiny import tiny_atr_config, tiny_tokenizer

    torch.manual_seed(0)
    config = tiny_atr_config(text="bert")
    extractor = AtrFeatureExtractor.from_audio_config(config.audio_config, sampling_rate=RATE, window_s=1.0, frequency_max=4000)
    path = tmp_path_factory.mktemp("model")
    AtrModel(config).save_pretrained(path)
    AtrProcessor(extractor, tiny_tokenizer()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_and_processor(model_dir):
    from transformers import AutoModel, AutoProcessor

    return AutoModel.from_pretrained(model_dir), AutoProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    """Five short 16 kHz recordings (one stereo, one in a sub-folder) and a non-audio file that must be skipped."""
    import soundfile as sf

    folder = tmp_path_factory.mktemp("audio")
    (folder / "sub").mkdir()
    rng = np.random.default_rng(0)
    names = ["a.wav", "b.flac", "c.wav", "sub/d.wav", "e.wav"]
    for i, name in enumerate(names):
        t = np.arange(int(16000 * (0.6 + 0.5 * i))) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 300 * i) * t) + 0.05 * rng.standard_normal(t.size)
        if name == "c.wav":
            wave = np.stack([wave, 0.5 * wave], axis=1)
        sf.write(folder / name, wave.astype(np.float32), 16000)
    (folder / "notes.txt").write_text("not audio")
    return folder


def reference_embeddings(model, processor, paths):
    """Audio embeddings computed directly, file by file, without the index."""
    rows = []
    for path in paths:
        inputs = processor(audio=decode_audio(str(path), RATE), sampling_rate=RATE, return_tensors="pt")
        with torch.inference_mode():
            rows.append(model.get_audio_features(inputs["input_features"], inputs["chunk_mask"]).pooler_output)
    return torch.cat(rows)


def test_build_embeds_folder_and_search_ranks_by_similarity(tmp_path, model_and_processor, audio_dir):
    model, processor = model_and_processor
    index = AudioIndex.build(model, processor, audio_dir, tmp_path / "index", batch_size=2, shard_size=3, progress=False)
    expected_paths = sorted(str(p.resolve()) for p in audio_dir.rglob("*.*") if p.suffix in (".wav", ".flac"))
    assert index.items == expected_paths and len(index) == 5
    assert index.names == ["a.wav", "b.flac", "c.wav", "e.wav", "sub/d.wav"]  # stored relative to the folder
    torch.testing.assert_close(index.embeddings, reference_embeddings(model, processor, expected_paths), atol=1e-5, rtol=1e-4)
    # each chunk's own embedding is stored unit-length in float16
    assert index.chunk_embeddings.dtype == torch.float16 and len(index.chunk_embeddings) == int(index.chunk_offsets[-1])
    torch.testing.assert_close(index.chunk_embeddings.float().norm(dim=1), torch.ones(len(index.chunk_embeddings)), atol=2e-3, rtol=0)

    queries = ["a dog bark", "rain then a siren"]
    results = index.search(queries, k=3)
    text = index.embed_text(queries)
    for query_embed, hits in zip(text, results):
        scores = (index.embeddings @ query_embed).tolist()
        assert [h.index for h in hits] == sorted(range(5), key=lambda i: (-scores[i], i))[:3]
        for hit in hits:
            assert hit.path == expected_paths[hit.index]
            assert hit.score == pytest.approx(scores[hit.index], abs=1e-5)
            assert 0.0 <= hit.start < hit.end <= 3.0  # the matched chunk's span, inside the recording
            first, last = index.chunk_offsets[hit.index], index.chunk_offsets[hit.index + 1]
            assert hit.chunk_score == pytest.approx(float((index.chunk_embeddings[first:last].float() @ query_embed).max()), abs=1e-5)
    assert [h.index for h in index.search("a dog bark", k=3)] == [h.index for h in results[0]]


def test_interrupted_build_resumes_from_last_finished_shard(tmp_path, model_and_processor, audio_dir, monkeypatch):
    model, processor = model_and_processor
    out = tmp_path / "index"
    calls = []
    real_load = search_index.decode_audio

    def load_then_stop(source, rate):
        calls.append(source)
        if len(calls) == 4:  # inside the second shard (items 2-3)
            raise KeyboardInterrupt
        return real_load(source, rate)

    monkeypatch.setattr(search_index, "decode_audio", load_then_stop)
    with pytest.raises(KeyboardInterrupt):
        AudioIndex.build(model, processor, audio_dir, out, batch_size=1, shard_size=2, progress=False)
    assert len(list(out.glob("shard-*.safetensors"))) == 1 and not list(out.glob("*.tmp"))  # no half-written shard
    with pytest.raises(ValueError, match="incomplete .*run AudioIndex.build .* again"):
        AudioIndex.load(out, model, processor)

    calls.clear()
    monkeypatch.setattr(search_index, "decode_audio", lambda s, r: calls.append(s) or real_load(s, r))
    resumed = AudioIndex.build(model, processor, audio_dir, out, batch_size=1, shard_size=2, progress=False)
    assert [c.rsplit("/", 1)[-1] for c in calls] == ["c.wav", "e.wav", "d.wav"]  # only what the first run did not finish
    torch.testing.assert_close(resumed.embeddings, reference_embeddings(model, processor, resumed.items), atol=1e-5, rtol=1e-4)

    calls.clear()
    again = AudioIndex.build(model, processor, audio_dir, out, batch_size=1, shard_size=2, progress=False)
    assert calls == [] and again.last_update["embedded"] == []  # a finished index is reused as it is


def test_index_built_with_another_model_is_refused(tmp_path, model_and_processor, audio_dir):
    from atr import AtrModel

    model, processor = model_and_processor
    out = tmp_path / "index"
    AudioIndex.build(model, processor, audio_dir, out, progress=False)
    torch.manual_seed(1)
    other = AtrModel(model.config)  # same architecture, other weights
    with pytest.raises(ValueError, match="built with another model or feature settings.*overwrite=True"):
        AudioIndex.load(out, other, processor)
    with pytest.raises(ValueError, match="built with another model"):
        AudioIndex.build(other, processor, audio_dir, out, progress=False)
    rebuilt = AudioIndex.build(other, processor, audio_dir, out, overwrite=True, progress=False)
    torch.testing.assert_close(rebuilt.embeddings, reference_embeddings(other, processor, rebuilt.items), atol=1e-5, rtol=1e-4)
    assert len(list(out.glob("shard-*.safetensors"))) == 1  # the other model's shards are gone


def test_missing_index_and_empty_folder_explained(tmp_path, model_and_processor):
    model, processor = model_and_processor
    with pytest.raises(FileNotFoundError, match="no index at .*AudioIndex.build"):
        AudioIndex.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="folder .* has no audio files"):
        AudioIndex.build(model, processor, tmp_path / "empty", tmp_path / "x", progress=False)


def test_dataset_source_gives_the_folder_embeddings(tmp_path, model_and_processor, audio_dir):
    import datasets

    model, processor = model_and_processor
    folder_index = AudioIndex.build(model, processor, audio_dir, tmp_path / "folder", progress=False)
    dataset = datasets.Dataset.from_dict({"audio": folder_index.items, "caption": ["x"] * 5}).cast_column("audio", datasets.Audio())
    index = AudioIndex.build(model, processor, dataset, tmp_path / "dataset", batch_size=3, progress=False)
    assert index.items == folder_index.items
    torch.testing.assert_close(index.embeddings, folder_index.embeddings)


def test_faiss_backends_through_the_index(tmp_path, model_and_processor, audio_dir):
    pytest.importorskip("faiss")
    model, processor = model_and_processor
    index = AudioIndex.build(model, processor, audio_dir, tmp_path / "index", progress=False)
    exact = index.search(["a dog bark", "bell"], k=5)
    flat = index.search(["a dog bark", "bell"], k=5, backend="flat")
    assert [[h.index for h in q] for q in flat] == [[h.index for h in q] for q in exact]
    assert len(list((tmp_path / "index").glob("faiss-flat-*.index"))) == 1  # saved for the next session
    reopened = AudioIndex.load(tmp_path / "index", model, processor)
    assert [h.index for h in reopened.search("bell", k=5, backend="flat")] == [h.index for h in exact[1]]
    with pytest.raises(ValueError, match="backend is 'annoy', expected one of"):
        index.search("bell", backend="annoy")


def test_cli_builds_once_then_answers_from_the_stored_index(tmp_path, model_dir, audio_dir, capsys, monkeypatch):
    out = tmp_path / "index"
    argv = ["a dog bark", "bell", "--audio-dir", str(audio_dir), "--index-dir", str(out), "-k", "2", "--json", "--quiet"]
    assert search.main(argv + ["--model", str(model_dir)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["query"], r["rank"]) for r in lines] == [("a dog bark", 1), ("a dog bark", 2), ("bell", 1), ("bell", 2)]
    assert all(r["path"].endswith((".wav", ".flac")) and r["start"] is not None and r["spans"] for r in lines)

    # Second run: no --model (taken from the manifest, and said so) and nothing re-embedded.
    monkeypatch.setattr(search_index, "decode_audio", lambda *a: pytest.fail("a finished index was re-embedded"))
    assert search.main(argv) == 0
    captured = capsys.readouterr()
    assert [json.loads(line) for line in captured.out.splitlines()] == lines
    assert "using the model recorded in" in captured.err


def test_python_dash_m_entry_point(tmp_path, model_dir, audio_dir):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "atr.search", "a dog bark", "--audio-dir", str(audio_dir), "--model", str(model_dir),
         "--index-dir", str(tmp_path / "index"), "-k", "3", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [r[1] for r in rows] == ["1", "2", "3"] and all(r[0] == "a dog bark" for r in rows)
    assert [float(r[2]) for r in rows] == sorted((float(r[2]) for r in rows), reverse=True)
