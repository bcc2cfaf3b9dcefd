"""FAISS indices over an embed stage, built by autofaiss, with recall measured against exact search.

Stage folder: ``image.index``, ``text.index`` and ``image_infos.json`` / ``text_infos.json`` (autofaiss'
infos plus ``rows``, ``dim``, ``metric``, ``k``, ``recall_at_k`` and the number of queries).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import torch

from react_core.config import IndexConfig
from react_core.errors import ReactError
from react_core.knowledge.embeddings import EmbeddingError, embedding_files, shard_layout
from react_core.storage import SUCCESS, Stage, Storage, StorageError, join, local_path

_logger = logging.getLogger(__name__)

KINDS = {"image": "img", "text": "text"}


class IndexBuildError(ReactError, RuntimeError):
    """autofaiss could not build an index."""


class IndexMismatchError(ReactError, ValueError):
    """An index does not fit its metadata or the model; names both and the fix."""


def row_blocks(x: np.ndarray, bs: int = 65536) -> Iterator[np.ndarray]:
    """An in-memory database as the consecutive blocks :func:`ground_truth` reads."""
    for i in range(0, len(x), bs):
        yield x[i : i + bs]


@dataclass(frozen=True)
class GroundTruth:
    """What exact search says of some queries: per query, every row at least as similar as its k-th exact
    neighbour (ties with the k-th included), as sorted row ids."""

    k: int
    acceptable: list[np.ndarray]


def ground_truth(queries: np.ndarray, blocks: Iterable[np.ndarray], k: int, tie: float = 1e-5) -> GroundTruth:
    """Exact inner-product search of ``queries`` over the database given as consecutive row ``blocks``.

    One pass, memory bounded by a block: the database may be far larger than memory (the embed stage's
    files, read one at a time). Keeps each query's running top-k and, per block, the rows at least as
    similar as the running k-th (less ``tie``); the k-th only rises, so the final filter loses nothing.
    """
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    top = torch.empty((len(q), 0))
    found_q, found_r, found_s = [], [], []
    offset = 0
    for block in blocks:
        b = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
        sims = q @ b.T
        top = torch.cat([top, sims.topk(min(k, sims.shape[1]), dim=1).values], dim=1)
        top = top.topk(min(k, top.shape[1]), dim=1).values
        floor = top[:, -1] - tie if top.shape[1] == k else torch.full((len(q),), -torch.inf)
        qi, ri = (sims >= floor[:, None]).nonzero(as_tuple=True)
        found_q.append(qi)
        found_r.append(ri + offset)
        found_s.append(sims[qi, ri])
        offset += len(b)
    if not offset:
        raise ValueError("exact search over an empty database")
    qi, ri, si = (torch.cat(x) for x in (found_q, found_r, found_s))
    keep = si >= top[qi, -1] - tie
    qi, ri = qi[keep].numpy(), ri[keep].numpy()
    order = np.lexsort((ri, qi))
    bounds = np.searchsorted(qi[order], np.arange(len(q) + 1))
    rows = ri[order]
    return GroundTruth(top.shape[1], [rows[bounds[i] : bounds[i + 1]] for i in range(len(q))])


def recall(index: faiss.Index, queries: np.ndarray, truth: GroundTruth) -> float:
    """Mean fraction of the top-k ``index`` returns that exact search accepts (:class:`GroundTruth`).

    Web corpora repeat themselves (the same caption on thousands of pairs, the same image re-hosted): a
    returned row as similar as the k-th exact one is as right as the row exact search happened to list,
    and counting only id overlap charged the index for exact search's arbitrary choice among tied rows
    (the mini-web's caption index: 0.885 by ids at any efSearch). As ann-benchmarks does, a result counts
    when its true similarity is at least the k-th exact similarity (less 1e-5).
    """
    _, approx = index.search(np.ascontiguousarray(queries, dtype=np.float32), truth.k)
    hits = [np.isin(a[a >= 0], ok).sum() for a, ok in zip(approx, truth.acceptable, strict=True)]
    return float(np.mean(hits) / truth.k)


def recall_at_k(index: faiss.Index, database: np.ndarray, queries: np.ndarray, k: int) -> float:
    """:func:`recall` of ``index`` against exact search over an in-memory ``database``."""
    return recall(index, queries, ground_truth(queries, row_blocks(database), min(k, len(database))))


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


def tune_recall(index: faiss.Index, queries: np.ndarray, truth: GroundTruth, target: float) -> tuple[float, str | None]:
    """Set the index's search parameter to reach recall@k ``target`` on ``queries`` at the least search cost.

    autofaiss tunes for a query-time budget, not for a recall floor: its setting can fall short of the
    floor (doubled until it is reached, or the ceiling) or lie far above it (halved while the floor still
    holds: an IVF index it gave nprobe=275 reached recall 1.0 where the floor needed a fraction of that).
    Exact search runs once (``truth``), not once per setting tried.
    Returns the recall reached and the parameter setting (``"efSearch=512"``), None for exact indices.
    """
    k = truth.k
    reached = recall(index, queries, truth)
    knob = _search_knob(index)
    if knob is None:
        return reached, None
    name, value, ceiling = knob
    space = faiss.ParameterSpace()
    if reached >= target:
        floor = k if name == "efSearch" else 1  # HNSW searches with max(efSearch, k) anyway
        while value > floor:
            lower = max(floor, value // 2)
            space.set_index_parameters(index, f"{name}={lower}")
            r = recall(index, queries, truth)
            if r < target:
                space.set_index_parameters(index, f"{name}={value}")
                break
            value, reached = lower, r
        return reached, f"{name}={value}"
    while reached < target and value < ceiling:
        value = min(ceiling, max(value * 2, value + 1))
        space.set_index_parameters(index, f"{name}={value}")
        reached = recall(index, queries, truth)
    return reached, f"{name}={value}"


def build_one(emb: np.ndarray | str, cfg: IndexConfig, workdir: str, name: str) -> tuple[str, dict[str, Any]]:
    """Build one inner-product index with autofaiss; returns (local index path, autofaiss infos).

    ``emb``: an array, or a local folder of ``.npy`` files that autofaiss streams in name order (memory
    bounded by its budget, not by the knowledge base; float16 files are read as they are).

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
            f"autofaiss returned no {name} index for "
            f"{emb if isinstance(emb, str) else f'{len(emb):,} x {emb.shape[1]} vectors'} "
            f"(index_key={cfg.index_key!r}, budget {cfg.max_index_memory_usage}); "
            "fix: raise index.max_index_memory_usage (autofaiss also needs index.current_memory_available above "
            "it) or set index.index_key (e.g. 'Flat' for small data)"
        )
    return index_path, dict(infos or {})


