"""Collections past one machine: a 2-process build (accelerate, gloo on CPU) equal to a 1-process one and resumable per
rank after a kill, the on-disk IVF-PQ index, and export to Qdrant (local mode) answering like exact search."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from atr.search import AudioIndex, exact_search
from atr.search.distributed import rank_dir
from tests.test_search import model_and_processor, model_dir  # noqa: F401 (fixtures)
from tests.test_search_update import write_folder

ROOT = Path(__file__).resolve().parents[1]
NAMES = [f"rec-{i}.wav" for i in range(8)]
# accelerate's --cpu with several processes needs MPI; --multi_gpu runs torchrun, which uses gloo on a CPU machine.
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no"]
# Rank 1 dies (SIGKILL, no clean-up) while decoding its third file: its first shard (2 files) is finished by then.
KILL_RANK_1 = textwrap.dedent("""
    import os, signal, sys
    from atr.search import index as search_index
    from atr.search.cli import main

    real, calls = search_index.decode_audio, []

    def decode(source, rate):
        calls.append(source)
        if os.environ["RANK"] == "1" and len(calls) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(source, rate)

    search_index.decode_audio = decode
    sys.exit(main(sys.argv[1:]))
""")


def launch(*args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([*LAUNCH, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, **kwargs)


def test_two_process_build_equals_one_process_and_a_killed_rank_resumes_without_re_embedding(tmp_path, model_dir, model_and_processor):
    model, processor = model_and_processor
    folder = write_folder(tmp_path / "audio", NAMES)
    out = tmp_path / "index"
    options = ["build", str(folder), "--index-dir", str(out), "--model", str(model_dir), "--batch-size", "2", "--shard-size", "2", "--quiet"]
    script = tmp_path / "kill_rank_1.py"
    script.write_text(KILL_RANK_1)

    crashed = launch(str(script), *options)
    assert crashed.returncode != 0, crashed.stderr
    assert not (out / "manifest.json").exists()  # rank 0 writes it only once every rank is done
    done = {}
    for rank in (0, 1):
        path = rank_dir(out, rank, 2) / "manifest.json"
        done[rank] = len(json.loads(path.read_text())["items"]) if path.exists() else 0
    assert done[1] == 2  # the killed rank's first shard survived

    resumed = launch("-m", "atr.search", *options)
    assert resumed.returncode == 0, resumed.stderr
    reports = {int(r): (int(e), int(k)) for r, e, k in re.findall(r"rank (\d) of 2 embedded (\d+), kept (\d+)", resumed.stderr)}
    assert reports == {0: (4 - done[0], done[0]), 1: (2, 2)}, resumed.stderr  # only what no finished shard holds

    two = AudioIndex.load(out, model, processor)
    one = AudioIndex.build(model, processor, folder, tmp_path / "one", batch_size=2, shard_size=2, progress=False)
    assert two.names == one.names == NAMES
    assert (two.embeddings - one.embeddings).abs().max() < 1e-6
    assert (two.chunk_embeddings.float() - one.chunk_embeddings.float()).abs().max() < 1e-6
    assert torch.equal(two.chunk_offsets, one.chunk_offsets)
    np.testing.assert_array_equal(two.chunk_spans, one.chunk_spans)
    assert [h.name for h in two.search_by_embedding(one.embeddings[3], k=3)[0]] == [h.name for h in one.search_by_embedding(one.embeddings[3], k=3)[0]]


# ---- export to a vector database (Qdrant, local mode) -------------------------------------------------------------


def test_export_to_qdrant_local_mode_answers_with_the_exact_top_10_and_spans(tmp_path, model_dir, model_and_processor, capsys):
    pytest.importorskip("qdrant_client")
    from atr.search import main
    from atr.search.vectordb import QdrantIndex

    model, processor = model_and_processor
    folder = write_folder(tmp_path / "audio", [f"clip-{i:02d}.wav" for i in range(14)])
    index = AudioIndex.build(model, processor, folder, tmp_path / "index", progress=False)
    assert index.export(tmp_path / "qdrant") == {"recordings": 14, "chunks": len(index.chunk_embeddings)}
    with pytest.raises(FileExistsError, match="already has collection 'atr'"):
        index.export(tmp_path / "qdrant")

    queries = torch.cat([index.embed_text(["a dog barks", "rain on a roof"]), index.embeddings[[2, 9]] + 0.1])
    store = QdrantIndex(tmp_path / "qdrant", model, processor)
    for chunks in (False, True):
        expected = index.search_by_embedding(queries, k=10, chunks=chunks)
        found = store.search_by_embedding(queries, k=10, chunks=chunks)
        assert [[h.name for h in hits] for hits in found] == [[h.name for h in hits] for hits in expected]
        for hits, reference in zip(found, expected):
            assert [(h.chunk, h.spans, h.path) for h in hits] == [(h.chunk, h.spans, h.path) for h in reference]
            np.testing.assert_allclose([h.score for h in hits], [h.score for h in reference], atol=1e-5)
    _, exact = exact_search(queries, index.embeddings, 10)
    assert [[h.index for h in hits] for hits in store.search_by_embedding(queries, k=10)] == exact.tolist()
    store.close()

    other = AudioIndex.build(model, processor, folder, tmp_path / "other", progress=False)
    other.manifest["fingerprint"] = "f" * 64
    other.export(tmp_path / "qdrant", collection="other")
    with pytest.raises(ValueError, match="exported from an index of another model"):
        QdrantIndex(tmp_path / "qdrant", model, processor, collection="other")

    # the command line: export, then query the collection with the model it records
    assert main(["export", "--index-dir", str(tmp_path / "index"), "--to", str(tmp_path / "cli-qdrant")]) == 0
    capsys.readouterr()
    assert main(["a dog barks", "--qdrant", str(tmp_path / "cli-qdrant"), "--json", "-k", "5"]) == 0
    from_qdrant = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [h["name"] for h in from_qdrant] == [h.name for h in index.search("a dog barks", k=5)]
    assert from_qdrant[0]["spans"] and from_qdrant[0]["start"] is not None


# ---- the on-disk IVF-PQ index ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast_scan", [False, True], ids=["ondisk-lists", "fast-scan"])
def test_ondisk_index_equals_exact_search_resumes_per_block_and_opens_after_a_move(tmp_path, fast_scan):
    pytest.importorskip("faiss")
    from atr.search.ondisk import OnDiskIndex, VectorFile, build_ondisk_index

    vectors = torch.nn.functional.normalize(torch.randn(3000, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    blocks = [vectors[:1000].numpy(), vectors[1000:].numpy()]
    stored = VectorFile.write(tmp_path / "vectors.f16", blocks, 32)
    with pytest.raises(FileExistsError, match="vectors.f16' exists"):
        VectorFile.write(tmp_path / "vectors.f16", blocks, 32)
    assert len(stored) == 3000
    np.testing.assert_array_equal(stored.gather([5, 2999, 5, 0]), vectors[[5, 2999, 5, 0]].half().float().numpy())

    added = []

    def stop_after_two_blocks(line):
        added.extend([line] if line.startswith("added") else [])
        if len(added) == 2:
            raise KeyboardInterrupt

    options = dict(nlist=16, pq_m=8, train_rows=2000, block_rows=700, niter=5, fast_scan=fast_scan)
    with pytest.raises(KeyboardInterrupt):
        build_ondisk_index(stored, tmp_path / "index", progress=stop_after_two_blocks, **options)
    added.clear()
    index = build_ondisk_index(stored, tmp_path / "index", progress=added.append, **options)
    assert [line.split()[2] for line in added if line.startswith("added")] == ["1400..2100", "2100..2800", "2800..3000"]
    lists = [] if fast_scan else ["ivfpq.ivfdata"]  # fast-scan lists are inside ivfpq.index
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == sorted(["ivfpq.index", "ondisk.json", "trained.index", *lists])

    queries = vectors[:20] + 0.05 * torch.randn(20, 32, generator=torch.Generator().manual_seed(1))
    exact_scores, exact_ids = exact_search(queries, torch.from_numpy(stored.read(0, 3000)), 10)
    scores, ids = index.search(queries, 10, nprobe=16, k_factor=300)  # every list, deep re-rank: exact
    assert torch.equal(ids, exact_ids)
    torch.testing.assert_close(scores, exact_scores)
    _, approximate = index.search(queries, 10, nprobe=4, k_factor=10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approximate.tolist(), exact_ids.tolist())]) > 0.5

    (tmp_path / "moved").mkdir()
    for name in ("index", "vectors.f16"):
        (tmp_path / name).rename(tmp_path / "moved" / name)
    assert torch.equal(OnDiskIndex(tmp_path / "moved" / "index").search(queries, 10, nprobe=16, k_factor=300)[1], exact_ids)
    with pytest.raises(ValueError, match="not a whole number of 28-d float16 rows"):
        VectorFile(tmp_path / "moved" / "vectors.f16", 28)
