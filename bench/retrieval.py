"""Retrieval at ImageNet scale: 1,000 classes x 80 templates, K = 50, over an index of 1M vectors.

    python bench/retrieval.py [--rows 1000000] [--classes 1000] [--templates 80] [--k 50] [--index-key KEY]

Data: clustered synthetic embeddings (D = 512, L2-normalised): ``--classes`` class centres plus 4x as
many distractor centres; database rows are a centre plus noise, prompts are their class centre plus a
per-template offset and noise (so prompts of one class agree roughly, as CLIP's templates do).

The index is built by the project's own path (``react_core.knowledge.index.build_one``: autofaiss
with a memory budget, or ``--index-key``). Then:

* **ours**: every prompt in one batched ``index.search`` (what ``retrieve`` does per index), then
  ``select`` (dedup per pair and class, cross-class assignment) over all hits;
* **per-prompt loop**: ``index.search`` one prompt at a time, as a loop over class names and templates
  would; timed on ``--loop-sample`` prompts and scaled to all of them (said so in the output);
* **recall@K** of the index against exact search (``ground_truth``: blocked, ties with the K-th exact
  neighbour counted as found) on 1,000 prompts, after the search parameter was set to the cheapest that
  reaches ``--recall-target`` on 200 other prompts (as the index stage does).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import faiss
import numpy as np
import pandas as pd

from react_core.config import IndexConfig, RetrievalConfig
from react_core.knowledge.index import build_one, ground_truth, recall, row_blocks, tune_recall
from react_core.knowledge.retrieve import select


def data(rows: int, classes: int, templates: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes * 5, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    db = np.empty((rows, dim), np.float32)
    for i in range(0, rows, 100_000):  # blocks, to keep the temporaries small
        n = min(100_000, rows - i)
        db[i : i + n] = centres[rng.integers(0, len(centres), n)] + 0.9 * rng.standard_normal((n, dim)).astype(
            np.float32
        ) / np.sqrt(dim)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    offsets = 0.5 * rng.standard_normal((templates, dim)).astype(np.float32) / np.sqrt(dim)
    q = (
        centres[:classes, None, :]
        + offsets[None]
        + 0.3 * rng.standard_normal((classes, templates, dim)).astype(np.float32) / np.sqrt(dim)
    )
    q = q.reshape(-1, dim)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return db, q, np.repeat(np.arange(classes), templates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--templates", type=int, default=80)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--index-key", default=None, help="a faiss key; default: autofaiss chooses under --budget")
    ap.add_argument("--budget", default="4G", help="autofaiss max_index_memory_usage")
    ap.add_argument("--loop-sample", type=int, default=2000)
    ap.add_argument("--recall-target", type=float, default=0.95, help="0 keeps autofaiss' search parameter")
    args = ap.parse_args()
    t0 = time.perf_counter()
    db, queries, prompt_class = data(args.rows, args.classes, args.templates, args.dim)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, faiss {faiss.__version__}, "
        f"{faiss.omp_get_max_threads()} threads"
    )
    print(
        f"data: {args.rows:,} x {args.dim} database, {len(queries):,} prompts ({args.classes} classes x "
        f"{args.templates} templates), made in {time.perf_counter() - t0:.0f} s"
    )

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cfg = IndexConfig(index_key=args.index_key, max_index_memory_usage=args.budget, current_memory_available="16G")
        path, infos = build_one(db, cfg, tmp, "image")
        index = faiss.read_index(path)
        build_s = time.perf_counter() - t0
    print(f"index: {infos.get('index_key')} ({infos.get('index_param', '')}), built in {build_s:.0f} s")
    if args.recall_target:  # what the index stage does (index.recall_target): raise efSearch / nprobe
        t0 = time.perf_counter()
        held_out = queries[np.random.default_rng(3).choice(len(queries), 200, replace=False)]
        tuned, param = tune_recall(index, held_out, ground_truth(held_out, row_blocks(db), args.k), args.recall_target)
        print(
            f"tuned to {param}: recall@{args.k} {tuned:.4f} on 200 held-out prompts ({time.perf_counter() - t0:.0f} s)"
        )

    t0 = time.perf_counter()
    scores, rows = index.search(queries, args.k)
    search_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    hits = pd.DataFrame(
        {
            "row": rows.ravel(),
            "score": scores.ravel(),
            "prompt_id": np.repeat(np.arange(len(queries)), args.k),
            "mode": "t2i",
        }
    ).query("row >= 0")
    hits["class_id"] = prompt_class[hits["prompt_id"].to_numpy()]
    chosen = select(hits, RetrievalConfig(k=args.k))
    select_s = time.perf_counter() - t0

    sample = np.random.default_rng(1).choice(len(queries), min(args.loop_sample, len(queries)), replace=False)
    t0 = time.perf_counter()
    for i in sample:
        index.search(queries[i : i + 1], args.k)
    loop_s = (time.perf_counter() - t0) * len(queries) / len(sample)

    probe = queries[np.random.default_rng(2).choice(len(queries), 1000, replace=False)]
    t0 = time.perf_counter()
    truth = ground_truth(probe, row_blocks(db), args.k)
    exact_s = time.perf_counter() - t0
    reached = recall(index, probe, truth)

    ours = search_s + select_s
    print(
        f"ours: batched search {search_s:.1f} s + select {select_s:.1f} s = {ours:.1f} s "
        f"-> {len(chosen):,} unique pairs"
    )
    print(f"per-prompt loop: {loop_s:.0f} s for {len(queries):,} prompts (timed on {len(sample):,}, scaled)")
    print(f"ratio loop/ours: {loop_s / ours:.1f}x (goal >= 10); the searches alone: {loop_s / search_s:.1f}x")
    print(f"recall@{args.k} vs exact search, 1,000 prompts: {reached:.4f} (goal >= 0.95; exact took {exact_s:.0f} s)")


if __name__ == "__main__":
    main()
