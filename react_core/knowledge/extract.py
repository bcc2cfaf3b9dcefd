"""The download stage for a knowledge base that is already local shards: extract, do not fetch.

When the corpus has no URLs (webdataset shards made from a local collection, or URLs long dead), the
selected pairs are read out of the knowledge base's own shards by the manifest's ``shard`` and
``offset`` and written in exactly the layout img2dataset writes (``{n:05d}.tar`` with ``.jpg``/``.txt``/
``.json``, ``{n:05d}.parquet``, ``{n:05d}_stats.json``), through img2dataset's own resizer, sample writer
and stats writer, so training, :func:`react_core.knowledge.download.summarize` and everything downstream
cannot tell the two apart.

Each knowledge-base shard is read once, start to end, with only the current output shard in memory:
rows are extracted in (shard, offset) order, which is also what makes output shard ``n`` the same rows on
every run, so an interrupted extraction resumes by the output shards' stats files, as img2dataset does.
"""

from __future__ import annotations

import io
import logging
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pyarrow as pa

from react_core.config import DownloadConfig
from react_core.data import iter_shard
from react_core.knowledge.download import EXTRA_COLUMNS, DownloadError, summarize
from react_core.knowledge.img2dataset_env import without_wandb
from react_core.knowledge.retrieve import read_manifest
from react_core.progress import bar as progress_bar
from react_core.storage import Stage, Storage, local_path

_logger = logging.getLogger(__name__)

OOM_SHARD_COUNT = 5  # img2dataset's default: shard names 00000, 00001, ...


def manifest_has_urls(manifest: pd.DataFrame) -> bool:
    urls = manifest["url"] if "url" in manifest else pd.Series(dtype=object)
    return bool(urls.notna().any() and (urls.dropna().astype(str).str.len() > 0).any())


