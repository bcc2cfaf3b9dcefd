"""Fetch a manifest's images with img2dataset into webdataset shards, and summarise what happened.

img2dataset does the work (readers, thread pools, resizing, incremental mode, per-sample failures as
data); this wrapper prepares its input (absolute URLs, extra columns under names it does not reserve),
reads its ``*_stats.json`` back into one summary, and raises when not a single image came through.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import signal
import tempfile
import threading
from collections import Counter
from typing import Any

from react_core.config import DownloadConfig
from react_core.errors import ReactError
from react_core.knowledge.img2dataset_env import without_wandb
from react_core.knowledge.retrieve import read_manifest
from react_core.storage import Stage, Storage, local_path

_logger = logging.getLogger(__name__)

# img2dataset reserves these output columns; the manifest's are saved under other names.
EXTRA_COLUMNS = {"key": "kb_key", "class_id": "class_id", "class_name": "class_name", "score": "score", "mode": "mode"}


class DownloadError(ReactError, RuntimeError):
    """Nothing usable came out of a download; the message names the manifest and the fix."""


def _reason(msg: str) -> str:
    """Group img2dataset's error messages into a few reasons (404, timeout, decode, ...)."""
    m = msg.lower()
    if re.search(r"\b404\b", m):
        return "http_404"
    if re.search(r"\b(4\d\d|5\d\d)\b", m) and "http" in m:
        return "http_error"
    if "timed out" in m or "timeout" in m:
        return "timeout"
    if "refused" in m or "connection" in m:
        return "connection"
    if "identify" in m or "decod" in m or "image file" in m or "truncated" in m:  # decode, decoding
        return "decode_error"
    return "other"


def summarize(output_dir: str) -> dict[str, Any]:
    """Add up img2dataset's per-shard ``*_stats.json`` files."""
    total: Counter = Counter()
    reasons: Counter = Counter()
    files = sorted(glob.glob(os.path.join(output_dir, "*_stats.json")))
    for path in files:
        with open(path) as f:
            s = json.load(f)
        for k in ("count", "successes", "failed_to_download", "failed_to_resize"):
            total[k] += int(s.get(k, 0))
        for msg, n in (s.get("status_dict") or {}).items():
            if msg != "success":
                reasons[_reason(msg)] += int(n)
    out: dict[str, Any] = dict(total)
    out["shards"] = len(files)
    out["success_rate"] = round(total["successes"] / total["count"], 4) if total["count"] else 0.0
    out["failures_by_reason"] = dict(reasons)
    return out


def download(
    storage: Storage, manifest_uri: str, stage: Stage, cfg: DownloadConfig, base_url: str | None = None
) -> str:
    """Download the images of ``{manifest_uri}/manifest.parquet`` into ``stage`` as webdataset shards.

    Args:
        base_url: prefix for relative URLs (the mini-web server's), None when they are absolute.

    Raises:
        DownloadError: the manifest is empty, or no image could be fetched.
    """
    manifest = read_manifest(storage, manifest_uri)
    if manifest.empty:
        raise DownloadError(f"{manifest_uri}/manifest.parquet has no rows; fix: widen retrieval (k, modes)")
    inp = manifest.rename(columns=EXTRA_COLUMNS)[["url", "caption", *EXTRA_COLUMNS.values()]].copy()
    if base_url:
        relative = ~inp["url"].str.contains("://", regex=False)
        inp.loc[relative, "url"] = base_url.rstrip("/") + "/" + inp.loc[relative, "url"].str.lstrip("/")
    lp = local_path(stage.uri)
    with tempfile.TemporaryDirectory(prefix="react-download-") as tmp:
        url_list = os.path.join(tmp, "urls.parquet")
        inp.to_parquet(url_list)
        out_dir = lp if lp is not None else os.path.join(tmp, "out")
        _img2dataset(url_list, out_dir, cfg)
        summary = summarize(out_dir)
        if lp is None:  # write locally, then one batched upload (img2dataset's own fsspec output is slower)
            storage.fs.put(out_dir.rstrip("/") + "/", storage.path(stage.uri), recursive=True)
    _logger.info("download: %s", summary)
    if summary.get("successes", 0) == 0:
        raise DownloadError(
            f"no image of the {len(manifest):,} in {manifest_uri}/manifest.parquet could be downloaded "
            f"({summary['failures_by_reason']}); fix: check that the image server is reachable"
            + (f" at {base_url}" if base_url else "")
        )
    storage.write_json(stage.file("download_summary.json"), summary)
    return stage.complete(counts={k: v for k, v in summary.items() if k != "failures_by_reason"}, summary=summary)


def _img2dataset(url_list: str, out_dir: str, cfg: DownloadConfig) -> None:
    with without_wandb():
        _download(url_list, out_dir, cfg)


def _download(url_list: str, out_dir: str, cfg: DownloadConfig) -> None:
    from img2dataset import download as img2dataset_download

    # img2dataset installs a SIGINT handler that exits with status 0 and never puts the previous one back: every
    # Ctrl-C after a download stage then ended the whole run as a *success*. Its handler is kept for the download
    # itself (it removes its _tmp folder), and the caller's handler is restored afterwards.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        _run_img2dataset(img2dataset_download, url_list, out_dir, cfg)
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run_img2dataset(img2dataset_download: Any, url_list: str, out_dir: str, cfg: DownloadConfig) -> None:
    img2dataset_download(
        url_list=url_list,
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        save_additional_columns=list(EXTRA_COLUMNS.values()),
        output_format="webdataset",
        output_folder=out_dir,
        processes_count=cfg.processes_count,
        thread_count=cfg.thread_count,
        image_size=cfg.image_size,
        resize_mode="border",
        resize_only_if_bigger=True,
        number_sample_per_shard=cfg.samples_per_shard,
        timeout=cfg.timeout,
        retries=cfg.retries,
        incremental_mode="incremental",
        enable_wandb=False,
        distributor="multiprocessing",
    )


def downloaded_shards(storage: Storage, stage_uri: str) -> list[str]:
    return storage.ls(stage_uri, "*.tar")
