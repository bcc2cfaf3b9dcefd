"""FAISS indices over an embed stage, built by autofaiss, with recall measured against exact search.

Stage folder: ``image.index``, ``text.index`` and ``image_infos.json`` / ``text_infos.json`` (autofaiss'
infos plus ``rows``, ``dim``, ``metric``, ``k``, ``recall_at_k`` and the number of queries).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np
from faiss.contrib.exhaustive_search import knn_ground_truth

from react_core.config import IndexConfig
from react_core.knowledge.embed import load_embeddings, load_metadata
from react_core.storage import Stage, Storage, join

_logger = logging.getLogger(__name__)

KINDS = {"image": "img", "text": "text"}


class IndexBuildError(RuntimeError):
    """autofaiss could not build an index."""


class IndexMismatchError(ValueError):
    """An index does not fit its metadata or the model; names both and the fix."""


def _blocks(x: np.ndarray, bs: int = 65536) -> Iterator[np.ndarray]:
    for i in range(0, len(x), bs):
        yield x[i : i + bs]


def recall_at_k(index: faiss.Index, database: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k (inner product) that ``index`` returns in its top-k, ties counted.

    Web corpora repeat themselves (the same caption on thousands of pairs, the same image re-hosted): a
    returned row as similar as the k-th exact one is as right as the row exact search happened to list,
    and counting only id overlap charged the index for exact search's arbitrary choice among tied rows
    (the mini-web's caption index: 0.885 by ids at any efSearch). As ann-benchmarks does, a result counts
    when its true similarity is at least the k-th exact similarity (less 1e-5).
    """
    k = min(k, len(database))
    exact, _ = knn_ground_truth(queries, _blocks(database), k, metric_type=faiss.METRIC_INNER_PRODUCT)
    _, approx = index.search(queries, k)
    found = approx >= 0
    sims = np.einsum("qd,qkd->qk", queries, database[np.where(found, approx, 0)])  # true similarity of each
    hits = (found & (sims >= exact[:, k - 1 : k] - 1e-5)).sum(axis=1)
    return float(np.mean(hits) / k)


def _search_knob(index: faiss.Index) -> tuple[str, int, int] | None:
    """The search parameter that trades speed for recall: (name, current value, ceiling), or None (exact)."""
    try:
        ivf = faiss.extract_index_ivf(index)
        return "nprobe", int(ivf.nprobe), int(ivf.nlist)
    except RuntimeError:
        pass
    inner = faiss.downcast_index(index.index if isinstance(index, faiss.IndexPreTransform) else index)
    if hasattr(inner, "hnsw"):
        return "efSearch", int(inner.hnsw.efSearch), 1 << 15
    return None


