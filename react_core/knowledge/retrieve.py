"""Retrieve the knowledge-base pairs most relevant to a task's class names: the REACT manifest.

Every template is filled with every class name; the prompts are embedded (batched) by the same CLIP
text tower that embedded the knowledge base, and each searches the caption index (text-to-text, *t2t*)
and the image index (text-to-image, *t2i*) for its top K. Hits are merged per class, deduplicated
(one row per pair and class, its best score), a pair retrieved for several classes is kept for the
class where it scores best, and an optional per-class cap keeps the best-scoring rows.

``manifest.parquet`` has one row per selected pair: ``url, caption, key, class_id, class_name, score,
mode, prompt`` plus ``shard, offset`` (where the pair lives in the knowledge base). Its ``url`` and
``caption`` columns feed img2dataset directly (which reserves ``key``: pass it as an extra column
under another name).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from react_core.config import RetrievalConfig
from react_core.knowledge.embed import load_metadata
from react_core.knowledge.index import load_index
from react_core.storage import Stage, Storage

_logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["url", "caption", "key", "class_id", "class_name", "score", "mode", "prompt", "shard", "offset"]


@dataclass(frozen=True)
class TaskSpec:
    """What retrieval needs of a target task: its class names and prompt templates."""

    name: str
    classnames: Sequence[str]
    templates: Sequence[str] = field(default_factory=lambda: ["a photo of a {}."])
    synonyms: Mapping[str, Sequence[str]] = field(default_factory=dict)  # extra names -> more prompts per class


@torch.no_grad()
def embed_prompts(
    model: torch.nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], prompts: list[str], batch_size: int = 1024
) -> np.ndarray:
    """(P, D) float32 L2-normalised text embeddings, batched."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        out.append(F.normalize(model.encode_text(tokenizer(prompts[i : i + batch_size]).to(device)).float(), dim=-1))
    return torch.cat(out).cpu().numpy()


def select(hits: pd.DataFrame, cfg: RetrievalConfig) -> pd.DataFrame:
    """Dedup per (class, pair), assign pairs shared by classes to their best class, filter and cap."""
    if cfg.min_similarity is not None:
        hits = hits[hits["score"] >= cfg.min_similarity]
    hits = hits.sort_values("score", ascending=False, kind="stable")
    hits = hits.drop_duplicates(["row", "class_id"])  # best prompt/mode per pair and class
    hits = hits.drop_duplicates(["row"])  # a pair found for several classes stays with its best
    if cfg.per_class_cap is not None:
        hits = hits.groupby("class_id", sort=False).head(cfg.per_class_cap)
    return hits.sort_values(["class_id", "score"], ascending=[True, False], kind="stable")


def retrieve(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    storage: Storage,
    embed_uri: str,
    index_uri: str,
    task: TaskSpec,
    cfg: RetrievalConfig,
    stage: Stage,
) -> str:
    """Write ``manifest.parquet`` and ``class_counts.json`` for ``task``; returns the stage URI."""
    if stage.done:
        return stage.uri
    meta = load_metadata(storage, embed_uri)
    prompts, prompt_class = [], []
    for c, name in enumerate(task.classnames):
        for alias in (name, *task.synonyms.get(name, ())):
            for t in task.templates:
                prompts.append(t.format(alias))
                prompt_class.append(c)
    q = embed_prompts(model, tokenizer, prompts)
    dim = q.shape[1]
    frames = []
    for mode in cfg.modes:
        index = load_index(storage, index_uri, "text" if mode == "t2t" else "image", len(meta), dim)
        scores, rows = index.search(q, min(cfg.k, len(meta)))  # (P, K) each, one batched search
        p_idx = np.repeat(np.arange(len(prompts)), rows.shape[1])
        frames.append(
            pd.DataFrame({"row": rows.ravel(), "score": scores.ravel(), "prompt_id": p_idx, "mode": mode}).query(
                "row >= 0"
            )
        )
    hits = pd.concat(frames, ignore_index=True)
    hits["class_id"] = np.asarray(prompt_class)[hits["prompt_id"].to_numpy()]
    chosen = select(hits, cfg)
    rows = meta.iloc[chosen["row"].to_numpy()].reset_index(drop=True)
    manifest = pd.DataFrame(
        {
            "url": rows["url"] if "url" in rows else pd.Series([None] * len(rows), dtype=object),
            "caption": rows["caption"],
            "key": rows["key"],
            "class_id": chosen["class_id"].to_numpy(),
            "class_name": [task.classnames[c] for c in chosen["class_id"]],
            "score": chosen["score"].to_numpy(np.float32),
            "mode": chosen["mode"].to_numpy(),
            "prompt": [prompts[p] for p in chosen["prompt_id"]],
            "shard": rows["shard"],
            "offset": rows["offset"],
        },
        columns=MANIFEST_COLUMNS,
    )
    per_class = {name: int((manifest["class_id"] == c).sum()) for c, name in enumerate(task.classnames)}
    empty = [n for n, v in per_class.items() if v == 0]
    if empty:
        _logger.warning("no pairs retrieved for %d class(es): %s", len(empty), ", ".join(empty[:20]))
    buf = io.BytesIO()
    manifest.to_parquet(buf)
    storage.write_bytes(stage.file("manifest.parquet"), buf.getvalue())
    storage.write_json(stage.file("class_counts.json"), per_class)
    return stage.complete(
        counts={"pairs": len(manifest), "prompts": len(prompts), "classes": len(task.classnames),
                "empty_classes": len(empty), **{f"mode.{m}": int((manifest["mode"] == m).sum()) for m in cfg.modes}},
        task=task.name,
    )  # fmt: skip


def read_manifest(storage: Storage, stage_uri: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(f"{stage_uri}/manifest.parquet")))
