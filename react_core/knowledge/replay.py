"""Replay: pairs drawn from the knowledge base at random, trained on beside the retrieved ones.

Customizing on the retrieved pairs alone moves the image tower toward the target task and away from what the
base model knew (BENCHMARKS.md, "Forgetting"). Replay keeps a share of every training batch on pairs the base
saw: a uniform random sample of the knowledge base, the retrieved pairs excluded. ``manifest.parquet`` has the
retrieval manifest's columns (``class_id`` -1: no class; ``mode`` ``replay``), so the download stage fetches
it as it fetches a retrieval (img2dataset, or extraction from the knowledge base's shards).
"""

from __future__ import annotations

import io
import math

import numpy as np

from react_core.knowledge.embeddings import load_metadata_rows, metadata_rows
from react_core.knowledge.retrieve import RetrievalError, read_manifest, unclassed_manifest
from react_core.storage import Stage, Storage


def replay_pool_size(retrieved_pairs: int, share: float) -> int:
    """Pairs to sample for a replay ``share`` of each batch: as many as one pass over ``retrieved_pairs`` draws
    (``share / (1 - share)`` per retrieved pair), so each replayed pair is seen about once per epoch."""
    if share <= 0:
        return 0
    return max(1, math.ceil(retrieved_pairs * share / (1 - share)))


def sample_replay(storage: Storage, embed_uri: str, retrieve_uri: str, n: int, seed: int, stage: Stage) -> str:
    """Write ``manifest.parquet``: ``n`` knowledge-base pairs drawn uniformly at random (seeded), none of them
    among the retrieved ones (``retrieve_uri``'s manifest); returns the stage URI.

    Raises:
        RetrievalError: the knowledge base has no pair outside the retrieved set.
    """
    total = metadata_rows(storage, embed_uri)
    retrieved = set(read_manifest(storage, retrieve_uri)["key"])
    available = total - len(retrieved)
    if available <= 0:
        raise RetrievalError(
            f"the knowledge base ({total:,} pairs) has none outside the {len(retrieved):,} retrieved, so nothing can "
            "be replayed; fix: set training.replay to 0, or retrieve from a larger knowledge base"
        )
    n = min(n, available)
    rng = np.random.default_rng([seed, 0x2E9])
    # Draw enough rows that, with the retrieved ones removed, n remain; the rows read are those drawn only.
    drawn = rng.choice(total, size=min(total, n + len(retrieved)), replace=False)
    order = np.argsort(drawn)
    meta = load_metadata_rows(storage, embed_uri, drawn[order])
    meta = meta.iloc[np.argsort(order)].reset_index(drop=True)  # back to the draw's order
    meta = meta[~meta["key"].isin(retrieved)].head(n)
    manifest = unclassed_manifest(meta, "replay").sort_values(["shard", "offset"], kind="stable")
    buf = io.BytesIO()
    manifest.reset_index(drop=True).to_parquet(buf)
    storage.write_bytes(stage.file("manifest.parquet"), buf.getvalue())
    return stage.complete(counts={"pairs": len(manifest), "knowledge_base": total, "excluded": len(retrieved)})