def _schema(table: pd.DataFrame) -> pa.Schema:
    """img2dataset's parquet schema: the input columns, then what its downloader adds."""
    fields = []
    for name in table.columns:
        t = pa.Schema.from_pandas(table[[name]], preserve_index=False).field(name).type
        fields.append(pa.field(name, pa.string() if pa.types.is_null(t) else t))
    extra = [
        ("key", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
    ]
    return pa.schema(fields + [pa.field(n, t) for n, t in extra])


def _kb_images(storage: Storage, rows: pd.DataFrame) -> Iterator[tuple[int, bytes | None]]:
    """(row position, image bytes or None) for rows sorted by (shard, offset): each shard read once, in order."""
    for shard, group in rows.groupby("shard", sort=False):
        wanted = group["offset"].to_numpy()
        positions = group.index.to_numpy()
        j = 0
        for offset, sample in enumerate(iter_shard(storage, shard)):
            while j < len(wanted) and wanted[j] == offset:
                data = next((sample[k] for k in ("jpg", "jpeg", "png", "webp") if k in sample), None)
                yield int(positions[j]), data
                j += 1
            if j == len(wanted):
                break
        for k in range(j, len(wanted)):  # offsets past the shard's end
            yield int(positions[k]), None


def extract(storage: Storage, manifest_uri: str, stage: Stage, cfg: DownloadConfig, progress: bool = True) -> str:
    """Write the manifest's pairs, taken from the knowledge-base shards, into ``stage`` as img2dataset would.

    Raises:
        DownloadError: the manifest is empty, has rows without ``shard``/``offset``, or nothing could be read.
    """
    manifest = read_manifest(storage, manifest_uri)
    if manifest.empty:
        raise DownloadError(f"{manifest_uri}/manifest.parquet has no rows; fix: widen retrieval (k, modes)")
    if manifest["shard"].isna().any() or manifest["offset"].isna().any():
        raise DownloadError(
            f"{manifest_uri}/manifest.parquet has rows without shard/offset, so they cannot be extracted from the "
            "knowledge base; fix: set download.mode=fetch (download by URL)"
        )
    table = manifest.rename(columns=EXTRA_COLUMNS)[["url", "caption", *EXTRA_COLUMNS.values()]]
    table = table.astype({"url": object}).where(table.notna(), None)
    order = manifest.sort_values(["shard", "offset"], kind="stable").index
    table, places = table.loc[order].reset_index(drop=True), manifest.loc[order, ["shard", "offset"]]
    places = places.reset_index(drop=True).astype({"offset": int})
    lp = local_path(stage.uri)
    with tempfile.TemporaryDirectory(prefix="react-extract-") as tmp:
        out = lp if lp is not None else os.path.join(tmp, "out")
        summary = _extract(storage, table, places, out, cfg, progress)
        if lp is None:  # written locally, then one batched upload (as the download stage)
            storage.fs.put(out.rstrip("/") + "/", storage.path(stage.uri), recursive=True)
    if summary.get("successes", 0) == 0:
        raise DownloadError(
            f"no pair of the {len(manifest):,} in {manifest_uri}/manifest.parquet could be read from its "
            f"knowledge-base shards ({summary['failures_by_reason']}); fix: check knowledge_base.source"
        )
    _logger.info("extract: %s", summary)
    storage.write_json(stage.file("download_summary.json"), summary)
    counts = {k: v for k, v in summary.items() if k not in ("failures_by_reason", "source")}
    return stage.complete(counts=counts, summary=summary)


def _extract(
    storage: Storage, table: pd.DataFrame, places: pd.DataFrame, out: str, cfg: DownloadConfig, progress: bool
) -> dict:
    """Write output shards into the local folder ``out`` (those whose stats exist are kept); returns the summary."""
    with without_wandb():
        from img2dataset.downloader import compute_key
        from img2dataset.logger import CappedCounter, write_stats
        from img2dataset.resizer import Resizer
        from img2dataset.writer import WebDatasetSampleWriter

    schema = _schema(table)
    records = table.to_dict("records")  # python scalars: the writer json-dumps them
    per = cfg.samples_per_shard
    oom_sample = math.ceil(math.log10(per)) if per > 1 else 1
    resizer = Resizer(cfg.image_size, "border", True)
    n_out = -(-len(table) // per)
    done = {n for n in range(n_out) if os.path.exists(os.path.join(out, f"{n:0{OOM_SHARD_COUNT}d}_stats.json"))}
    todo = places[~(places.index // per).isin(done)]
    writer: Any = None
    current, stats = -1, Counter()
    status = CappedCounter()
    start = time.time()

    def close(n: int) -> None:
        writer.close()
        write_stats(
            out,
            n,
            stats["count"],
            stats["successes"],
            stats["failed_to_download"],
            stats["failed_to_resize"],
            start,
            time.time(),
            status,
            OOM_SHARD_COUNT,
        )

    os.makedirs(out, exist_ok=True)
    bar = progress_bar(len(todo), "extract", "pair", show=progress)
    for pos, data in _kb_images(storage, todo):
        bar.update(1)
        n = pos // per
        if n != current:
            if writer is not None:
                close(current)
            writer = WebDatasetSampleWriter(n, out, True, OOM_SHARD_COUNT, schema, "jpg")
            current, stats, status, start = n, Counter(), CappedCounter(), time.time()
        row = records[pos]
        meta = {
            **row,
            "key": compute_key(pos % per, n, oom_sample, OOM_SHARD_COUNT),
            "status": None,
            "error_message": None,
            "width": None,
            "height": None,
            "original_width": None,
            "original_height": None,
        }
        stats["count"] += 1
        img, outcome = None, "success"
        if data is None:  # as img2dataset files a URL that gave nothing
            meta["error_message"], outcome = "sample not found in its knowledge-base shard", "failed_to_download"
        else:
            img, w, h, ow, oh, err = resizer(io.BytesIO(data))
            if err is None:
                meta.update(width=w, height=h, original_width=ow, original_height=oh)
            else:
                meta["error_message"], outcome = err, "failed_to_resize"
        meta["status"] = outcome
        stats[outcome if outcome != "success" else "successes"] += 1
        status.increment(meta["error_message"] or "success")
        writer.write(img, meta["key"], row["caption"], meta)
    bar.close()
    if writer is not None:
        close(current)
    return {**summarize(out), "source": "knowledge-base shards"}
