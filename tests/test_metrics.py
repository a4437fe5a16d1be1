"""Retrieval metrics against hand-worked rankings, a naive reference, block-size invariance and the evaluate module."""

import json
import sys
import types

import numpy as np
import pytest
import torch

from atr import metrics
from atr.metrics import (
    RETRIEVAL_METRIC_PATH,
    audio_text_retrieval_metrics,
    auto_block_size,
    class_prompts,
    import_evaluate,
    retrieval_metrics,
    save_results,
    zero_shot_classification_metrics,
)


def as_embeddings(scores):
    """Query/candidate embeddings whose dot products are exactly `scores` (queries one-hot, candidates = scores.T)."""
    scores = np.asarray(scores, dtype=np.float32)
    return np.eye(scores.shape[0], dtype=np.float32), scores.T.copy()


def scores_for_ranks(num_candidates, order):
    """One query's scores ranking the candidates in `order` first (then the rest by index)."""
    scores = np.zeros(num_candidates, dtype=np.float32)
    for position, candidate in enumerate(order):
        scores[candidate] = num_candidates - position
    return scores


def naive_metrics(scores, relevant, ks=(1, 5, 10)):
    """Reference: full stable argsort per query, then the LAION/DCASE formulas written out one query at a time."""
    out = {f"R{k}": [] for k in ks} | {f"recall{k}": [] for k in ks} | {"AP10": [], "RR10": [], "rank": []}
    for row, rel in zip(scores, relevant):
        order = sorted(range(len(row)), key=lambda c: (-row[c], c))
        ranks = sorted(order.index(r) for r in rel)
        for k in ks:
            out[f"R{k}"].append(float(ranks[0] < k))
            out[f"recall{k}"].append(sum(r < k for r in ranks) / len(rel))
        out["AP10"].append(sum((j + 1) / (r + 1) for j, r in enumerate(ranks) if r < 10) / min(len(rel), 10))
        out["RR10"].append(1 / (ranks[0] + 1) if ranks[0] < 10 else 0.0)
        out["rank"].append(ranks[0] + 1)
    return {key: np.array(values) for key, values in out.items()}


