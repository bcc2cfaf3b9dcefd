"""Write the mini-web: generic and knowledge-base corpora, and held-out target tasks.

Stage folder ``{root}/miniweb/{version}/``::

    concepts.json                      the world's truth (never read by the pipeline itself)
    generic/shards/{00000}.tar         webdataset: {key}.jpg, {key}.txt, {key}.json
    generic/truth.parquet              key, concept_id, caption_kind
    kb/shards/{00000}.tar              the knowledge base as webdataset shards
    kb/images/{shard}/{key}.jpg        ... and as image files (some missing: dead links)
    kb/urls.parquet                    key, url (relative to the server's base URL), caption
    kb/truth.parquet                   key, concept_id, caption_kind, dead
    tasks/{name}/                      ELEVATER / vision-datasets image-classification layout: the target
                                       tasks (miniweb-fine, miniweb-coarse) and miniweb-generic (concepts
                                       outside both, which the base learnt: the forgetting probe)
    tasks/miniweb-captions/            image-text retrieval test set in the Karpathy-split layout of COCO and
        dataset_miniweb.json images/   Flickr30K captions: images of every concept, rendered apart from the
                                       corpus, each with clean captions
        dataset_info.json labels.txt templates.json train.json test.json {train,test}_images/*.jpg
    _SUCCESS

Each sample's pixels and caption are a function of ``(seed, split, index)`` only, so the output does
not depend on the number of worker processes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import webdataset as wds

from react_core.config import MiniWebConfig
from react_core.miniweb.render import render, to_jpeg
from react_core.miniweb.world import TASK_TEMPLATES, Concept, caption_for, make_concepts
from react_core.progress import bar as progress_bar
from react_core.registry import MINIWEB_CAPTIONS, MINIWEB_GENERIC, MINIWEB_TASKS
from react_core.storage import Stage, Storage, local_path

_logger = logging.getLogger(__name__)

SPLIT_IDS = {"generic": 1, "kb": 2, "test": 3, "train": 4, "generic-test": 5, "generic-train": 6, "captions": 7}
CAPTIONS_PER_IMAGE = 2
TASK_NAMES = dict(zip(("fine", "coarse", "extra"), MINIWEB_TASKS, strict=True))  # group -> task (the registry's)


def concepts_for(cfg: MiniWebConfig) -> list[Concept]:
    return make_concepts(cfg.seed, cfg.n_concepts, cfg.fine_grained_classes, cfg.coarse_classes, cfg.extra_classes)


def split_concept_ids(cfg: MiniWebConfig, concepts: list[Concept], split: str, n: int) -> np.ndarray:
    """Concept of every sample of a corpus split, drawn with the split's target-concept rate."""
    rate = cfg.target_rate_generic if split == "generic" else cfg.target_rate_kb
    w = np.array([rate if c.group != "other" else 1.0 for c in concepts], np.float64)
    rng = np.random.default_rng([cfg.seed, SPLIT_IDS[split], 0])
    return rng.choice(len(concepts), size=n, p=w / w.sum())


@dataclass(frozen=True)
class _ShardJob:
    split: str
    shard: int
    start: int
    concept_ids: tuple[int, ...]
    out_dir: str
    write_files: bool


_WORKER: dict[str, Any] = {}


def _init_worker(cfg_json: str) -> None:
    cfg = MiniWebConfig.model_validate_json(cfg_json)
    _WORKER["cfg"] = cfg
    _WORKER["concepts"] = concepts_for(cfg)


def _write_shard(job: _ShardJob) -> list[dict[str, Any]]:
    cfg: MiniWebConfig = _WORKER["cfg"]
    concepts: list[Concept] = _WORKER["concepts"]
    rows = []
    tar_path = os.path.join(job.out_dir, job.split, "shards", f"{job.shard:05d}.tar")
    os.makedirs(os.path.dirname(tar_path), exist_ok=True)
    img_dir = os.path.join(job.out_dir, job.split, "images", f"{job.shard:05d}")
    if job.write_files:
        os.makedirs(img_dir, exist_ok=True)
    tmp = tar_path + ".tmp"
    with open(tmp, "wb") as f, wds.TarWriter(f, encoder=False) as sink:
        for j, cid in enumerate(job.concept_ids):
            index = job.start + j
            rng = np.random.default_rng([cfg.seed, SPLIT_IDS[job.split], index + 1])
            jpg = to_jpeg(render(concepts[cid], cfg.image_size, rng))
            caption, kind = caption_for(concepts[cid], rng, concepts, cfg.caption_noise)
            key = f"{job.split}-{index:08d}"
            rel = f"images/{job.shard:05d}/{key}.jpg"
            dead = bool(job.write_files and rng.random() < cfg.dead_link_rate)
            meta = {"key": key, "url": rel} if job.write_files else {"key": key}
            sink.write({"__key__": key, "jpg": jpg, "txt": caption.encode(), "json": json.dumps(meta).encode()})
            if job.write_files and not dead:
                with open(os.path.join(img_dir, f"{key}.jpg"), "wb") as img:
                    img.write(jpg)
            rows.append(
                {"key": key, "url": rel, "caption": caption, "concept_id": int(cid), "caption_kind": kind, "dead": dead}
            )
    os.replace(tmp, tar_path)
    # The shard's index, in img2dataset's layout ({shard}_stats.json, "successes"): what a reader checks the
    # tar against, so a truncated shard is caught rather than read as a shorter one.
    with open(os.path.join(os.path.dirname(tar_path), f"{job.shard:05d}_stats.json"), "w") as f:
        json.dump({"count": len(rows), "successes": len(rows)}, f)
    return rows


