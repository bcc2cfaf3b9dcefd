"""Reading an embed stage (:mod:`react_core.knowledge.embed` writes it): its shards' layout, the image and caption
embeddings and the metadata, whole or by row; what the index, retrieve, replay and names stages read."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from react_core.errors import ReactError
from react_core.storage import SUCCESS, Storage, StorageError, join


class EmbeddingError(ReactError, ValueError):
    """Embeddings that must not be written (NaN, zero norm) or a stage with shards missing; names the shard."""


def shard_index(uri: str) -> int:
    """``i`` of a per-shard file ``{name}_{i}.{ext}``."""
    return int(uri.rsplit("_", 1)[1].split(".")[0])


def shard_layout(storage: Storage, stage_uri: str) -> list[tuple[int, int | None]]:
    """(shard index, rows) of an embed stage's per-shard files, in row order: from ``shards.json`` for a finished
    stage (every shard, with the rows it recorded), else the metadata files found (rows unknown). Rows are
    addressed through this, never through a folder listing alone: a missing file must not shift the rows after
    it (row 300 read as row 600's caption), it must be named."""
    if storage.exists(join(stage_uri, "shards.json")):
        return [(int(e["index"]), e.get("rows")) for e in storage.read_json(join(stage_uri, "shards.json"))]
    found = sorted(shard_index(u) for u in storage.ls(join(stage_uri, "metadata"), "metadata_*.parquet"))
    gaps = sorted(set(range(len(found))) - set(found))
    if gaps:
        raise EmbeddingError(
            f"{join(stage_uri, 'metadata', f'metadata_{gaps[0]}.parquet')} is missing ({len(gaps)} shard(s) without "
            "metadata before the last one); fix: run the embed stage again (finished shards are kept)"
        )
    return [(i, None) for i in found]


def _shard_file(stage_uri: str, kind: str, index: int) -> str:
    if kind == "metadata":
        return join(stage_uri, "metadata", f"metadata_{index}.parquet")
    return join(stage_uri, f"{kind}_emb", f"{kind}_emb_{index}.npy")


def _read_shard(storage: Storage, stage_uri: str, kind: str, index: int, rows: int | None) -> Any:
    """One shard's metadata (DataFrame) or ``img`` / ``text`` embeddings (array), checked against the rows the
    stage recorded for it; a missing or short file is named with the fix."""
    uri = _shard_file(stage_uri, kind, index)
    fix = (
        f"fix: delete {join(stage_uri, SUCCESS)} and {_shard_file(stage_uri, 'metadata', index)}, then run the "
        "embed stage again (it re-embeds that shard only)"
    )
    try:
        data = storage.read_bytes(uri)
    except StorageError:
        raise EmbeddingError(f"{uri} is missing from the embed stage; {fix}") from None
    out = pd.read_parquet(io.BytesIO(data)) if kind == "metadata" else np.load(io.BytesIO(data))
    if rows is not None and len(out) != rows:
        raise EmbeddingError(f"{uri} has {len(out)} rows where the embed stage recorded {rows}; {fix}")
    return out


def iter_metadata(storage: Storage, stage_uri: str) -> Iterator[pd.DataFrame]:
    """Each shard's metadata, in order, one at a time (a LAION-size metadata does not fit in memory)."""
    for index, rows in shard_layout(storage, stage_uri):
        yield _read_shard(storage, stage_uri, "metadata", index, rows)


def embedding_files(storage: Storage, stage_uri: str, kind: str = "img") -> list[str]:
    """The ``img`` or ``text`` embedding files of an embed stage, in metadata (shard index) order."""
    return [_shard_file(stage_uri, kind, i) for i, _ in shard_layout(storage, stage_uri)]


def load_embeddings(storage: Storage, stage_uri: str, kind: str = "img") -> np.ndarray:
    """All rows of ``img`` or ``text`` embeddings of an embed stage, in metadata order."""
    return np.concatenate([_read_shard(storage, stage_uri, kind, i, n) for i, n in shard_layout(storage, stage_uri)])


def load_metadata(storage: Storage, stage_uri: str) -> pd.DataFrame:
    """All metadata rows of an embed stage (small knowledge bases; see :func:`load_metadata_rows`)."""
    parts = [_read_shard(storage, stage_uri, "metadata", i, n) for i, n in shard_layout(storage, stage_uri)]
    return pd.concat(parts, ignore_index=True)


def _gather(storage: Storage, stage_uri: str, kind: str, rows: np.ndarray) -> Iterator[tuple[Any, np.ndarray]]:
    """For each shard holding some of the global ``rows`` (sorted, unique): its data and those rows' local
    positions. A finished stage's shards without wanted rows are not read at all."""
    start = 0
    for index, n in shard_layout(storage, stage_uri):
        if start > rows.max(initial=-1):
            return
        if n is not None and not ((rows >= start) & (rows < start + n)).any():
            start += n
            continue
        data = _read_shard(storage, stage_uri, kind, index, n)
        lo, hi = np.searchsorted(rows, [start, start + len(data)])
        yield data, rows[lo:hi] - start
        start += len(data)
    if len(rows) and rows.max() >= start:
        raise ValueError(f"{stage_uri}: rows up to {rows.max()} asked, {start} embedded")


def load_metadata_rows(storage: Storage, stage_uri: str, rows: np.ndarray) -> pd.DataFrame:
    """Metadata of the global ``rows`` (sorted, unique), reading one shard's file at a time and keeping only
    those rows: the whole metadata of a LAION-size knowledge base (hundreds of millions of captions) does not
    fit in memory, the rows retrieval picked do."""
    parts = [meta.iloc[local] for meta, local in _gather(storage, stage_uri, "metadata", np.asarray(rows, np.int64))]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["key", "caption", "shard", "offset"])


def metadata_rows(storage: Storage, stage_uri: str) -> int:
    """Row count of an embed stage's metadata: the finished stage's count, else the parquet footers."""
    try:
        counts = storage.stage_manifest(stage_uri).get("counts", {})
    except StorageError:  # not finished
        counts = {}
    if "embedded" in counts:
        return int(counts["embedded"])
    total = 0
    for index, _ in shard_layout(storage, stage_uri):
        with storage.open(_shard_file(stage_uri, "metadata", index)) as f:
            total += pq.ParquetFile(f).metadata.num_rows  # the footer only
    return total


def load_rows(storage: Storage, stage_uri: str, rows: np.ndarray, kind: str = "img") -> np.ndarray:
    """Embeddings of the given global ``rows`` (any order; metadata order numbering), one shard file at a time."""
    wanted, back = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
    if not len(wanted):  # no rows: an empty array of the stage's width and dtype
        index, n = shard_layout(storage, stage_uri)[0]
        return _read_shard(storage, stage_uri, kind, index, n)[:0]
    return np.concatenate([emb[local] for emb, local in _gather(storage, stage_uri, kind, wanted)])[back]