def test_one_relevant_item_hand_worked():
    # Query 0: relevant candidate ranked 1st; query 1: 3rd; query 2: 12th of 12.
    scores = [
        scores_for_ranks(12, [4]),
        scores_for_ranks(12, [0, 1, 7]),
        scores_for_ranks(12, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
    ]
    results = retrieval_metrics(*as_embeddings(scores), [[4], [7], [11]])
    assert results["R1"] == pytest.approx(1 / 3)
    assert results["R5"] == pytest.approx(2 / 3)
    assert results["R10"] == pytest.approx(2 / 3)
    assert results["recall5"] == results["R5"]
    assert results["mAP10"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert results["MRR10"] == results["mAP10"]
    assert results["mean_rank"] == pytest.approx((1 + 3 + 12) / 3)
    assert results["median_rank"] == 3
    np.testing.assert_array_equal(results["per_query"]["rank"], [1, 3, 12])
    np.testing.assert_allclose(results["per_query"]["RR10"], [1, 1 / 3, 0])


def test_five_captions_per_clip_both_a2t_conventions():
    # 2 clips x 5 captions: clip 0 owns captions 0-4, clip 1 owns captions 5-9.
    caption_to_audio = [0] * 5 + [1] * 5
    clip0 = scores_for_ranks(10, [0, 5, 1, 2, 6, 7, 8, 3, 9, 4])  # own captions at 0-based ranks 0, 2, 3, 7, 9
    clip1 = scores_for_ranks(10, [0, 5, 1, 2, 6, 3, 7, 8, 4, 9])  # own captions at 0-based ranks 1, 4, 6, 7, 9
    audio, text = as_embeddings([clip0, clip1])
    results = audio_text_retrieval_metrics(audio, text, caption_to_audio)
    # LAION/WavCaps hit rate: any own caption in the top K.
    assert results["a2t_R1"] == pytest.approx(0.5)
    assert results["a2t_R5"] == 1.0
    # DCASE recall: share of own captions in the top K.
    assert results["a2t_recall1"] == pytest.approx((1 / 5 + 0) / 2)
    assert results["a2t_recall5"] == pytest.approx((3 / 5 + 2 / 5) / 2)
    assert results["a2t_recall10"] == 1.0
    # LAION's AP@10: (1/5) * sum of j / (r_j + 1) over the own captions in the top 10.
    ap0 = (1 / 1 + 2 / 3 + 3 / 4 + 4 / 8 + 5 / 10) / 5
    ap1 = (1 / 2 + 2 / 5 + 3 / 7 + 4 / 8 + 5 / 10) / 5
    assert results["a2t_mAP10"] == pytest.approx((ap0 + ap1) / 2)
    assert results["a2t_MRR10"] == pytest.approx((1 + 1 / 2) / 2)
    np.testing.assert_array_equal(results["per_query"]["a2t"]["rank"], [1, 2])
    # t2a: each caption ranks the 2 clips; caption c scores clip a with text[c, a].
    t2a_ranks = [1 if text[c, a] > text[c, 1 - a] or (text[c, a] == text[c, 1 - a] and a == 0) else 2
                 for c, a in enumerate(caption_to_audio)]
    np.testing.assert_array_equal(results["per_query"]["t2a"]["rank"], t2a_ranks)
    assert results["t2a_R1"] == pytest.approx(np.mean(np.array(t2a_ranks) == 1))
    assert "t2a_recall1" not in results


def test_matches_naive_reference_on_random_scores():
    generator = np.random.default_rng(0)
    # Scores rounded to 1 decimal so that ties are frequent and the tie-break is exercised.
    scores = np.round(generator.normal(size=(40, 25)), 1).astype(np.float32)
    relevant = [sorted(generator.choice(25, size=generator.integers(1, 13), replace=False)) for _ in range(40)]
    results = retrieval_metrics(*as_embeddings(scores), relevant)
    expected = naive_metrics(scores, relevant)
    for key, values in expected.items():
        np.testing.assert_allclose(results["per_query"][key], values, err_msg=key)
    assert results["mAP10"] == pytest.approx(expected["AP10"].mean())
    assert results["median_rank"] == np.floor(np.median(expected["rank"] - 1)) + 1


def test_ties_broken_by_candidate_index():
    # All four candidates tie: rank is the candidate index + 1, whichever is relevant.
    results = retrieval_metrics(*as_embeddings(np.ones((4, 4))), [[0], [1], [2], [3]])
    np.testing.assert_array_equal(results["per_query"]["rank"], [1, 2, 3, 4])
    # Candidate 2 ties with 1 (lower index, ahead) and 3 (higher index, behind); candidate 0 scores higher.
    results = retrieval_metrics(*as_embeddings([[0.9, 0.5, 0.5, 0.5]]), [[2]])
    np.testing.assert_array_equal(results["per_query"]["rank"], [3])
    assert results["R1"] == 0 and results["MRR10"] == pytest.approx(1 / 3)


def test_k_larger_than_candidate_count():
    results = retrieval_metrics(*as_embeddings([scores_for_ranks(3, [2, 1, 0]), scores_for_ranks(3, [0, 1, 2])]),
                                [[0, 1], [2]], ks=(1, 5, 10))
    assert results["R5"] == results["R10"] == results["recall10"] == 1.0
    assert results["R1"] == 0.0
    assert results["mAP10"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 / 3) / 2)


def test_zero_shot_multi_label_and_first_label_variant():
    # Clip 0 has labels {1, 3}, ranked 3rd and 1st; clip 1 has label {2}, ranked 2nd.
    scores = [scores_for_ranks(4, [3, 0, 1, 2]), scores_for_ranks(4, [0, 2, 1, 3])]
    results = zero_shot_classification_metrics(*as_embeddings(scores), [[1, 3], 2])
    assert results["accuracy"] == results["R1"] == 0.5
    assert results["mAP10"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 2) / 2)
    # LAION's variant scores only the lowest-index label (1, at rank 3) of clip 0.
    assert results["first_label_R1"] == 0.0
    assert results["first_label_mAP10"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    single = zero_shot_classification_metrics(*as_embeddings(scores), [3, 2])
    assert single["accuracy"] == 0.5 and single["mAP10"] == pytest.approx((1 + 1 / 2) / 2)
    assert not any(key.startswith("first_label") for key in single)
    assert zero_shot_classification_metrics(*as_embeddings(scores), [3, 2], ks=(5,))["accuracy"] == 0.5


def test_class_prompts_template():
    assert class_prompts(["dog", "rain"]) == ["This is a sound of dog.", "This is a sound of rain."]
    assert class_prompts(["dog"], "a {label} barking") == ["a dog barking"]
    with pytest.raises(ValueError, match="no {label} placeholder"):
        class_prompts(["dog"], "a sound of {}")


def test_blocked_equals_unblocked_and_block_size_bounds_tiles(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    audio, text = torch.randn(23, 16, generator=generator), torch.randn(23 * 3, 16, generator=generator)
    caption_to_audio = np.repeat(np.arange(23), 3)
    tiles = []
    blocks = metrics.similarity_blocks

    def recording_blocks(*args, **kwargs):
        for start, tile in blocks(*args, **kwargs):
            tiles.append(tuple(tile.shape))
            yield start, tile

    monkeypatch.setattr(metrics, "similarity_blocks", recording_blocks)
    reference = audio_text_retrieval_metrics(audio, text, caption_to_audio, block_size=10_000)
    for block_size in (1, 4, 7):
        tiles.clear()
        results = audio_text_retrieval_metrics(audio, text, caption_to_audio, block_size=block_size)
        assert max(rows for rows, _ in tiles) == block_size
        assert sum(rows for rows, cols in tiles if cols == 23) == 69  # t2a: every caption scored once
        for key, value in reference.items():
            if key != "per_query":
                assert results[key] == value, key
    # The automatic block size keeps one float32 tile under the budget even for a 100k corpus.
    assert auto_block_size(100_000) * 100_000 * 4 <= metrics.DEFAULT_MAX_TILE_BYTES
    assert auto_block_size(100_000, max_tile_bytes=400_000) == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: retrieval_metrics(np.eye(2), np.eye(2), [[0], []]), "query at index 1 has no relevant"),
        (lambda: retrieval_metrics(np.eye(2), np.eye(2), [[0], [2]]), "query at index 1 lists relevant candidate 2"),
        (lambda: retrieval_metrics(np.eye(2), np.eye(2), [[0]]), "relevant has 1 lists but there are 2 queries"),
        (lambda: retrieval_metrics(np.eye(2), np.eye(3), [[0], [1]]), "query_embeds has dim 2 but candidate_embeds"),
        (lambda: retrieval_metrics(np.full((1, 2), np.nan), np.eye(2), [[0]]), "query_embeds contains NaN"),
        (lambda: audio_text_retrieval_metrics(np.eye(3), np.eye(3), [0, 0, 1]), "audio at index 2 has no caption"),
    ],
)
def test_errors_name_the_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_evaluate_module_matches_library_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    evaluate = import_evaluate()
    generator = np.random.default_rng(1)
    audio, text = generator.normal(size=(6, 8)).astype(np.float32), generator.normal(size=(18, 8)).astype(np.float32)
    caption_to_audio = np.repeat(np.arange(6), 3)
    metric = evaluate.load(RETRIEVAL_METRIC_PATH, "audio_text")
    for start in range(0, 18, 5):  # batches accumulate as with any evaluate metric
        metric.add_batch(predictions=text[start : start + 5], references=caption_to_audio[start : start + 5])
    results = metric.compute(candidate_embeds=audio)
    expected = audio_text_retrieval_metrics(audio, text, caption_to_audio)
    assert {k: v for k, v in results.items() if k != "per_query"} == pytest.approx(
        {k: v for k, v in expected.items() if k != "per_query"}
    )
    zero_shot = evaluate.load(RETRIEVAL_METRIC_PATH, "zero_shot")
    labels = [[0, 2], [1], [3], [0], [1, 2], [2]]
    results = zero_shot.compute(predictions=audio, references=labels, candidate_embeds=text[:4])
    assert results["first_label_mAP10"] == pytest.approx(
        zero_shot_classification_metrics(audio, text[:4], labels)["first_label_mAP10"]
    )