def generic_members(cfg: MiniWebConfig, concepts: list[Concept]) -> list[Concept]:
    """The concepts of ``miniweb-generic``: ``cfg.generic_classes`` spread evenly over those outside both target
    groups (the base learnt them from the generic corpus; a customized model worse on them has forgotten)."""
    others = [c for c in concepts if c.group == "other"]
    n = min(cfg.generic_classes, len(others))
    return [others[i] for i in np.linspace(0, len(others) - 1, n).astype(int)] if n else []


def _write_task(cfg: MiniWebConfig, concepts: list[Concept], group: str, out_dir: str) -> dict[str, int]:
    """One held-out task in the vision-datasets (ELEVATER) COCO image-classification layout: a target group's
    concepts, or (``group="generic"``) :func:`generic_members`. Its images are drawn with split ids of their own,
    so none of them is in any corpus."""
    if group == "generic":
        name, members = MINIWEB_GENERIC, generic_members(cfg, concepts)
        split_ids = {"test": SPLIT_IDS["generic-test"], "train": SPLIT_IDS["generic-train"]}
        description = f"mini-web generic probe: {len(members)} concepts outside both target tasks, known to the base"
    else:
        name, members = TASK_NAMES[group], [c for c in concepts if c.group == group]
        split_ids = {"test": SPLIT_IDS["test"], "train": SPLIT_IDS["train"]}
        description = f"mini-web {group} target task: {len(members)} classes, images never in the corpus"
    tdir = os.path.join(out_dir, "tasks", name)
    counts = {}
    for split, per_class in (("test", cfg.test_per_class), ("train", cfg.train_per_class)):
        os.makedirs(os.path.join(tdir, f"{split}_images"), exist_ok=True)
        images, annotations = [], []
        for label, c in enumerate(members):
            for j in range(per_class):
                rng = np.random.default_rng([cfg.seed, split_ids[split], 1_000_000 + c.id, j])
                img_id = len(images) + 1
                fname = f"{split}_images/{img_id:06d}.jpg"
                with open(os.path.join(tdir, fname), "wb") as f:
                    f.write(to_jpeg(render(c, cfg.image_size, rng)))
                images.append({"id": img_id, "width": cfg.image_size, "height": cfg.image_size, "file_name": fname})
                annotations.append({"id": img_id, "image_id": img_id, "category_id": label + 1})
        coco = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i + 1, "name": c.name} for i, c in enumerate(members)],
        }
        with open(os.path.join(tdir, f"{split}.json"), "w") as f:
            json.dump(coco, f)
        counts[split] = len(images)
    with open(os.path.join(tdir, "labels.txt"), "w") as f:
        f.write("\n".join(c.name for c in members) + "\n")
    with open(os.path.join(tdir, "templates.json"), "w") as f:
        json.dump(TASK_TEMPLATES, f, indent=1)
    with open(os.path.join(tdir, "synonyms.json"), "w") as f:
        json.dump({c.name: list(c.synonyms) for c in members}, f, indent=1)
    info = {
        "name": name,
        "version": 1,
        "description": description,
        "type": "classification_multiclass",
        "format": "coco",
        "root_folder": ".",
        "train": {"index_path": "train.json", "files_for_local_usage": ["train_images"]},
        "test": {"index_path": "test.json", "files_for_local_usage": ["test_images"]},
        "labelmap": "labels.txt",
        "num_classes": len(members),
    }
    with open(os.path.join(tdir, "dataset_info.json"), "w") as f:
        json.dump(info, f, indent=1)
    return {f"{name}.{k}": v for k, v in counts.items()}


