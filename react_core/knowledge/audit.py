"""Overlap audit: retrieved pairs whose image is a near-duplicate of a target task's evaluation image.

A zero-shot claim is only as good as the evidence that the training set does not contain the test
images. Web-scale corpora do contain benchmark images (re-uploads, thumbnails, crops), and retrieval by
the benchmark's own class names is the most likely way to pick them up. So every retrieval checks:

1. the evaluation images are embedded by the same model that embedded the knowledge base, and each
   retrieved image's embedding is matched to its most similar evaluation image (exact inner-product
   search with faiss); at or above ``audit.threshold`` cosine it is an *embedding match*;
2. the second opinion: a 64-bit difference hash (dHash) of both images of each embedding match; a
   Hamming distance at most ``audit.hash_distance`` agrees;
3. ``decide: both`` (default) calls a pair a **duplicate** when both opinions agree: an embedding alone
   over-matches wherever the model sees look-alikes as one (a weak model, product shots on white), and
   a hash alone matches unrelated flat images; ``decide: embedding`` takes every embedding match (for
   a strong model, and copies that were cropped or recoloured, which change the hash).

Duplicates are dropped from the manifest (``action: drop``) or kept with ``overlap = true``. The counts
go into the retrieve stage's ``_SUCCESS`` counts (and so to MLflow); ``overlap.json`` lists each one.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
import pandas as pd
import torch
from PIL import Image

from react_core.config import OverlapAuditConfig
from react_core.data import read_kb_images
from react_core.data.datasets import EvalSet, read_image_bytes
from react_core.storage import Storage

_logger = logging.getLogger(__name__)


def dhash(image_bytes: bytes, size: int = 8) -> int:
    """64-bit difference hash: greyscale at (size+1) x size, one bit per horizontal neighbour comparison."""
    img = Image.open(io.BytesIO(image_bytes)).convert("L").resize((size + 1, size), Image.BILINEAR)
    px = np.asarray(img, dtype=np.int16)
    bits = (px[:, 1:] > px[:, :-1]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def audit_overlap(
    storage: Storage,
    manifest: pd.DataFrame,
    retrieved: np.ndarray,
    evalsets: Sequence[EvalSet],
    eval_features: Sequence[torch.Tensor],
    cfg: OverlapAuditConfig,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Match ``manifest``'s rows (image embeddings ``retrieved``) against evaluation images.

    Returns the per-row findings (``overlap``, ``overlap_similarity``, ``overlap_image``,
    ``overlap_hash_distance``; index aligned with ``manifest``) and the summary counts.
    """
    eval_emb = torch.cat(list(eval_features)).numpy().astype(np.float32)
    eval_ids = [(s.name, uri) for s in evalsets for uri in (s.images or [f"#{i}" for i in range(len(s))])]
    index = faiss.IndexFlatIP(eval_emb.shape[1])
    index.add(eval_emb)
    sims, nearest = index.search(np.ascontiguousarray(retrieved, dtype=np.float32), 1)
    sims, nearest = sims[:, 0], nearest[:, 0]
    by_embedding = sims >= cfg.threshold
    candidates = np.flatnonzero(by_embedding)
    dist = np.full(len(manifest), -1, dtype=np.int64)
    if len(candidates):
        kb = read_kb_images(storage, list(zip(manifest["shard"].iloc[candidates], manifest["offset"].iloc[candidates])))
        by_set = {s.name: s for s in evalsets}
        eval_hash: dict[int, int] = {}
        for i in candidates:
            data = kb.get((manifest["shard"].iloc[i], int(manifest["offset"].iloc[i])))
            name, uri = eval_ids[nearest[i]]
            if data is None or uri.startswith("#"):
                continue  # an in-memory evaluation set has no bytes to hash
            if nearest[i] not in eval_hash:
                eval_hash[nearest[i]] = dhash(read_image_bytes(by_set[name].storage, uri))
            dist[i] = hamming(dhash(data), eval_hash[nearest[i]])
    by_hash = by_embedding & (dist >= 0) & (dist <= cfg.hash_distance)
    duplicate = by_hash if cfg.decide == "both" else by_embedding
    findings = pd.DataFrame(
        {
            "overlap": duplicate,
            "overlap_similarity": sims.astype(np.float32),
            "overlap_image": [f"{eval_ids[j][0]}:{eval_ids[j][1]}" if d else "" for j, d in zip(nearest, duplicate)],
            "overlap_hash_distance": dist,
        },
        index=manifest.index,
    )
    summary = {
        "checked": len(manifest),
        "eval_images": len(eval_emb),
        "duplicates": int(duplicate.sum()),
        "embedding_matches": int(by_embedding.sum()),
        "confirmed_by_hash": int(by_hash.sum()),
        "threshold": cfg.threshold,
        "action": cfg.action,
        "decide": cfg.decide,
    }
    if summary["duplicates"]:
        _logger.warning(
            "overlap audit: %d retrieved pair(s) duplicate evaluation images (%s)", summary["duplicates"], cfg.action
        )
    return findings, summary