def _local_folder(storage: Storage, files: list[str], folder: str) -> list[int]:
    """Make ``files`` (an embed stage's ``*_emb_{i}.npy``, in row order) a local folder autofaiss can stream.

    autofaiss reads a folder's files in name order (embedding_reader sorts the paths), where
    ``img_emb_10.npy`` comes before ``img_emb_2.npy``: the files appear under zero-padded names so the
    index's row ids stay the metadata's. Local files are linked, others (S3) downloaded one at a time
    (disk: the stage's float16 files of one kind). Returns the row count of each file.
    """
    os.makedirs(folder)
    width = max(6, len(str(len(files))))
    counts = []
    for i, uri in enumerate(files):
        dst = os.path.join(folder, f"{i:0{width}d}.npy")
        src = local_path(uri)
        if src is not None:
            os.symlink(src, dst)
        else:
            storage.fs.get_file(storage.path(uri), dst)
        counts.append(int(np.load(dst, mmap_mode="r").shape[0]))
    return counts


def _folder_blocks(folder: str, bs: int = 65536) -> Iterator[np.ndarray]:
    """The rows of a :func:`_local_folder`, in order, as float32 blocks of at most ``bs`` rows."""
    for f in sorted(os.listdir(folder)):
        emb = np.load(os.path.join(folder, f), mmap_mode="r")
        for i in range(0, len(emb), bs):
            yield np.asarray(emb[i : i + bs], dtype=np.float32)


def _rows(folder: str, counts: list[int], rows: np.ndarray) -> np.ndarray:
    """Global ``rows`` of a :func:`_local_folder` (memory-mapped: only those rows are read)."""
    starts = np.concatenate([[0], np.cumsum(counts)])
    files = sorted(os.listdir(folder))
    out = []
    for r in rows:
        f = int(np.searchsorted(starts, r, side="right")) - 1
        out.append(np.load(os.path.join(folder, files[f]), mmap_mode="r")[r - starts[f]])
    return np.asarray(out, dtype=np.float32)


