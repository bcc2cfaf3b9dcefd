"""Embed a knowledge base of webdataset shards into clip-retrieval's layout.

For input shard ``i`` (in sorted order) the stage writes::

    img_emb/img_emb_{i}.npy            (n_i, D) float16, L2-normalised image embeddings
    text_emb/text_emb_{i}.npy          (n_i, D) float16, L2-normalised caption embeddings
    metadata/metadata_{i}.parquet      n_i rows in the same order: key, caption, shard, offset, + the
                                       sample's .json fields (url, ...)

The metadata file is written last, so a shard whose metadata exists is finished and is skipped on a
re-run (resume after a crash re-embeds only the missing shards). Undecodable images are skipped and
counted per shard (embedded + skipped = samples in the shard).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from react_core.data import decode_image, iter_shard, normalize
from react_core.evaluation.zeroshot import model_image_size
from react_core.storage import Stage, Storage, join

_logger = logging.getLogger(__name__)


class EmbeddingError(ValueError):
    """Embeddings that must not be written (NaN, zero norm); names the shard."""


@dataclass
class ShardResult:
    index: int
    embedded: int
    skipped: int
    cached: bool


def _encode(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    images: list[np.ndarray],
    captions: list[str],
    image_size: int,
    device: str,
) -> tuple[np.ndarray, np.ndarray]:
    x = normalize(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(device), image_size)  # (B, 3, H, W)
    img = F.normalize(model.encode_image(x).float(), dim=-1)  # (B, D)
    txt = F.normalize(model.encode_text(tokenizer(captions).to(device)).float(), dim=-1)  # (B, D)
    return img.cpu().numpy(), txt.cpu().numpy()


def _check(emb: np.ndarray, what: str, shard_uri: str) -> None:
    if not np.isfinite(emb).all():
        raise EmbeddingError(f"{what} embeddings of {shard_uri} contain NaN/inf; fix: check the model weights/inputs")
    norms = np.linalg.norm(emb.astype(np.float32), axis=1)
    if (norms < 0.5).any():
        raise EmbeddingError(f"{what} embeddings of {shard_uri} have zero norm rows; fix: check the model")


@torch.no_grad()
def embed_shard(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    storage: Storage,
    shard_uri: str,
    stage: Stage,
    index: int,
    batch_size: int = 256,
    device: str = "cpu",
) -> ShardResult:
    """Embed one shard into ``stage`` (skipped when its metadata file already exists)."""
    meta_uri = stage.file("metadata", f"metadata_{index}.parquet")
    if storage.exists(meta_uri):
        n = len(pd.read_parquet(io.BytesIO(storage.read_bytes(meta_uri))))
        return ShardResult(index, n, 0, True)
    image_size = model_image_size(model)
    rows: list[dict[str, Any]] = []
    img_parts, txt_parts = [], []
    batch_imgs: list[np.ndarray] = []
    batch_caps: list[str] = []
    skipped = 0

    def flush() -> None:
        if batch_imgs:
            i, t = _encode(model, tokenizer, batch_imgs, batch_caps, image_size, device)
            img_parts.append(i)
            txt_parts.append(t)
            batch_imgs.clear()
            batch_caps.clear()

    for offset, sample in enumerate(iter_shard(storage, shard_uri)):
        img_bytes = sample.get("jpg") or sample.get("png") or sample.get("jpeg") or sample.get("webp")
        caption = (sample.get("txt") or b"").decode("utf-8", errors="replace")
        try:
            if img_bytes is None:
                raise UnidentifiedImageError("no image in sample")
            img = decode_image(img_bytes, image_size)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            skipped += 1
            _logger.debug("skipping %s in %s: %s", sample.get("__key__"), shard_uri, exc)
            continue
        extra = json.loads(sample["json"]) if "json" in sample else {}
        rows.append({**extra, "key": sample["__key__"], "caption": caption, "shard": shard_uri, "offset": offset})
        batch_imgs.append(img)
        batch_caps.append(caption)
        if len(batch_imgs) == batch_size:
            flush()
    flush()
    empty = np.zeros((0, getattr(model.visual, "output_dim", 0)), np.float16)  # a shard with no decodable image
    img_emb = np.concatenate(img_parts).astype(np.float16) if img_parts else empty
    txt_emb = np.concatenate(txt_parts).astype(np.float16) if txt_parts else empty
    if len(rows):
        _check(img_emb, "image", shard_uri)
        _check(txt_emb, "caption", shard_uri)
    for sub, arr in (("img_emb", img_emb), ("text_emb", txt_emb)):
        buf = io.BytesIO()
        np.save(buf, arr)
        storage.write_bytes(stage.file(sub, f"{sub}_{index}.npy"), buf.getvalue())
    buf = io.BytesIO()
    pd.DataFrame(rows, columns=None if rows else ["key", "caption", "shard", "offset"]).to_parquet(buf)
    storage.write_bytes(meta_uri, buf.getvalue())  # last: marks the shard finished
    if skipped:
        _logger.warning("%s: %d undecodable samples skipped", shard_uri, skipped)
    return ShardResult(index, len(rows), skipped, False)


def embed_knowledge_base(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    storage: Storage,
    shard_uris: Sequence[str],
    stage: Stage,
    batch_size: int = 256,
    device: str = "cpu",
    progress: bool = True,
) -> str:
    """Embed every shard (finished ones are skipped), then mark the stage complete; returns its URI."""
    if stage.done:
        return stage.uri
    if not shard_uris:
        raise EmbeddingError("no shards to embed; fix: point knowledge_base.source at webdataset .tar shards")
    model.eval()
    results = []
    bar = tqdm(list(enumerate(shard_uris)), desc="embed", unit="shard", disable=not progress)
    for i, uri in bar:
        results.append(embed_shard(model, tokenizer, storage, uri, stage, i, batch_size, device))
    counts = {
        "shards": len(results),
        "embedded": sum(r.embedded for r in results),
        "skipped": sum(r.skipped for r in results),
        "resumed_shards": sum(r.cached for r in results),
    }
    storage.write_json(stage.file("shards.json"), [{"shard": u, "index": i} for i, u in enumerate(shard_uris)])
    return stage.complete(counts=counts)


def load_embeddings(storage: Storage, stage_uri: str, kind: str = "img") -> np.ndarray:
    """All rows of ``img`` or ``text`` embeddings of an embed stage, in metadata order."""
    files = storage.ls(join(stage_uri, f"{kind}_emb"), f"{kind}_emb_*.npy")
    files.sort(key=lambda u: int(u.rsplit("_", 1)[1].split(".")[0]))
    return np.concatenate([np.load(io.BytesIO(storage.read_bytes(u))) for u in files])


def load_metadata(storage: Storage, stage_uri: str) -> pd.DataFrame:
    files = storage.ls(join(stage_uri, "metadata"), "metadata_*.parquet")
    files.sort(key=lambda u: int(u.rsplit("_", 1)[1].split(".")[0]))
    return pd.concat([pd.read_parquet(io.BytesIO(storage.read_bytes(u))) for u in files], ignore_index=True)


def load_rows(storage: Storage, stage_uri: str, rows: np.ndarray, kind: str = "img") -> np.ndarray:
    """Embeddings of the given global ``rows`` (metadata order), reading one shard file at a time."""
    files = storage.ls(join(stage_uri, f"{kind}_emb"), f"{kind}_emb_*.npy")
    files.sort(key=lambda u: int(u.rsplit("_", 1)[1].split(".")[0]))
    rows = np.asarray(rows, dtype=np.int64)
    out: np.ndarray | None = None
    start = 0
    for uri in files:
        emb = np.load(io.BytesIO(storage.read_bytes(uri)))
        if out is None:
            out = np.zeros((len(rows), emb.shape[1]), dtype=emb.dtype)
        inside = (rows >= start) & (rows < start + len(emb))
        out[inside] = emb[rows[inside] - start]
        start += len(emb)
        if start > rows.max(initial=-1):
            break
    if out is None or (len(rows) and rows.max() >= start):
        raise ValueError(f"{stage_uri}: rows up to {rows.max(initial=-1)} asked, {start} embedded")
    return out
