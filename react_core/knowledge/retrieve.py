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

**Several tasks** (``retrieval.tasks``): every task's prompts (each with its own templates) are searched
together, class ids run on from one task to the next (the manifest's ``task`` column says whose class a row
is), a pair found for classes of two tasks goes to its best-scoring class as within one task, the overlap audit
checks every task's evaluation images, and each task's share of the selected pairs is trimmed (round-robin over
its classes) to ``retrieval.weights`` (equal by default).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence

import faiss
import numpy as np
import pandas as pd
import torch

from react_core.config import RetrievalConfig
from react_core.data.datasets import EvalSet, image_features
from react_core.errors import ReactError
from react_core.knowledge.audit import audit_overlap
from react_core.knowledge.embeddings import load_metadata_rows, load_rows, metadata_rows
from react_core.knowledge.index import load_index
from react_core.models.encode import embed_prompts
from react_core.registry import TaskSpec
from react_core.storage import Stage, Storage

_logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["url", "caption", "key", "class_id", "class_name", "score", "mode", "prompt", "shard", "offset"]


class RetrievalError(ReactError, ValueError):
    """The retrieved set cannot meet the configuration (target size, minimum per class); names the fix."""


def normalise_caption(caption: str) -> str:
    return " ".join(str(caption).lower().split())


def round_robin(hits: pd.DataFrame, n: int) -> pd.DataFrame:
    """The first ``n`` rows taking each class's best, then each class's second best, ...: a balanced trim."""
    ranked = hits.assign(_rank=hits.groupby("class_id", sort=False).cumcount())
    return ranked.sort_values(["_rank", "score"], ascending=[True, False], kind="stable").head(n).drop(columns="_rank")


