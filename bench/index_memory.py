"""Peak memory and wall time of the index stage (``build_indices``) over a synthetic embed stage.

    python bench/index_memory.py [--rows 400000] [--shards 40] [--dim 512] [--index-key IVF256,Flat] [--memory 2G] [--budget 1G]

Writes an embed stage in a temporary folder (``--shards`` float16 ``img_emb``/``text_emb`` files and
metadata, clip-retrieval's layout, as the embed stage leaves it), then runs the index stage in a child
process and prints its wall time and peak resident memory (``ru_maxrss`` of the child). To compare with
another version of the code, run it with that checkout first on ``PYTHONPATH``
(``git worktree add /tmp/old <commit>; PYTHONPATH=/tmp/old python bench/index_memory.py``): the stage
API it calls did not change.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import resource
import tempfile
import time

import numpy as np
import pandas as pd


def write_stage(root: str, rows: int, shards: int, dim: int) -> str:
    from react_core.storage import Storage

    st = Storage(root)
    stage = st.stage("embed", {"bench": rows})
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    per = -(-rows // shards)
    for i in range(shards):
        n = min(per, rows - i * per)
        for kind in ("img", "text"):
            e = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, dim)).astype(np.float32)
            e /= np.linalg.norm(e, axis=1, keepdims=True)
            buf = io.BytesIO()
            np.save(buf, e.astype(np.float16))
            st.write_bytes(stage.file(f"{kind}_emb", f"{kind}_emb_{i}.npy"), buf.getvalue())
        buf = io.BytesIO()
        pd.DataFrame(
            {"key": [f"{i}-{j}" for j in range(n)], "caption": "x", "shard": f"s{i}", "offset": range(n)}
        ).to_parquet(buf)
        st.write_bytes(stage.file("metadata", f"metadata_{i}.parquet"), buf.getvalue())
    return stage.complete(counts={"embedded": rows, "shards": shards})


def build(root: str, embed_uri: str, index_key: str, memory: str, budget: str, queue) -> None:
    from react_core.config import IndexConfig
    from react_core.knowledge.index import build_indices
    from react_core.storage import Storage

    st = Storage(root)
    t0 = time.perf_counter()
    cfg = IndexConfig(index_key=index_key, current_memory_available=memory, max_index_memory_usage=budget)
    try:
        uri = build_indices(st, embed_uri, st.stage("index", {"key": index_key}), cfg, k=50)
    except Exception as exc:
        queue.put((None, f"{type(exc).__name__}: {exc}"))
        raise
    queue.put((time.perf_counter() - t0, st.stage_manifest(uri)["counts"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--shards", type=int, default=40)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--index-key", default="IVF256,Flat")
    ap.add_argument("--budget", default="1G", help="index.max_index_memory_usage")
    ap.add_argument("--memory", default="2G", help="index.current_memory_available (autofaiss' batch sizing)")
    args = ap.parse_args()
    import react_core

    with tempfile.TemporaryDirectory() as root:
        embed_uri = write_stage(root, args.rows, args.shards, args.dim)
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        child = ctx.Process(target=build, args=(root, embed_uri, args.index_key, args.memory, args.budget, queue))
        child.start()
        wall, counts = queue.get()
        child.join()
    if wall is None:
        raise SystemExit(f"the index stage failed: {counts}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    f16_mb = args.rows * args.dim * 2 / 2**20
    print(f"# react_core from {os.path.dirname(react_core.__file__)}")
    print(
        f"{args.rows:,} x {args.dim} rows per kind in {args.shards} shards ({f16_mb:.0f} MB float16 per kind), "
        f"index key {args.index_key}, current_memory_available {args.memory}, "
        f"max_index_memory_usage {args.budget}"
    )
    print(f"index stage: {wall:.0f} s, peak RSS {peak_mb:,.0f} MB; {counts}")


if __name__ == "__main__":
    main()
