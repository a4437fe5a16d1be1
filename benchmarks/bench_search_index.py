"""The search index on synthetic scenes with known event times: per-query span accuracy, and incremental update cost.

    python benchmarks/bench_search_index.py --model outputs/demo --clips 150 --out benchmarks/results_search_index.json

Span accuracy: each scene (atr.synthetic, a seed the training set does not use) is indexed; for every event of a scene
the event's sentence ("a dog barks") is a query, and the chunk the index reports *for this query* inside that
scene is checked against the event's true onset/offset: does one of the chunk's stretches overlap the event? Counted
on scenes with 2 or more chunks (a 1-chunk scene's answer is always right). Baselines on the same queries: a random
chunk (exact expectation) and the same chunk for every query (the one that best matches the scene's pooled
embedding, the nearest to the old per-recording span).

Update cost: a full build of the folder, then `AudioIndex.update` after adding, removing and rewriting a few files,
and after no change at all (seconds, wall clock).
"""

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from atr.search import AudioIndex
from atr.loading import load_model
from atr.synthetic import EVENT_NAMES, EVENT_TYPES, synthesize_clip

RATE = 16000


def write_scenes(folder, count, seed):
    """Synthetic scenes as wav files; returns {file name: event list with onset_s / offset_s}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    events = {}
    for i in range(count):
        clip = synthesize_clip(rng, sampling_rate=RATE)
        name = f"scene-{i:04d}.wav"
        sf.write(folder / name, clip["array"], RATE)
        events[name] = clip["events"]
    return events


def overlaps(spans, onset, offset):
    """True if any (start, end) stretch overlaps [onset, offset]."""
    return any(a < offset and b > onset for a, b in spans)


def chunk_stretches(index, row):
    """The stretches (start, end) s of each chunk of recording `row`."""
    first, last = int(index.chunk_offsets[row]), int(index.chunk_offsets[row + 1])
    return [[(float(a), float(b)) for a, b in index.chunk_spans[c] if a >= 0] for c in range(first, last)]


def span_accuracy(index, events):
    """Per-query span hits vs baselines, over scenes with 2+ chunks."""
    queries = sorted({EVENT_TYPES[EVENT_NAMES.index(e["label"])].sentences[0] for evs in events.values() for e in evs})
    text = dict(zip(queries, index.embed_text(queries)))
    found = {"per_query": [], "random_chunk": [], "same_chunk_for_all_queries": []}
    pairs = differ = 0
    multi = 0
    for row, name in enumerate(index.names):
        chunks = chunk_stretches(index, row)
        if len(chunks) < 2:
            continue
        multi += 1
        first = int(index.chunk_offsets[row])
        pooled_choice = int((index.chunk_embeddings[first : first + len(chunks)].float() @ index.embeddings[row]).argmax())
        chosen = []
        for event in events[name]:
            query = text[EVENT_TYPES[EVENT_NAMES.index(event["label"])].sentences[0]]
            hit = index._result(row, 0.0, query)
            chosen.append(hit.chunk)
            found["per_query"].append(overlaps(hit.spans, event["onset_s"], event["offset_s"]))
            found["random_chunk"].append(np.mean([overlaps(c, event["onset_s"], event["offset_s"]) for c in chunks]))
            found["same_chunk_for_all_queries"].append(overlaps(chunks[pooled_choice], event["onset_s"], event["offset_s"]))
        if len(events[name]) >= 2:
            pairs += 1
            differ += len(set(chosen)) > 1
    result = {key: round(float(np.mean(v)), 3) for key, v in found.items()}
    result.update(queries=len(found["per_query"]), scenes_with_2plus_chunks=multi, scenes=len(index),
                  multi_event_scenes_where_queries_pick_different_chunks=round(differ / max(pairs, 1), 3))
    return result


def update_cost(model, processor, folder, work, changes, seed):
    """Seconds for a full build, an update after `changes` adds + removes + rewrites, and a no-change update."""
    out = work / "index"
    start = time.perf_counter()
    AudioIndex.build(model, processor, folder, out, progress=False)
    full = time.perf_counter() - start
    names = sorted(p.name for p in folder.glob("*.wav"))
    rng = np.random.default_rng(seed)
    for name in names[:changes]:
        (folder / name).unlink()
    for name in names[changes : 2 * changes]:
        sf.write(folder / name, synthesize_clip(rng, sampling_rate=RATE)["array"], RATE)
    for i in range(changes):
        sf.write(folder / f"added-{i}.wav", synthesize_clip(rng, sampling_rate=RATE)["array"], RATE)
    start = time.perf_counter()
    index = AudioIndex.update(model, processor, folder, out, progress=False)
    changed = time.perf_counter() - start
    start = time.perf_counter()
    AudioIndex.update(model, processor, folder, out, progress=False)
    unchanged = time.perf_counter() - start
    return {"recordings": len(names), "full_build_s": round(full, 1), "update_s": round(changed, 1),
            "embedded_by_update": len(index.last_update["embedded"]), "removed_by_update": len(index.last_update["removed"]),
            "no_change_update_s": round(unchanged, 2), "update_vs_full": round(changed / full, 3)}


def main():
    """Run both measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a trained atr model folder")
    parser.add_argument("--clips", type=int, default=150)
    parser.add_argument("--changes", type=int, default=5, help="files added, removed and rewritten each")
    parser.add_argument("--seed", type=int, default=12345, help="scene seed (the synthetic training set uses 0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results_search_index.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, processor, _ = load_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="bench_search_index-"))
    try:
        events = write_scenes(work / "scenes", args.clips, args.seed)
        index = AudioIndex.build(model, processor, work / "scenes", work / "scenes-index", progress=False)
        spans = span_accuracy(index, events)
        print(json.dumps({"span_accuracy": spans}), flush=True)
        cost = update_cost(model, processor, work / "scenes", work, args.changes, args.seed + 1)
        print(json.dumps({"update_cost": cost}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = dict(model=args.model, machine=platform.processor() or platform.machine(), threads=args.threads,
                torch=torch.__version__, date=time.strftime("%Y-%m-%d"), clips=args.clips, seed=args.seed)
    Path(args.out).write_text(json.dumps({"meta": meta, "span_accuracy": spans, "update_cost": cost}, indent=1))


if __name__ == "__main__":
    main()