def near_duplicate_rows(emb: np.ndarray, threshold: float) -> np.ndarray:
    """Mask of rows to drop: each row whose cosine with an earlier (better-ranked) kept row is >= threshold.

    One faiss range search finds every pair above the threshold (BLAS, not a Python loop over pairs);
    the greedy pass over rows in rank order then keeps the first of each group.
    """
    x = np.ascontiguousarray(emb, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    lims, _, ids = index.range_search(x, float(threshold))
    drop = np.zeros(len(x), dtype=bool)
    for i in range(len(x)):
        if drop[i]:
            continue
        neighbours = ids[lims[i] : lims[i + 1]]
        later = neighbours[neighbours > i]
        drop[later] = True  # i is kept (nothing earlier and kept covers it): its look-alikes go
    return drop


def select(
    hits: pd.DataFrame,
    cfg: RetrievalConfig,
    classnames: Sequence[str] | None = None,
    image_embeddings: Callable[[np.ndarray], np.ndarray] | None = None,
    captions: Callable[[np.ndarray], Sequence[str]] | None = None,
    pair_scores: Callable[[np.ndarray], np.ndarray] | None = None,
) -> pd.DataFrame:
    """From raw hits (row, score, prompt_id, mode, class_id) to the selected pairs, in this order:

    1. ``min_similarity``; 2. one hit per (pair, class): its best prompt and mode; 3. the cross-class
    policy (``best``: a pair found for several classes stays with its best; ``drop``: it goes);
    4. ``dedup_captions`` / ``dedup_images`` within each class (the better-scoring pair stays);
    5. the pair-score filters ``min_pair_score`` and ``pair_score_top`` (each pair's own image-caption CLIP score);
    6. ``per_class_cap``; 7. ``balance``; 8. ``target_size``, exact, trimmed round-robin over classes.

    ``image_embeddings(rows)``, ``captions(rows)`` and ``pair_scores(rows)`` supply what steps 4 and 5 need.
    """
    return finalize(candidates(hits, cfg), cfg, classnames, image_embeddings, captions, pair_scores)


def candidates(hits: pd.DataFrame, cfg: RetrievalConfig) -> pd.DataFrame:
    """Steps 1-3 of :func:`select`: one row per pair, with its class, best first."""
    if cfg.min_similarity is not None:
        hits = hits[hits["score"] >= cfg.min_similarity]
    hits = hits.sort_values("score", ascending=False, kind="stable")
    hits = hits.drop_duplicates(["row", "class_id"])  # best prompt/mode per pair and class
    if cfg.cross_class == "drop":
        return hits[~hits["row"].duplicated(keep=False)]  # found for several classes: ambiguous
    return hits.drop_duplicates(["row"])  # a pair found for several classes stays with its best


def finalize(
    hits: pd.DataFrame,
    cfg: RetrievalConfig,
    classnames: Sequence[str] | None = None,
    image_embeddings: Callable[[np.ndarray], np.ndarray] | None = None,
    captions: Callable[[np.ndarray], Sequence[str]] | None = None,
    pair_scores: Callable[[np.ndarray], np.ndarray] | None = None,
) -> pd.DataFrame:
    """Steps 4-8 of :func:`select` on :func:`candidates`' output."""
    if cfg.dedup_captions:
        if captions is None:
            raise ValueError("dedup_captions needs the captions")
        norm = [normalise_caption(c) for c in captions(hits["row"].to_numpy())]
        hits = hits.assign(_caption=norm).drop_duplicates(["class_id", "_caption"]).drop(columns="_caption")
    if cfg.dedup_images is not None:
        if image_embeddings is None:
            raise ValueError("dedup_images needs the image embeddings")
        drop = np.zeros(len(hits), dtype=bool)
        emb = image_embeddings(hits["row"].to_numpy()).astype(np.float32)
        cls = hits["class_id"].to_numpy()
        for c in np.unique(cls):
            idx = np.flatnonzero(cls == c)  # already best first
            drop[idx[near_duplicate_rows(emb[idx], cfg.dedup_images)]] = True
        hits = hits[~drop]
    if cfg.min_pair_score is not None or cfg.pair_score_top is not None:
        hits = filter_pair_scores(hits, cfg, pair_scores)
    if cfg.per_class_cap is not None:
        hits = hits.groupby("class_id", sort=False).head(cfg.per_class_cap)
    if cfg.balance and len(hits):
        hits = hits.groupby("class_id", sort=False).head(int(hits["class_id"].value_counts().min()))
    if cfg.target_size is not None:
        if len(hits) < cfg.target_size:
            raise RetrievalError(
                f"retrieval.target_size={cfg.target_size:,} but only {len(hits):,} pairs remain after selection; "
                "fix: raise retrieval.k, loosen min_similarity / per_class_cap / balance, or lower target_size"
            )
        hits = round_robin(hits, cfg.target_size)
    out = hits.sort_values(["class_id", "score"], ascending=[True, False], kind="stable")
    if cfg.min_per_class and classnames is not None:
        counts = out["class_id"].value_counts()
        short = {n: int(counts.get(c, 0)) for c, n in enumerate(classnames) if counts.get(c, 0) < cfg.min_per_class}
        if short:
            raise RetrievalError(
                f"{len(short)} class(es) below retrieval.min_per_class={cfg.min_per_class}: {short}; fix: raise "
                "retrieval.k, add synonyms for those classes, or lower min_per_class"
            )
    return out


def filter_pair_scores(
    hits: pd.DataFrame, cfg: RetrievalConfig, pair_scores: Callable[[np.ndarray], np.ndarray] | None
) -> pd.DataFrame:
    """Step 5 of :func:`select`: ``min_pair_score`` (an absolute CLIP-score threshold, as the paper's Table 12),
    then ``pair_score_top`` (each class's best-agreeing share, at least one pair per non-empty class). The score
    is of the pair itself, its image against its caption, not of the prompt that found it."""
    if pair_scores is None:
        raise ValueError("the pair-score filters need the pairs' image-caption scores")
    scores = np.asarray(pair_scores(hits["row"].to_numpy()), dtype=np.float32)
    hits = hits.assign(_pair=scores)
    if cfg.min_pair_score is not None:
        hits = hits[hits["_pair"] >= cfg.min_pair_score]
    if cfg.pair_score_top is not None and len(hits):
        keep = np.ceil(hits.groupby("class_id", sort=False)["_pair"].transform("size") * cfg.pair_score_top)
        rank = hits.groupby("class_id", sort=False)["_pair"].rank(method="first", ascending=False)
        hits = hits[rank <= keep]
    return hits.drop(columns="_pair")


def task_shares(chosen: pd.DataFrame, class_task: np.ndarray, weights: Sequence[float]) -> pd.DataFrame:
    """Trim each task's rows so the tasks' counts are in the proportion of ``weights``: the largest set that fits
    (a task with fewer pairs than its share bounds the others), each task's trim round-robin over its classes."""
    w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    task_of = class_task[chosen["class_id"].to_numpy()]
    have = np.array([(task_of == t).sum() for t in range(len(w))])
    scale = float(np.min(have / w))
    parts = [round_robin(chosen[task_of == t], int(np.floor(scale * w[t] + 1e-9))) for t in range(len(w))]
    return pd.concat(parts).sort_values(["class_id", "score"], ascending=[True, False], kind="stable")


def combine(tasks: Sequence[TaskSpec]) -> tuple[list[str], list[int], list[str], np.ndarray]:
    """Prompts of every task (each with its templates), the global class id of each prompt, the global class
    names and the task index of each class: class ids run on from one task to the next."""
    prompts, prompt_class, classnames, class_task = [], [], [], []
    for t, task in enumerate(tasks):
        p, pc = prompts_of(task)
        prompts += p
        prompt_class += [len(classnames) + c for c in pc]
        classnames += list(task.classnames)
        class_task += [t] * len(task.classnames)
    return prompts, prompt_class, classnames, np.asarray(class_task, dtype=np.int64)


def prompts_of(task: TaskSpec) -> tuple[list[str], list[int]]:
    """Every template filled with every class name and synonym: (prompts, class id of each)."""
    prompts, prompt_class = [], []
    for c, name in enumerate(task.classnames):
        for alias in (name, *task.synonyms.get(name, ())):
            for t in task.templates:
                prompts.append(t.format(alias))
                prompt_class.append(c)
    return prompts, prompt_class


def search(
    storage: Storage, index_uri: str, n_rows: int, queries: np.ndarray, modes: Sequence[str], k: int
) -> pd.DataFrame:
    """Hits of every query in every mode's index (one batched search each): row, score, prompt_id, mode."""
    frames = []
    if k > n_rows:
        _logger.warning(
            "retrieval.k=%d is more than the knowledge base's %d pairs: every pair is a candidate for every prompt "
            "(k cut to %d); lower retrieval.k to retrieve a share of the knowledge base",
            k,
            n_rows,
            n_rows,
        )
    for mode in modes:
        index = load_index(storage, index_uri, "text" if mode == "t2t" else "image", n_rows, queries.shape[1])
        scores, rows = index.search(queries, min(k, n_rows))  # (P, K) each
        p_idx = np.repeat(np.arange(len(queries)), rows.shape[1])
        frame = pd.DataFrame({"row": rows.ravel(), "score": scores.ravel(), "prompt_id": p_idx, "mode": mode})
        frames.append(frame.query("row >= 0"))
    return pd.concat(frames, ignore_index=True)


def retrieve(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    storage: Storage,
    embed_uri: str,
    index_uri: str,
    task: TaskSpec | Sequence[TaskSpec],
    cfg: RetrievalConfig,
    stage: Stage,
    audit_sets: Sequence[EvalSet] | str = "no evaluation set given",
) -> str:
    """Write ``manifest.parquet``, ``class_counts.json`` (and ``overlap.json``) for ``task`` (or several tasks:
    see the module docstring); returns the stage URI.

    Search (:func:`search`), select (candidates, the overlap audit, :func:`finalize`, :func:`task_shares`), write
    (:func:`_write`). ``audit_sets``: the evaluation sets to audit the retrieved images against, or why there are
    none.
    """
    tasks = [task] if isinstance(task, TaskSpec) else list(task)
    prompts, prompt_class, classnames, class_task = combine(tasks)
    hits = search(
        storage,
        index_uri,
        metadata_rows(storage, embed_uri),
        embed_prompts(model, tokenizer, prompts),
        cfg.modes,
        cfg.k,
    )
    hits["class_id"] = np.asarray(prompt_class)[hits["prompt_id"].to_numpy()]
    cands = candidates(hits, cfg)
    embeddings = _CandidateEmbeddings(storage, embed_uri, cands["row"].to_numpy())
    meta = _CandidateMetadata(storage, embed_uri, cands["row"].to_numpy())
    cands, findings, overlap = _audit(model, embeddings, meta, cands, cfg, audit_sets)
    texts = _CandidateEmbeddings(storage, embed_uri, cands["row"].to_numpy(), kind="text")
    chosen = finalize(
        cands,
        cfg,
        classnames,
        image_embeddings=embeddings,
        captions=lambda r: meta(r)["caption"].to_numpy(),
        pair_scores=lambda r: np.einsum("nd,nd->n", embeddings(r).astype(np.float32), texts(r).astype(np.float32)),
    )
    if len(tasks) > 1:
        chosen = task_shares(chosen, class_task, cfg.weights or [1.0] * len(tasks))
    if cfg.random_control:
        return _write(
            storage, stage, random_control(storage, embed_uri, len(chosen)), tasks, cfg, overlap, len(prompts)
        )
    manifest = _manifest(chosen, meta(chosen["row"].to_numpy()), classnames, prompts)
    if len(tasks) > 1:
        manifest["task"] = [tasks[t].name for t in class_task[manifest["class_id"].to_numpy()]]
    if findings is not None and cfg.audit.action == "flag":
        flagged = findings.reindex(chosen["row"].to_numpy())
        manifest["overlap"] = flagged["overlap"].fillna(False).to_numpy(bool)
        manifest["overlap_similarity"] = flagged["overlap_similarity"].to_numpy(np.float32)
    return _write(storage, stage, manifest, tasks, cfg, overlap, len(prompts))


def random_control(storage: Storage, embed_uri: str, n: int) -> pd.DataFrame:
    """The random control's manifest (``retrieval.random_control``): ``n`` knowledge-base pairs drawn uniformly, the
    same draw for the same ``n`` (seeded by it), no class. As many pairs as the search chose, so a model trained on
    them differs from REACT's only by what retrieval picked."""
    total = metadata_rows(storage, embed_uri)
    rows = np.sort(np.random.default_rng([n, 0xC0]).choice(total, size=min(n, total), replace=False))
    return unclassed_manifest(load_metadata_rows(storage, embed_uri, rows), "random")


def unclassed_manifest(meta: pd.DataFrame, mode: str) -> pd.DataFrame:
    """A manifest of knowledge-base pairs chosen without a class (``class_id`` -1, no score or prompt): the random
    control's and the replay sample's."""
    return pd.DataFrame(
        {
            "url": meta["url"] if "url" in meta else pd.Series([None] * len(meta), dtype=object),
            "caption": meta["caption"],
            "key": meta["key"],
            "class_id": np.full(len(meta), -1, np.int64),
            "class_name": "",
            "score": np.full(len(meta), np.nan, np.float32),
            "mode": mode,
            "prompt": "",
            "shard": meta["shard"],
            "offset": meta["offset"],
        },
        columns=MANIFEST_COLUMNS,
    )


def _manifest(
    chosen: pd.DataFrame, rows: pd.DataFrame, classnames: Sequence[str], prompts: Sequence[str]
) -> pd.DataFrame:
    """The manifest (MANIFEST_COLUMNS) of the chosen hits, ``rows`` being their metadata in the same order."""
    return pd.DataFrame(
        {
            "url": rows["url"] if "url" in rows else pd.Series([None] * len(rows), dtype=object),
            "caption": rows["caption"],
            "key": rows["key"],
            "class_id": chosen["class_id"].to_numpy(),
            "class_name": [classnames[c] for c in chosen["class_id"]],
            "score": chosen["score"].to_numpy(np.float32),
            "mode": chosen["mode"].to_numpy(),
            "prompt": [prompts[p] for p in chosen["prompt_id"]],
            "shard": rows["shard"],
            "offset": rows["offset"],
        },
        columns=MANIFEST_COLUMNS,
    )


def _write(
    storage: Storage,
    stage: Stage,
    manifest: pd.DataFrame,
    tasks: Sequence[TaskSpec],
    cfg: RetrievalConfig,
    overlap: dict,
    n_prompts: int,
) -> str:
    """``manifest.parquet``, ``class_counts.json`` (several tasks: ``{task}/{class}`` keys), ``overlap.json``, then
    the stage's marker with its counts (several tasks: ``pairs.{task}`` too)."""
    per_class, per_task, offset = {}, {}, 0
    for task in tasks:
        for c, name in enumerate(task.classnames):
            per_class[name if len(tasks) == 1 else f"{task.name}/{name}"] = int(
                (manifest["class_id"] == offset + c).sum()
            )
        per_task[f"pairs.{task.name}"] = int(
            manifest["class_id"].between(offset, offset + len(task.classnames) - 1).sum()
        )
        offset += len(task.classnames)
    if cfg.random_control:  # no classes: one count, of the draw
        per_class, per_task = {"(random control)": len(manifest)}, {}
    empty = [n for n, v in per_class.items() if v == 0]
    if empty:
        _logger.warning("no pairs retrieved for %d class(es): %s", len(empty), ", ".join(empty[:20]))
    buf = io.BytesIO()
    manifest.to_parquet(buf)
    storage.write_bytes(stage.file("manifest.parquet"), buf.getvalue())
    storage.write_json(stage.file("class_counts.json"), per_class)
    storage.write_json(stage.file("overlap.json"), overlap)
    audit_counts = {f"overlap.{k}": v for k, v in overlap["summary"].items() if isinstance(v, int)}
    return stage.complete(
        counts={
            "pairs": len(manifest),
            "prompts": n_prompts,
            "classes": len(per_class),
            "empty_classes": len(empty),
            **{f"mode.{m}": int((manifest["mode"] == m).sum()) for m in cfg.modes},
            **({"random_control": 1} if cfg.random_control else {}),
            **(per_task if len(tasks) > 1 else {}),
            **audit_counts,
        },
        task="+".join(t.name for t in tasks),
        overlap=overlap["summary"],
    )


class _CandidateMetadata:
    """Metadata (caption, key, shard, offset, url) of the candidate rows only, read once: the whole metadata
    of a LAION-size knowledge base does not fit in memory."""

    def __init__(self, storage: Storage, embed_uri: str, rows: np.ndarray) -> None:
        self.rows = np.unique(rows)
        self.meta = load_metadata_rows(storage, embed_uri, self.rows)

    def __call__(self, rows: np.ndarray) -> pd.DataFrame:
        return self.meta.iloc[np.searchsorted(self.rows, rows)].reset_index(drop=True)


class _CandidateEmbeddings:
    """Image (or ``kind="text"``: caption) embeddings of the candidate rows, read from the embed stage once (on
    first use) for the overlap audit, ``dedup_images`` and the pair scores: at LAION scale that is millions of rows,
    not worth reading twice."""

    def __init__(self, storage: Storage, embed_uri: str, rows: np.ndarray, kind: str = "img") -> None:
        self.storage, self.embed_uri, self.rows, self.kind = storage, embed_uri, np.unique(rows), kind
        self.emb: np.ndarray | None = None

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        if self.emb is None:
            self.emb = load_rows(self.storage, self.embed_uri, self.rows, self.kind)
        return self.emb[np.searchsorted(self.rows, rows)]


def _audit(
    model: torch.nn.Module,
    embeddings: _CandidateEmbeddings,
    meta: _CandidateMetadata,
    cands: pd.DataFrame,
    cfg: RetrievalConfig,
    audit_sets: Sequence[EvalSet] | str,
) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    """Run the overlap audit on the candidate pairs; drop duplicates when so configured."""
    reason = None
    if not cfg.audit.enabled:
        reason = "disabled (retrieval.audit.enabled)"
    elif isinstance(audit_sets, str):
        reason = audit_sets
        _logger.warning("overlap audit skipped: %s", reason)
    elif not len(cands):
        reason = "nothing retrieved"
    if reason is not None:
        return cands, None, {"summary": {"skipped": reason}, "duplicates": []}
    rows = cands["row"].to_numpy()
    places = meta(rows)[["key", "shard", "offset"]]
    feats = [image_features(model, s)[0] for s in audit_sets]
    findings, summary = audit_overlap(embeddings.storage, places, embeddings(rows), audit_sets, feats, cfg.audit)
    findings.index = rows
    dups = findings[findings["overlap"]]
    listing = [
        {
            "key": places["key"].iloc[i],
            "row": int(r),
            "similarity": float(dups.loc[r, "overlap_similarity"]),
            "eval_image": dups.loc[r, "overlap_image"],
            "hash_distance": int(dups.loc[r, "overlap_hash_distance"]),
        }
        for i, r in enumerate(rows)
        if r in dups.index
    ]
    summary["datasets"] = [s.name for s in audit_sets]
    if cfg.audit.action == "drop":
        cands = cands[~findings["overlap"].to_numpy()]
        summary["dropped"] = len(listing)
    return cands, findings, {"summary": summary, "duplicates": listing}


def read_manifest(storage: Storage, stage_uri: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(f"{stage_uri}/manifest.parquet")))