def test_import_evaluate_ignores_a_shadowing_script(tmp_path, monkeypatch):
    # `python evaluate.py` puts the repo root (holding the CLI script evaluate.py) first on sys.path.
    (tmp_path / "evaluate.py").write_text("SHADOW = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evaluate", raising=False)
    assert hasattr(import_evaluate(), "load")
    # The script already imported under the library's name.
    shadow = types.ModuleType("evaluate")
    shadow.SHADOW = True
    monkeypatch.setitem(sys.modules, "evaluate", shadow)
    library = import_evaluate()
    assert hasattr(library, "load") and not hasattr(library, "SHADOW")
    assert str(tmp_path) in sys.path


def test_save_results_has_provenance_and_per_query(tmp_path):
    results = audio_text_retrieval_metrics(np.eye(2), np.eye(2), [0, 1])
    path = save_results(tmp_path / "results.json", clotho=results, model="tiny")
    saved = json.loads(path.read_text())
    for key in ("_timestamp", "_git_commit_hash", "_evaluate_version", "_python_version", "_library_versions"):
        assert key in saved
    assert saved["_library_versions"]["torch"] == torch.__version__
    assert saved["clotho"]["t2a_R1"] == 1.0
    assert saved["clotho"]["per_query"]["a2t"]["rank"] == [1, 1]
