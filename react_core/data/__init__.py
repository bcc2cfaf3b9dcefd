"""Reading data: webdataset shards of image-caption pairs over fsspec, and knowledge-base images by place.

Evaluation and target-task datasets (vision-datasets, image folders, webdataset) are read by
:mod:`react_core.data.datasets`; stages of every package read through these two modules.
"""

from __future__ import annotations

import io
import json
import logging
import math
import tarfile
import zlib
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_iterator

from react_core.errors import ReactError
from react_core.storage import Storage

_logger = logging.getLogger(__name__)


class DatasetError(ReactError, ValueError):
    """A dataset is malformed; the message names the file and the fix."""


class ShardReadError(DatasetError):
    """A shard could not be read to its end (truncated, not a tar, unreadable); names the file."""


def iter_shard(storage: Storage, uri: str) -> Iterator[dict[str, Any]]:
    """Samples of one webdataset tar (any fsspec URI), as dicts of raw bytes keyed by extension.

    Raises :class:`ShardReadError` (naming the file and how many samples came before) when the tar ends in the
    middle of a member or cannot be read. A tar cut exactly between two members reads as a shorter shard:
    only its index (:func:`shard_index_count`) tells, which is why readers compare the two.
    """
    n = 0
    try:
        with storage.open(uri, "rb") as f:
            files = ({**rec, "__url__": uri} for rec in tar_file_iterator(f))
            for sample in group_by_keys(files):
                n += 1
                yield sample
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ShardReadError(f"{uri} is damaged after {n} samples ({' '.join(str(exc).split())})") from None


def shard_index_count(storage: Storage, uri: str) -> int | None:
    """How many samples a shard's own index says it holds: ``{stem}_stats.json``'s ``successes``, as img2dataset
    and the mini-web write it; None for a shard without an index (nothing to check it against)."""
    stats = uri[: -len(".tar")] + "_stats.json" if uri.endswith(".tar") else None
    if stats is None or not storage.exists(stats):
        return None
    try:
        return int(storage.read_json(stats)["successes"])
    except (KeyError, TypeError, ValueError):
        return None


def check_shard_count(storage: Storage, uri: str, read: int) -> None:
    """Raise :class:`ShardReadError` when a shard gave fewer samples than its index says."""
    expected = shard_index_count(storage, uri)
    if expected is not None and read != expected:
        raise ShardReadError(f"{uri} holds {read} samples but its index ({uri[:-4]}_stats.json) says {expected}")


def decode_image(data: bytes, size: int | None = None) -> np.ndarray:
    """JPEG/PNG bytes -> (H, W, 3) uint8, resized to ``size`` x ``size`` when given."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.array(img)  # writable (torch.from_numpy warns on read-only arrays)


def _is_pair(sample: dict[str, Any]) -> bool:
    return "jpg" in sample and "txt" in sample


def _pairs_in_key_order(storage: Storage, uri: str) -> list[dict[str, Any]]:
    """A shard's image-caption samples sorted by key. img2dataset writes a shard's samples as its download
    threads finish (another order on every run), but their keys number them in manifest order: read this
    way, two downloads of one manifest give the same training data in the same order."""
    try:
        samples = list(iter_shard(storage, uri))
        check_shard_count(storage, uri, len(samples))
    except ShardReadError as exc:
        raise ShardReadError(f"{exc.args[0]}; fix: run the stage that wrote it again (delete its _SUCCESS)") from None
    return sorted((s for s in samples if _is_pair(s)), key=lambda s: s["__key__"])


def load_captions(storage: Storage, shard_uris: Sequence[str]) -> tuple[list[str], list[str]]:
    """Captions and keys of the pairs :func:`load_labelled_pairs` would return, in order, without decoding images."""
    captions, keys = [], []
    for uri in shard_uris:
        for s in _pairs_in_key_order(storage, uri):
            captions.append(s["txt"].decode("utf-8"))
            keys.append(s["__key__"])
    return captions, keys


def held_out(keys: Sequence[str], share: float) -> np.ndarray:
    """Mask of the pairs kept out of training (``training.holdout``): those whose key hashes below ``share``, so
    the same pairs are held out in every process and run, and in whatever reads them back to choose settings."""
    if share <= 0:
        return np.zeros(len(keys), dtype=bool)
    return np.array([is_held_out(k, share) for k in keys], dtype=bool)


def is_held_out(key: str, share: float) -> bool:
    """Whether the pair ``key`` is held out at ``share`` (:func:`held_out` for one key)."""
    return share > 0 and zlib.crc32(key.encode()) / 2**32 < share


def training_subset(keys: Sequence[str], share: float, holdout: float = 0.0) -> np.ndarray:
    """Mask of the pairs a ``training.subset`` of ``share`` trains on: keys hashing into the top ``share`` of what
    the ``holdout`` (:func:`held_out`, the bottom of the same hash) leaves, so a smaller share lies inside a larger
    one and never touches the held-out pairs."""
    if share >= 1:
        return ~held_out(keys, holdout)
    floor = 1.0 - share * (1.0 - holdout)
    return np.array([zlib.crc32(k.encode()) / 2**32 >= floor for k in keys], dtype=bool)


def load_labelled_pairs(
    storage: Storage,
    shard_uris: Sequence[str],
    image_size: int,
    max_samples: int | None = None,
    keep: Callable[[str], bool] | None = None,
    label_modes: Collection[str] | None = None,
) -> tuple[torch.Tensor, list[str], list[str], torch.Tensor]:
    """Decode image-caption pairs from shards into memory, shard by shard, each shard's in key order (manifest
    order): images (N, 3, H, W) uint8, captions, keys and each pair's ``class_id`` from its JSON (the
    manifest's; -1 when absent). ``keep``: the keys to decode (the others are skipped undecoded);
    ``label_modes``: only pairs whose class came from one of these searches (the manifest's ``mode``: t2t, t2i)
    keep it, the others get -1."""
    images, captions, keys, class_ids = [], [], [], []
    for uri in shard_uris:
        for s in _pairs_in_key_order(storage, uri):
            if keep is not None and not keep(s["__key__"]):
                continue
            images.append(decode_image(s["jpg"], image_size))
            captions.append(s["txt"].decode("utf-8"))
            keys.append(s["__key__"])
            meta = json.loads(s["json"]) if "json" in s else {}
            cid = meta.get("class_id") if label_modes is None or meta.get("mode") in label_modes else None
            class_ids.append(int(cid) if isinstance(cid, (int, float)) and not math.isnan(cid) else -1)
            if max_samples is not None and len(images) >= max_samples:
                break
        if max_samples is not None and len(images) >= max_samples:
            break
    if not images:
        raise DatasetError(f"no image-caption pairs in {len(shard_uris)} shard(s) starting at {shard_uris[:1]}")
    arr = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    return arr, captions, keys, torch.tensor(class_ids, dtype=torch.int64)


def read_kb_images(storage: Storage, places: Sequence[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
    """Image bytes of knowledge-base samples by (shard URI, offset in the shard), one pass per shard."""
    wanted: dict[str, set[int]] = defaultdict(set)
    for shard, offset in places:
        wanted[shard].add(int(offset))
    out = {}
    for shard, offsets in wanted.items():
        last = max(offsets)
        for offset, sample in enumerate(iter_shard(storage, shard)):
            if offset in offsets:
                data = next((sample[k] for k in ("jpg", "jpeg", "png", "webp") if k in sample), None)
                if data is not None:
                    out[(shard, offset)] = data
            if offset >= last:
                break
    return out
