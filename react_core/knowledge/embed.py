"""Embed a knowledge base of webdataset shards into clip-retrieval's layout.

For input shard ``i`` (in sorted order) the stage writes::

    img_emb/img_emb_{i}.npy            (n_i, D) float16, L2-normalised image embeddings
    text_emb/text_emb_{i}.npy          (n_i, D) float16, L2-normalised caption embeddings
    stats/stats_{i}.json               {"shard", "embedded", "skipped", "worker": host:pid, "started",
                                       "finished" (unix times: first batch out of the loader, written)}
    metadata/metadata_{i}.parquet      n_i rows in the same order: key, caption, shard, offset, + the
                                       sample's .json fields (url, ...)

Reader -> model -> writer: DataLoader workers read whole shards (one worker per shard at a time),
decode images to open_clip's validation pixels and tokenize captions, and hand over batches tagged with
their shard and sample offsets; the model encodes them (bf16 and channels-last on CUDA) as they come;
a shard is written when all its batches are in, its rows ordered by offset, so the order in which
workers finish never shows in the files. The metadata file is written last: a shard whose metadata
exists is finished and is skipped on a re-run. Undecodable samples are skipped and counted per shard
(embedded + skipped = samples in the shard).

:func:`embed_shards` embeds any subset of the shards (what one Prefect task on a Dask worker does);
:func:`finish` checks that every shard is there, writes ``shards.json`` and ``throughput.json``
(pairs per second of each worker process) and marks the stage complete. The stages that read the embeddings do so
through :mod:`react_core.knowledge.embeddings`.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from react_core.data import ShardReadError, iter_shard, shard_index_count
from react_core.data.datasets import prepare
from react_core.knowledge.embeddings import EmbeddingError, shard_index
from react_core.models.encode import autocast, model_device, model_image_size, normalize
from react_core.models.text import encode_text
from react_core.progress import bar as progress_bar
from react_core.storage import Stage, Storage, StorageError, join

_logger = logging.getLogger(__name__)

_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)


@dataclass
class ShardResult:
    index: int
    embedded: int
    skipped: int
    cached: bool


def _image_bytes(sample: dict[str, Any]) -> bytes | None:
    return next((sample[k] for k in ("jpg", "jpeg", "png", "webp") if k in sample), None)


class ShardBatches(torch.utils.data.IterableDataset):
    """Batches of decoded samples of the given shards; each DataLoader worker reads whole shards.

    Yields dicts: ``index`` (the shard's), ``offsets`` (B,) positions in the shard, ``rows`` (metadata),
    ``images`` (B, 3, S, S) uint8, ``tokens`` (B, L); the shard's last batch also carries ``skipped`` and
    ``batches`` (how many batches the shard gave), so a consumer knows when a shard is complete whatever
    order batches arrive in.
    """

    def __init__(
        self,
        storage: Storage,
        shards: Sequence[tuple[int, str]],
        image_size: int,
        tokenizer: Callable[[list[str]], torch.Tensor],
        batch_size: int,
        draft: bool = True,
    ) -> None:
        self.storage, self.shards, self.image_size = storage, list(shards), image_size
        self.tokenizer, self.batch_size, self.draft = tokenizer, batch_size, draft

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        mine = self.shards if info is None else self.shards[info.id :: info.num_workers]
        for index, uri in mine:
            yield from self._shard(index, uri)

    def _batch(
        self, shard: tuple[int, str], offsets: list[int], rows: list[dict], images: list, captions: list
    ) -> dict:
        size = self.image_size
        return {
            "index": shard[0],
            "uri": shard[1],
            "offsets": torch.tensor(offsets, dtype=torch.int64),
            "rows": list(rows),
            "images": torch.stack(images) if images else torch.zeros((0, 3, size, size), dtype=torch.uint8),
            "tokens": self.tokenizer(list(captions)) if captions else None,
            "skipped": 0,
            "batches": 0,
            "read": 0,
            "expected": None,
            "error": None,
        }

    def _shard(self, index: int, uri: str) -> Iterator[dict[str, Any]]:
        offsets: list[int] = []
        rows: list[dict[str, Any]] = []
        images: list[torch.Tensor] = []
        captions: list[str] = []
        skipped = batches = read = 0
        error = None
        samples = iter_shard(self.storage, uri)
        while True:
            try:
                sample = next(samples)
            except StopIteration:
                break
            except ShardReadError as exc:  # truncated or unreadable: what came before is kept, the loss counted
                error = exc.args[0]
                break
            offset, read = read, read + 1
            data = _image_bytes(sample)
            try:
                if data is None:
                    raise UnidentifiedImageError("no image in sample")
                img = Image.open(io.BytesIO(data))
                if self.draft:  # JPEG: decode at the smallest DCT scale whose short side is still >= the size
                    img.draft("RGB", (self.image_size, self.image_size))
                img = prepare(img, self.image_size)
            except _DECODE_ERRORS as exc:
                skipped += 1
                _logger.debug("skipping %s in %s: %s", sample.get("__key__"), uri, exc)
                continue
            caption = (sample.get("txt") or b"").decode("utf-8", errors="replace")
            extra = json.loads(sample["json"]) if "json" in sample else {}
            rows.append({**extra, "key": sample["__key__"], "caption": caption, "shard": uri, "offset": offset})
            offsets.append(offset)
            images.append(img)
            captions.append(caption)
            if len(images) == self.batch_size:
                yield self._batch((index, uri), offsets, rows, images, captions)
                batches += 1
                offsets, rows, images, captions = [], [], [], []
        last = self._batch((index, uri), offsets, rows, images, captions)  # possibly empty: it carries the totals
        expected = shard_index_count(self.storage, uri)
        if error is None and expected is not None and read != expected:
            error = f"{uri} holds {read} samples but its index ({uri[:-4]}_stats.json) says {expected}"
        last.update(skipped=skipped, batches=batches + 1, read=read, expected=expected, error=error)
        yield last


@dataclass
class _Pending:
    """One shard's encoded batches, until all have arrived."""

    offsets: list[np.ndarray] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    img: list[np.ndarray] = field(default_factory=list)
    txt: list[np.ndarray] = field(default_factory=list)
    received: int = 0
    batches: int | None = None  # how many batches the shard gave (known from its last one)
    skipped: int = 0
    read: int = 0  # samples read from the tar
    expected: int | None = None  # samples its index promises (None: no index)
    error: str | None = None  # why the shard is damaged (truncated, unreadable, fewer samples than its index)
    started: float = field(default_factory=time.time)  # its first batch came out of the loader

    @property
    def complete(self) -> bool:
        return self.batches is not None and self.received == self.batches


def _check(emb: np.ndarray, what: str, shard_uri: str) -> None:
    if not np.isfinite(emb).all():
        raise EmbeddingError(f"{what} embeddings of {shard_uri} contain NaN/inf; fix: check the model weights/inputs")
    norms = np.linalg.norm(emb.astype(np.float32), axis=1)
    if (norms < 0.5).any():
        raise EmbeddingError(f"{what} embeddings of {shard_uri} have zero norm rows; fix: check the model")


def _save_npy(storage: Storage, uri: str, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    storage.write_bytes(uri, buf.getvalue())


def _write_shard(storage: Storage, stage: Stage, index: int, uri: str, p: _Pending, dim: int) -> ShardResult:
    order = np.argsort(np.concatenate(p.offsets), kind="stable") if p.offsets else np.zeros(0, np.int64)
    rows = [p.rows[i] for i in order]
    empty = np.zeros((0, dim), np.float32)  # a shard with no decodable image
    img = (np.concatenate(p.img) if p.img else empty)[order].astype(np.float16)
    txt = (np.concatenate(p.txt) if p.txt else empty)[order].astype(np.float16)
    if rows:
        _check(img, "image", uri)
        _check(txt, "caption", uri)
    _save_npy(storage, stage.file("img_emb", f"img_emb_{index}.npy"), img)
    _save_npy(storage, stage.file("text_emb", f"text_emb_{index}.npy"), txt)
    stats = {
        "shard": uri,
        "embedded": len(rows),
        "skipped": p.skipped,
        "read": p.read,
        "expected": p.expected,
        "unread": max(0, (p.expected or 0) - p.read),
        "error": p.error,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "started": p.started,
        "finished": time.time(),
    }
    storage.write_json(stage.file("stats", f"stats_{index}.json"), stats)
    damaged = stage.file("damaged", f"damaged_{index}.json")
    if p.error:  # marked before the shard counts as finished: it is embedded again by the next run
        storage.write_json(damaged, stats)
    buf = io.BytesIO()
    pd.DataFrame(rows, columns=None if rows else ["key", "caption", "shard", "offset"]).to_parquet(buf)
    storage.write_bytes(stage.file("metadata", f"metadata_{index}.parquet"), buf.getvalue())  # last: shard done
    if not p.error:
        storage.rm(damaged)  # embedded whole this time
    if p.skipped:
        _logger.warning("%s: %d undecodable samples skipped", uri, p.skipped)
    if p.error:
        _logger.warning(
            "damaged shard: %s (%d samples embedded, %d skipped, %s unread)",
            p.error,
            len(rows),
            p.skipped,
            stats["unread"] if p.expected is not None else "an unknown number of",
        )
    return ShardResult(index, len(rows), p.skipped, False)


@torch.no_grad()
def embed_batches(
    model: torch.nn.Module, storage: Storage, stage: Stage, batches: Iterable[dict[str, Any]], progress: Any = None
) -> list[ShardResult]:
    """Encode :class:`ShardBatches` batches as they come (any order) and write each shard once complete."""
    device = model_device(model)
    cuda = device.type == "cuda"
    dim = int(getattr(model.visual, "output_dim", 0))
    pending: dict[int, _Pending] = {}
    uris: dict[int, str] = {}
    results = []
    for b in batches:
        p = pending.setdefault(b["index"], _Pending())
        uris[b["index"]] = b["uri"]
        if len(b["offsets"]):
            x = b["images"].to(device, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device):
                img = model.encode_image(normalize(x))
                txt = encode_text(model, b["tokens"].to(device, non_blocking=True))
            p.img.append(F.normalize(img.float(), dim=-1).cpu().numpy())
            p.txt.append(F.normalize(txt.float(), dim=-1).cpu().numpy())
            p.offsets.append(b["offsets"].numpy())
            p.rows.extend(b["rows"])
        p.received += 1
        if b["batches"]:
            p.batches, p.skipped, p.read, p.expected, p.error = (
                b[k] for k in ("batches", "skipped", "read", "expected", "error")
            )
        if p.complete:
            results.append(_write_shard(storage, stage, b["index"], uris[b["index"]], pending.pop(b["index"]), dim))
            if progress is not None:
                progress.update(1)
                progress.set_postfix_str(f"embedded={sum(r.embedded for r in results):,}", refresh=False)
    if pending:
        raise EmbeddingError(f"batches of shards {sorted(uris[i] for i in pending)} never completed")
    return results


def knowledge_base_shards(storage: Storage, source: str, miniweb_uri: str | None) -> list[str]:
    """The knowledge base's webdataset shards (``knowledge_base.source``: the mini-web's, or a folder of shards)."""
    if source == "miniweb":
        if miniweb_uri is None:
            raise EmbeddingError(
                "knowledge_base.source is 'miniweb' but no mini-web was generated; fix: run prepare-world"
            )
        uri = join(miniweb_uri, "kb", "shards")
    else:
        uri = source.rstrip("/")
    try:
        shards = storage.ls(uri, "*.tar")
    except (FileNotFoundError, OSError):
        shards = []
    if not shards:
        raise StorageError(
            f"knowledge base {uri} has no webdataset shards (*.tar); fix: point knowledge_base.source at a "
            "folder of shards, or use 'miniweb'"
        )
    return shards


def _written_shards(storage: Storage, stage: Stage) -> set[int]:
    return {shard_index(u) for u in storage.ls(stage.file("metadata"), "metadata_*.parquet")}


def damaged_shards(storage: Storage, stage: Stage) -> set[int]:
    """Indices of shards written with a damage (truncated, unreadable, fewer samples than their index)."""
    return {shard_index(u) for u in storage.ls(stage.file("damaged"), "damaged_*.json")}


def embedded_shards(storage: Storage, stage: Stage) -> set[int]:
    """Indices of the finished shards (their metadata, written last, exists, and they are not damaged): two
    listings, not a request per shard (a LAION-size knowledge base has tens of thousands of shards, on S3).
    A damaged shard is tried again by every run, so a shard put right is embedded whole."""
    return _written_shards(storage, stage) - damaged_shards(storage, stage)


def _read_stats(storage: Storage, stage: Stage, indices: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The stats of finished shards ``indices``, read concurrently (a request each, in turn, is tens of thousands
    of round trips on S3 for a LAION-size knowledge base). Every finished shard has one (written before its
    metadata); a missing one is named with the fix."""
    uris = [stage.file("stats", f"stats_{i}.json") for i in indices]
    try:
        blobs = storage.read_many(uris)
    except StorageError as exc:
        raise EmbeddingError(
            f"{exc.args[0].split(';')[0]} although its shard's metadata exists (the stats are written first); "
            "fix: delete that shard's metadata file so the shard is embedded again"
        ) from None
    return {i: json.loads(blob) for i, blob in zip(indices, blobs, strict=True)}


def _finished(storage: Storage, stage: Stage, indices: Sequence[int]) -> dict[int, ShardResult]:
    """The counts of finished shards ``indices``."""
    stats = _read_stats(storage, stage, indices)
    return {i: ShardResult(i, int(s["embedded"]), int(s["skipped"]), True) for i, s in stats.items()}


def throughput(stats: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per worker process: its shards, pairs, seconds (from its first shard's first batch to its last
    shard's write) and pairs per second, from the shards' stats.

    A process embeds its shards in one stretch, so its span is its working time; the stage's own span is
    not (a resumed stage includes the pause), which is why this is per worker.
    """
    by: dict[str, list[Mapping[str, Any]]] = {}
    for s in stats:
        by.setdefault(s["worker"], []).append(s)
    out = {}
    for worker, shards in sorted(by.items()):
        pairs = sum(int(s["embedded"]) for s in shards)
        seconds = max(s["finished"] for s in shards) - min(s["started"] for s in shards)
        out[worker] = {
            "shards": len(shards),
            "pairs": pairs,
            "seconds": round(seconds, 3),
            "pairs_per_s": round(pairs / seconds, 2) if seconds > 0 else 0.0,
        }
    return out


def embed_shards(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    storage: Storage,
    shard_uris: Sequence[str],
    stage: Stage,
    indices: Sequence[int] | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
    draft: bool = True,
) -> list[ShardResult]:
    """Embed shards ``indices`` of ``shard_uris`` (all by default) into ``stage``; finished ones are skipped.

    Decoding runs in ``num_workers`` DataLoader processes (0: in this process). Inside a daemonic process
    (a Dask worker with its default ``distributed.worker.daemon: true``), which may not start children,
    decoding falls back to this process with a warning. ``draft``: JPEGs much larger than the model's input
    are decoded at a reduced DCT scale (PIL's draft mode; 2x faster at 1024x768 -> 224, pixels within about
    one grey level of a full decode); False gives exactly open_clip's validation pixels.
    """
    indices = list(range(len(shard_uris))) if indices is None else list(indices)
    finished = embedded_shards(storage, stage)
    done = _finished(storage, stage, [i for i in indices if i in finished])
    todo = [(i, shard_uris[i]) for i in indices if i not in done]
    results = list(done.values())
    if todo:
        model.eval()
        workers = min(num_workers, len(todo))
        if workers and multiprocessing.current_process().daemon:
            _logger.warning(
                "embedding in a daemonic process (a Dask worker?): decoding without DataLoader workers; "
                "fix: start the workers with DASK_DISTRIBUTED__WORKER__DAEMON=False"
            )
            workers = 0
        data = ShardBatches(storage, todo, model_image_size(model), tokenizer, batch_size, draft)
        loader = torch.utils.data.DataLoader(
            data,
            batch_size=None,
            num_workers=workers,
            pin_memory=model_device(model).type == "cuda",
            prefetch_factor=4 if workers else None,
        )
        with progress_bar(len(todo), "embed", "shard", show=progress) as bar:
            results += embed_batches(model, storage, stage, loader, bar)
    return sorted(results, key=lambda r: r.index)


def finish(
    storage: Storage,
    stage: Stage,
    shard_uris: Sequence[str],
    resumed_shards: int = 0,
    max_damaged_shards: int = 0,
    require_index: bool = False,
) -> str:
    """Check that every shard was embedded, write ``shards.json``, ``throughput.json`` and the stage marker;
    returns the URI.

    ``resumed_shards``: how many shards an earlier, interrupted attempt had finished (a count for the marker).
    ``max_damaged_shards``: how many damaged shards (``knowledge_base.max_damaged_shards``) the stage accepts,
    their readable samples embedded and the rest counted as ``unread``; above it the stage fails naming them.
    """
    finished = _written_shards(storage, stage)
    missing = [u for i, u in enumerate(shard_uris) if i not in finished]
    if missing:
        raise EmbeddingError(
            f"{len(missing)} of {len(shard_uris)} shards have no embeddings in {stage.uri} (first: {missing[0]}); "
            "fix: run the embed stage again (finished shards are kept)"
        )
    stats = _read_stats(storage, stage, range(len(shard_uris)))
    damaged = sorted(i for i in damaged_shards(storage, stage) if i < len(shard_uris))
    if len(damaged) > max_damaged_shards:
        shown = "; ".join(str(stats[i]["error"]) for i in damaged[:3])
        raise EmbeddingError(
            f"{len(damaged)} damaged knowledge-base shard(s) ({shown}{'; ...' if len(damaged) > 3 else ''}), "
            f"more than knowledge_base.max_damaged_shards={max_damaged_shards}; fix: replace those shards (download "
            "them again) and run again (only they are embedded again), or raise knowledge_base.max_damaged_shards "
            "to accept the loss"
        )
    unindexed = [shard_uris[i] for i in sorted(stats) if stats[i].get("expected") is None]
    if unindexed:
        listed = ", ".join(unindexed[:3]) + (f" and {len(unindexed) - 3} more" if len(unindexed) > 3 else "")
        if require_index:
            raise EmbeddingError(
                f"{len(unindexed)} knowledge-base shard(s) have no index ({listed}; each needs its "
                "{shard}_stats.json with 'successes'), and knowledge_base.require_index is true; fix: restore the "
                "_stats.json files (img2dataset writes them), or set knowledge_base.require_index=false to accept "
                "shards whose completeness cannot be checked"
            )
        _logger.warning(
            "%d knowledge-base shard(s) have no index ({shard}_stats.json): %s; a shard cut between two samples "
            "cannot be told from a whole one there (knowledge_base.require_index=true refuses them)",
            len(unindexed),
            listed,
        )
    workers = throughput(stats.values())
    counts = {
        "shards": len(stats),
        "embedded": sum(int(s["embedded"]) for s in stats.values()),
        "skipped": sum(int(s["skipped"]) for s in stats.values()),
        "damaged_shards": len(damaged),
        "unread": sum(int(s.get("unread") or 0) for s in stats.values()),
        "unindexed_shards": len(unindexed),
        "resumed_shards": resumed_shards,
        "workers": len(workers),
    }
    if workers:
        counts["pairs_per_s_per_worker"] = round(sum(w["pairs_per_s"] for w in workers.values()) / len(workers), 2)
    storage.write_json(stage.file("throughput.json"), workers)
    layout = [{"shard": u, "index": i, "rows": int(stats[i]["embedded"])} for i, u in enumerate(shard_uris)]
    storage.write_json(stage.file("shards.json"), layout)
    return stage.complete(counts=counts)


def embed_knowledge_base(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    storage: Storage,
    shard_uris: Sequence[str],
    stage: Stage,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
    draft: bool = True,
    max_damaged_shards: int = 0,
    require_index: bool = False,
) -> str:
    """Embed every shard in this process (finished ones are skipped), then mark the stage complete."""
    if not shard_uris:
        raise EmbeddingError("no shards to embed; fix: point knowledge_base.source at webdataset .tar shards")
    results = embed_shards(model, tokenizer, storage, shard_uris, stage, None, batch_size, num_workers, progress, draft)
    return finish(storage, stage, shard_uris, sum(r.cached for r in results), max_damaged_shards, require_index)