def build_indices(storage: Storage, embed_uri: str, stage: Stage, cfg: IndexConfig, k: int, seed: int = 0) -> str:
    """Build the image and caption indices of an embed stage; returns the stage URI.

    Nothing holds a whole kind of embeddings in memory: autofaiss streams the stage's files (under its
    memory budget) and exact search for the recall measure reads them a block at a time, once per index.
    Recall@k is measured for each index against exact search, with ``cfg.recall_queries`` caption
    embeddings as queries (text->image for the image index, text->text for the caption index).
    """
    counts: dict[str, Any] = {}
    queries = None
    with tempfile.TemporaryDirectory(prefix="react-index-") as tmp:
        for name in ("text", "image"):  # text first: the queries come from it
            kind = KINDS[name]
            folder = os.path.join(tmp, f"{kind}_emb")
            files = embedding_files(storage, embed_uri, kind)
            rows = _local_folder(storage, files, folder)
            recorded = [n for _, n in shard_layout(storage, embed_uri)]
            wrong = [(f, got, n) for f, got, n in zip(files, rows, recorded, strict=True) if n is not None and got != n]
            if wrong:
                f, got, n = wrong[0]
                raise EmbeddingError(
                    f"{f} has {got} rows where the embed stage recorded {n}; fix: delete that "
                    "shard's metadata file and the stage's _SUCCESS, then run the embed stage again"
                )
            if queries is None:
                total = sum(rows)
                picked = np.random.default_rng(seed).choice(total, size=min(cfg.recall_queries, total), replace=False)
                queries = _rows(folder, rows, picked)
            path, infos = build_one(folder, cfg, tmp, name)
            index = faiss.read_index(path)
            truth = ground_truth(queries, _folder_blocks(folder), min(k, index.ntotal))
            if cfg.recall_target is not None:
                reached, param = tune_recall(index, queries, truth, cfg.recall_target)
                if param is not None:
                    faiss.write_index(index, path)  # the tuned parameter is saved with the index
                    if reached < cfg.recall_target:
                        _logger.warning(
                            "%s index: recall@%d %.3f below the target %.2f at %s (its ceiling)",
                            name,
                            k,
                            reached,
                            cfg.recall_target,
                            param,
                        )
            else:
                reached, param = recall(index, queries, truth), None
            infos.update(
                {
                    "rows": int(index.ntotal),
                    "dim": int(index.d),
                    "metric": "ip",
                    "k": k,
                    "recall_at_k": reached,
                    "recall_queries": len(queries),
                    "embed_uri": embed_uri,
                    "search_param": param or infos.get("index_param"),
                    "recall_target": cfg.recall_target,
                }
            )
            storage.put_file(path, stage.file(f"{name}.index"))
            storage.write_json(stage.file(f"{name}_infos.json"), infos)
            counts[f"{name}.rows"] = int(index.ntotal)
            counts[f"{name}.recall_at_{k}"] = round(reached, 4)
            _logger.info(
                "%s index: %s, %d rows, recall@%d %.3f%s",
                name,
                infos.get("index_key"),
                index.ntotal,
                truth.k,
                reached,
                f" (retrieval.k={k} is more than the rows: measured at {truth.k})" if k > truth.k else "",
            )
            shutil.rmtree(folder)  # links, or this kind's downloaded files
            os.remove(path)
    return stage.complete(counts=counts)


def load_index(storage: Storage, index_uri: str, name: str, metadata_rows: int, model_dim: int) -> faiss.Index:
    """Read ``{name}.index`` and check it against the metadata and the model.

    Raises:
        IndexMismatchError: row count differs from the metadata, or dimension from the model's.
    """
    uri = join(index_uri, f"{name}.index")
    fix = f"fix: delete {join(index_uri, SUCCESS)} (or the whole folder) and run the index stage again"
    try:
        data = storage.read_bytes(uri)
    except StorageError:
        raise IndexMismatchError(f"{uri} is missing from the index stage; {fix}") from None
    with tempfile.NamedTemporaryFile(suffix=".index") as f:
        f.write(data)
        f.flush()
        try:
            index = faiss.read_index(f.name)
        except RuntimeError as exc:  # faiss names only the temporary copy ("read error in /tmp/...: 51177 != 102400")
            detail = str(exc).strip().splitlines()[-1].replace(f.name, uri)
            raise IndexMismatchError(f"{uri} is damaged ({len(data):,} bytes; faiss: {detail}); {fix}") from None
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
