"""The one `SearchBackend` interface: every registered backend builds, opens, adds, removes and answers like exact
search; `atr-search` reaches each by `--backend`, the on-disk fast-scan index included."""

import json

import numpy as np
import pytest
import torch

from atr.search import BACKENDS, ExactBackend, FaissBackend, SearchBackend, exact_search, get_backend, register_backend
from atr.search.cli import build_parser, main, search_parser
from tests.test_search import model_dir  # noqa: F401 (fixture)
from tests.test_search_update import write_folder

NEEDS = {"flat": "faiss", "pq": "faiss", "hnsw": "faiss", "ondisk": "faiss", "qdrant": "qdrant_client"}
# Options that make each approximate kind exact on 300 vectors: every list scanned, every candidate re-ranked.
EXACT_OPTIONS = {"pq": {"k_factor": 100}, "ondisk": {"nprobe": 64, "k_factor": 100}, "hnsw": {"ef_search": 400}}


def unit(rows, dim=32, seed=0):
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_the_registry_holds_every_backend_and_refuses_an_unknown_one():
    assert set(BACKENDS) == {"exact", "flat", "pq", "hnsw", "ondisk", "qdrant"}
    assert all(issubclass(kind, SearchBackend) and kind.name == name for name, kind in BACKENDS.items())
    with pytest.raises(ValueError, match=r"backend is 'annoy', expected one of \('exact', 'flat'"):
        get_backend("annoy")


def test_a_backend_registered_from_outside_is_found_by_name():
    @register_backend("test-reversed")
    class Reversed(ExactBackend):
        """Exact search, registered under another name."""

    try:
        assert get_backend("test-reversed") is Reversed and "test-reversed" in search_parser().format_help()
    finally:
        del BACKENDS["test-reversed"]


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_each_backend_builds_opens_adds_removes_and_answers_like_exact_search(tmp_path, name):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    kind = get_backend(name)
    vectors, queries = unit(300), unit(7, seed=1)
    ids = torch.arange(300) + 1000
    path = None if name == "qdrant" else tmp_path / (f"{name}.bin" if name != "ondisk" else "ondisk")
    options = {"dtype": "float32"} if name == "ondisk" else {}  # float32 rows: the re-rank scores equal exact ones
    backend = kind.build(vectors, path, ids=ids, **options)
    assert len(backend) == 300
    _, rows = exact_search(queries, vectors, 10)
    scores, found = backend.search(queries, 10, **EXACT_OPTIONS.get(name, {}))
    assert torch.equal(found, ids[rows]), name
    torch.testing.assert_close(scores, torch.gather(queries @ vectors.T, 1, rows), atol=1e-5, rtol=0)
    if path is not None:  # the saved one opens (a FAISS file holds no ids or vectors: given back at open)
        reopened = kind.open(path, vectors=vectors, **({"ids": ids} if issubclass(kind, FaissBackend) else {}))
        assert torch.equal(reopened.search(queries, 10, **EXACT_OPTIONS.get(name, {}))[1], ids[rows])
    if name == "ondisk":  # built once over a file of vectors: changed by building it again
        with pytest.raises(NotImplementedError, match="build it again"):
            backend.add(unit(2, seed=3))
        return
    backend.add(queries[:2], ids=[5, 6])  # the queries themselves: each is its own best match
    assert backend.search(queries[:2], 1, **EXACT_OPTIONS.get(name, {}))[1].tolist() == [[5], [6]]
    backend.remove([5, 6, int(ids[rows[0, 0]])])
    assert len(backend) == 299
    after = backend.search(queries[:1], 10, **EXACT_OPTIONS.get(name, {}))[1][0].tolist()
    assert after[:9] == ids[rows[0, 1:]].tolist(), name  # the removed best hit is gone, the rest move up


def test_the_ondisk_backend_refuses_a_collection_too_small_to_train(tmp_path):
    pytest.importorskip("faiss")
    with pytest.raises(ValueError, match="needs at least 16 vectors.*use the exact backend"):
        get_backend("ondisk").build(unit(10), tmp_path / "ondisk")


def run(argv, capsys):
    assert main(argv) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_atr_search_builds_the_ondisk_index_and_answers_with_the_exact_top_10(tmp_path, model_dir, capsys):
    pytest.importorskip("faiss")
    assert "ondisk" in build_parser().format_help() and "ondisk" in search_parser().format_help()
    folder = write_folder(tmp_path / "audio", [f"rec-{i:02d}.wav" for i in range(20)])
    index_dir = tmp_path / "index"
    common = ["--audio-dir", str(folder), "--index-dir", str(index_dir), "--model", str(model_dir), "--quiet"]
    assert main(["build", *common, "--backend", "ondisk"]) == 0
    assert "the ondisk backend is ready" in capsys.readouterr().err
    built = list(index_dir.glob("ondisk-*"))
    assert len(built) == 1 and (built[0] / "ivfpq.index").is_file()  # next to the shards, for this revision
    # 20 recordings: one inverted list (nlist = 20 // 39, at least 1), every candidate re-ranked (k * k_factor >= 20)
    for query in (["a dog barks", "a bell rings"], ["--query-audio", str(folder / "rec-07.wav")]):
        exact = run([*query, *common, "--json", "-k", "10"], capsys)
        ondisk = run([*query, *common, "--json", "-k", "10", "--backend", "ondisk"], capsys)
        assert len(exact) == 10 * (len(query) if query[0] != "--query-audio" else 1)
        assert [(h["query"], h["name"]) for h in ondisk] == [(h["query"], h["name"]) for h in exact]
        np.testing.assert_allclose([h["score"] for h in ondisk], [h["score"] for h in exact], atol=2e-3)
    assert list(index_dir.glob("ondisk-*")) == built  # searched with the one the build made


def test_qdrant_flag_is_the_qdrant_backend_and_options_of_another_backend_are_refused(tmp_path, capsys):
    for argv, said in ((["--qdrant", str(tmp_path / "q"), "--backend", "pq"], "--qdrant searches an exported collection with the qdrant backend, not --backend pq"),
                       (["--audio-dir", str(tmp_path), "--nprobe", "4"], "--nprobe does not apply to --backend exact"),
                       (["--audio-dir", str(tmp_path), "--backend", "pq", "--nlist", "4"], "--nlist does not apply to --backend pq")):
        with pytest.raises(SystemExit):
            main(["a dog barks", *argv])
        assert said in capsys.readouterr().err