def _write_captions(cfg: MiniWebConfig, concepts: list[Concept], out_dir: str) -> dict[str, int]:
    """``miniweb-captions``: ``cfg.caption_test_size`` images of concepts drawn uniformly (targets included), each
    with ``CAPTIONS_PER_IMAGE`` noise-free captions, as Karpathy's ``dataset_coco.json`` lists COCO's."""
    tdir = os.path.join(out_dir, "tasks", MINIWEB_CAPTIONS)
    os.makedirs(os.path.join(tdir, "images"), exist_ok=True)
    rng = np.random.default_rng([cfg.seed, SPLIT_IDS["captions"], 0])
    cids = rng.choice(len(concepts), size=cfg.caption_test_size)
    entries = []
    for i, cid in enumerate(cids):
        r = np.random.default_rng([cfg.seed, SPLIT_IDS["captions"], i + 1])
        fname = f"{i:06d}.jpg"
        with open(os.path.join(tdir, "images", fname), "wb") as f:
            f.write(to_jpeg(render(concepts[cid], cfg.image_size, r)))
        sentences = [{"raw": caption_for(concepts[cid], r, concepts, 0.0)[0]} for _ in range(CAPTIONS_PER_IMAGE)]
        entries.append({"filepath": "images", "filename": fname, "imgid": i, "split": "test", "sentences": sentences})
    with open(os.path.join(tdir, "dataset_miniweb.json"), "w") as f:
        json.dump({"dataset": "miniweb", "images": entries}, f)
    return {f"{MINIWEB_CAPTIONS}.test": len(entries)}


def generate(
    cfg: MiniWebConfig, storage: Storage, stage: Stage, processes: int | None = None, progress: bool = True
) -> str:
    """Generate the mini-web into ``stage`` (react_core.executor runs it only when the stage is not complete).

    Args:
        cfg: sizes and seed.
        storage: where to write; a remote root is written through a local temporary folder.
        stage: its folder (``react_core.pipeline.miniweb_stage``).
        processes: worker processes (default: the CPU count).
        progress: show a progress bar.

    Returns:
        The stage URI.
    """
    concepts = concepts_for(cfg)  # validates the group sizes before anything is written
    storage.check_writable()
    stage.clear()
    lp = local_path(stage.uri)
    tmpdir = None
    if lp is None:
        tmpdir = tempfile.mkdtemp(prefix="miniweb-")
        out_dir = tmpdir
    else:
        out_dir = lp
        os.makedirs(out_dir, exist_ok=True)
    try:
        counts = _generate_into(cfg, concepts, out_dir, processes, progress)
        if tmpdir is not None:
            _upload_tree(storage, tmpdir, stage.uri, progress)
        return stage.complete(counts=counts, n_concepts=len(concepts))
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _generate_into(
    cfg: MiniWebConfig, concepts: list[Concept], out_dir: str, processes: int | None, progress: bool
) -> dict[str, int]:
    with open(os.path.join(out_dir, "concepts.json"), "w") as f:
        json.dump([c.to_dict() for c in concepts], f, indent=1)
    jobs = []
    for split, n in (("generic", cfg.generic_size), ("kb", cfg.kb_size)):
        cids = split_concept_ids(cfg, concepts, split, n)
        for shard, start in enumerate(range(0, n, cfg.shard_size)):
            chunk = tuple(int(c) for c in cids[start : start + cfg.shard_size])
            jobs.append(_ShardJob(split, shard, start, chunk, out_dir, split == "kb" and cfg.write_image_files))
    processes = processes or os.cpu_count() or 1
    rows: dict[str, list[dict[str, Any]]] = {"generic": [], "kb": []}
    bar = progress_bar(cfg.generic_size + cfg.kb_size, "mini-web", "img", show=progress)
    cfg_json = cfg.model_dump_json()
    if processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(processes, initializer=_init_worker, initargs=(cfg_json,)) as pool:
            for job, out in zip(jobs, pool.map(_write_shard, jobs)):
                rows[job.split].extend(out)
                bar.update(len(out))
    else:
        _init_worker(cfg_json)
        for job in jobs:
            out = _write_shard(job)
            rows[job.split].extend(out)
            bar.update(len(out))
    bar.close()
    counts: dict[str, int] = {}
    for split, rs in rows.items():
        df = pd.DataFrame(rs)
        df[["key", "concept_id", "caption_kind", "dead"]].to_parquet(os.path.join(out_dir, split, "truth.parquet"))
        counts[f"{split}.pairs"] = len(df)
        counts[f"{split}.shards"] = sum(1 for j in jobs if j.split == split)
        if split == "kb" and cfg.write_image_files:
            df[["key", "url", "caption"]].to_parquet(os.path.join(out_dir, "kb", "urls.parquet"))
            counts["kb.dead_links"] = int(df["dead"].sum())
    for group in (*TASK_NAMES, "generic"):
        if any(c.group == group for c in concepts) or (group == "generic" and cfg.generic_classes):
            counts.update(_write_task(cfg, concepts, group, out_dir))
    if cfg.caption_test_size:
        counts.update(_write_captions(cfg, concepts, out_dir))
    return counts


def _upload_tree(storage: Storage, local_dir: str, uri: str, progress: bool) -> None:
    # One recursive put: s3fs uploads the (many, small) files concurrently. The stage marker is
    # written after it returns, so a half-finished upload is never mistaken for a finished stage.
    n = sum(len(fs) for _, _, fs in os.walk(local_dir))
    _logger.info("uploading %d files to %s", n, uri)
    storage.fs.put(local_dir.rstrip("/") + "/", storage.path(uri), recursive=True)