def tune_recall(
    index: faiss.Index, database: np.ndarray, queries: np.ndarray, k: int, target: float
) -> tuple[float, str | None]:
    """Set the index's search parameter to reach recall@k ``target`` on ``queries`` at the least search cost.

    autofaiss tunes for a query-time budget, not for a recall floor: its setting can fall short of the
    floor (doubled until it is reached, or the ceiling) or lie far above it (halved while the floor still
    holds: an IVF index it gave nprobe=275 reached recall 1.0 where the floor needed a fraction of that).
    Returns the recall reached and the parameter setting (``"efSearch=512"``), None for exact indices.
    """
    recall = recall_at_k(index, database, queries, k)
    knob = _search_knob(index)
    if knob is None:
        return recall, None
    name, value, ceiling = knob
    space = faiss.ParameterSpace()
    if recall >= target:
        floor = k if name == "efSearch" else 1  # HNSW searches with max(efSearch, k) anyway
        while value > floor:
            lower = max(floor, value // 2)
            space.set_index_parameters(index, f"{name}={lower}")
            r = recall_at_k(index, database, queries, k)
            if r < target:
                space.set_index_parameters(index, f"{name}={value}")
                break
            value, recall = lower, r
        return recall, f"{name}={value}"
    while recall < target and value < ceiling:
        value = min(ceiling, max(value * 2, value + 1))
        space.set_index_parameters(index, f"{name}={value}")
        recall = recall_at_k(index, database, queries, k)
    return recall, f"{name}={value}"


def build_one(emb: np.ndarray, cfg: IndexConfig, workdir: str, name: str) -> tuple[str, dict[str, Any]]:
    """Build one inner-product index with autofaiss; returns (local index path, autofaiss infos).

    autofaiss logs and returns ``(None, None)`` when it fails (a bad key, too little memory, ...):
    this raises instead, so a failed build never looks like a finished stage.
    """
    from autofaiss import build_index  # heavy import, only where indices are built

    index_path = os.path.join(workdir, f"{name}.index")
    infos_path = os.path.join(workdir, f"{name}_autofaiss.json")
    try:
        index, infos = build_index(
            embeddings=emb,
            index_path=index_path,
            index_infos_path=infos_path,
            index_key=cfg.index_key,
            max_index_memory_usage=cfg.max_index_memory_usage,
            current_memory_available=cfg.current_memory_available,
            metric_type="ip",
            save_on_disk=True,
            verbose=logging.WARNING,
        )
    except Exception as exc:  # noqa: BLE001 - autofaiss raises assorted errors for bad keys
        raise IndexBuildError(
            f"autofaiss could not build the {name} index ({type(exc).__name__}: {exc}); "
            f"fix: check index.index_key ({cfg.index_key!r}) or raise index.max_index_memory_usage"
        ) from None
    if index is None or not os.path.exists(index_path):
        raise IndexBuildError(
            f"autofaiss returned no {name} index for {len(emb):,} x {emb.shape[1]} vectors "
            f"(index_key={cfg.index_key!r}, budget {cfg.max_index_memory_usage}); "
            "fix: raise index.max_index_memory_usage or set index.index_key (e.g. 'Flat' for small data)"
        )
    return index_path, dict(infos or {})


def build_indices(storage: Storage, embed_uri: str, stage: Stage, cfg: IndexConfig, k: int, seed: int = 0) -> str:
    """Build the image and caption indices of an embed stage; returns the stage URI.

    Recall@k is measured for each index against exact search, with ``cfg.recall_queries`` caption
    embeddings as queries (text->image for the image index, text->text for the caption index).
    """
    if stage.done:
        return stage.uri
    text = load_embeddings(storage, embed_uri, "text").astype(np.float32)
    rng = np.random.default_rng(seed)
    queries = text[rng.choice(len(text), size=min(cfg.recall_queries, len(text)), replace=False)]
    counts: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="react-index-") as tmp:
        for name, kind in KINDS.items():
            emb = text if kind == "text" else load_embeddings(storage, embed_uri, kind).astype(np.float32)
            path, infos = build_one(emb, cfg, tmp, name)
            index = faiss.read_index(path)
            if cfg.recall_target is not None:
                recall, param = tune_recall(index, emb, queries, k, cfg.recall_target)
                if param is not None:
                    faiss.write_index(index, path)  # the tuned parameter is saved with the index
                    if recall < cfg.recall_target:
                        _logger.warning("%s index: recall@%d %.3f below the target %.2f at %s (its ceiling)",
                                        name, k, recall, cfg.recall_target, param)  # fmt: skip
            else:
                recall, param = recall_at_k(index, emb, queries, k), None
            infos.update(
                {"rows": int(index.ntotal), "dim": int(index.d), "metric": "ip", "k": k,
                 "recall_at_k": recall, "recall_queries": len(queries), "embed_uri": embed_uri,
                 "search_param": param or infos.get("index_param"), "recall_target": cfg.recall_target}
            )  # fmt: skip
            storage.put_file(path, stage.file(f"{name}.index"))
            storage.write_json(stage.file(f"{name}_infos.json"), infos)
            counts[f"{name}.rows"] = int(index.ntotal)
            counts[f"{name}.recall_at_{k}"] = round(recall, 4)
            _logger.info("%s index: %s, %d rows, recall@%d %.3f", name, infos.get("index_key"), index.ntotal, k, recall)
    return stage.complete(counts=counts)


def load_index(storage: Storage, index_uri: str, name: str, metadata_rows: int, model_dim: int) -> faiss.Index:
    """Read ``{name}.index`` and check it against the metadata and the model.

    Raises:
        IndexMismatchError: row count differs from the metadata, or dimension from the model's.
    """
    with tempfile.NamedTemporaryFile(suffix=".index") as f:
        f.write(storage.read_bytes(join(index_uri, f"{name}.index")))
        f.flush()
        index = faiss.read_index(f.name)
    if index.ntotal != metadata_rows:
        raise IndexMismatchError(
            f"{index_uri}/{name}.index has {index.ntotal:,} rows but the metadata has {metadata_rows:,}; "
            "fix: rebuild the index from the same embed stage as the metadata"
        )
    if index.d != model_dim:
        raise IndexMismatchError(
            f"{index_uri}/{name}.index has dimension {index.d} but the model embeds in {model_dim}; "
            "fix: use the model that embedded the knowledge base (model.name / model.pretrained)"
        )
    return index


def metadata_rows(storage: Storage, embed_uri: str) -> int:
    return len(load_metadata(storage, embed_uri))
