"""REACT's stages as functions of config sections and upstream URIs (what the Prefect tasks call).

Each function derives its stage's identity (``{root}/{stage}/{version}``) from exactly the config it
reads and the URIs it consumes, skips a finished stage, and returns its URI. Nothing here knows about
Prefect; the CLI, a notebook or another orchestrator can run the same sequence.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from react_core.config import (
    DownloadConfig,
    EvaluationConfig,
    IndexConfig,
    KnowledgeBaseConfig,
    ModelConfig,
    RetrievalConfig,
    TrainingConfig,
)
from react_core.data import DatasetError
from react_core.evaluation.datasets import EvalSet
from react_core.evaluation.suite import (
    comparison,
    dataset_uri,
    delta_figure,
    evaluate_dataset,
    figure_png,
    markdown_table,
    metrics_for,
    open_eval,
    report_rows,
)
from react_core.knowledge.download import download, downloaded_shards
from react_core.knowledge.embed import embed_knowledge_base, embed_shards, embedded_shards, finish
from react_core.knowledge.extract import extract, manifest_has_urls
from react_core.knowledge.index import build_indices
from react_core.knowledge.retrieve import read_manifest, retrieve
from react_core.models import create_model
from react_core.registry import resolve_task
from react_core.storage import Stage, Storage, StorageError, join
from react_core.tracking import NullTracker, Tracker
from react_core.training.customize import checkpoint_of, customize
from react_core.training.pretrain import checkpoint_uri

_logger = logging.getLogger(__name__)


def preflight(model: ModelConfig, training: TrainingConfig) -> None:
    """Checks that need the model architecture, made before any stage runs (not minutes later)."""
    from react_core.config import ConfigError
    from react_core.models import model_config

    vision = model_config(model.name).get("vision_cfg", {})
    layers = vision.get("layers")
    if vision.get("timm_model_name") or not isinstance(layers, int):
        tower = f"timm {vision['timm_model_name']}" if vision.get("timm_model_name") else "ResNet"
        raise ConfigError(
            f"model.name={model.name} has a {tower} image tower; REACT's gated blocks and trainer need an "
            "open_clip vision transformer; fix: use a ViT-* model"
        )
    if isinstance(layers, int) and training.mode == "gated-image" and training.gated_layers > layers:
        raise ConfigError(
            f"training.gated_layers={training.gated_layers} but {model.name} has {layers} image blocks; "
            f"fix: set training.gated_layers to 1..{layers}"
        )


def base_checkpoint(model: ModelConfig, base_stage: str | None) -> str | None:
    """The weights the pipeline starts from: the mini-web base's checkpoint, or ``model.pretrained``."""
    if model.pretrained == "miniweb":
        if base_stage is None:
            raise ValueError("model.pretrained is 'miniweb' but no base stage was given; run prepare-world first")
        return checkpoint_uri(base_stage)
    return model.pretrained


def kb_shards(storage: Storage, kb: KnowledgeBaseConfig, world: str | None) -> list[str]:
    """The knowledge base's webdataset shards (the mini-web's, or those under ``kb.source``)."""
    if kb.source == "miniweb":
        if world is None:
            raise ValueError("knowledge_base.source is 'miniweb' but no mini-web was generated")
        uri = join(world, "kb", "shards")
    else:
        uri = kb.source.rstrip("/")
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


def _model(model: ModelConfig, checkpoint: str | None, storage: Storage) -> tuple[torch.nn.Module, Any]:
    m, tok = create_model(model.name, checkpoint, storage, device="cuda" if torch.cuda.is_available() else "cpu")
    return m.eval(), tok


def embed_stage(
    storage: Storage, model: ModelConfig, kb: KnowledgeBaseConfig, checkpoint: str | None, world: str | None
) -> tuple[Stage, list[str]]:
    """The embed stage and the shards it embeds (its identity: model, batch size, checkpoint, shard folder)."""
    shards = kb_shards(storage, kb, world)
    stage = storage.stage("embed", {"model": model.name, "batch_size": kb.batch_size, "jpeg_draft": kb.jpeg_draft},
                          {"checkpoint": checkpoint or "", "shards": shards[0].rsplit("/", 1)[0]})  # fmt: skip
    return stage, shards


def embed_plan(
    storage: Storage, model: ModelConfig, kb: KnowledgeBaseConfig, checkpoint: str | None, world: str | None
) -> list[list[int]]:
    """Indices of the shards still to embed, ``kb.shards_per_task`` per group (one task each); [] when done."""
    stage, shards = embed_stage(storage, model, kb, checkpoint, world)
    if stage.done:
        return []
    finished = embedded_shards(storage, stage)
    todo = [i for i in range(len(shards)) if i not in finished]
    n = kb.shards_per_task
    return [todo[j : j + n] for j in range(0, len(todo), n)]


_EMBEDDING_MODEL: dict[tuple[str, str], tuple[torch.nn.Module, Any]] = {}
_EMBEDDING_MODEL_LOCK = threading.Lock()


def embedding_model(model: ModelConfig, checkpoint: str | None, storage: Storage) -> tuple[torch.nn.Module, Any]:
    """The embedding model, loaded once per process and kept (one at a time).

    Every embed-shards task of a run needs the same weights, one group of shards after another in the flow's
    process or on a Dask worker; loading a ViT-L checkpoint from S3 can take longer than embedding the group.
    """
    key = (model.model_dump_json(), checkpoint or "")
    with _EMBEDDING_MODEL_LOCK:
        if key not in _EMBEDDING_MODEL:
            _EMBEDDING_MODEL.clear()
            _EMBEDDING_MODEL[key] = _model(model, checkpoint, storage)
        return _EMBEDDING_MODEL[key]


def run_embed_shards(
    storage: Storage,
    model: ModelConfig,
    kb: KnowledgeBaseConfig,
    checkpoint: str | None,
    world: str | None,
    indices: Sequence[int],
) -> dict[str, int]:
    """Embed one group of shards (on whichever worker runs it); returns its counts."""
    stage, shards = embed_stage(storage, model, kb, checkpoint, world)
    m, tok = embedding_model(model, checkpoint, storage)
    results = embed_shards(m, tok, storage, shards, stage, indices, kb.batch_size, kb.num_workers, draft=kb.jpeg_draft)
    return {"shards": len(results), "embedded": sum(r.embedded for r in results),
            "skipped": sum(r.skipped for r in results)}  # fmt: skip


def run_embed_finish(
    storage: Storage,
    model: ModelConfig,
    kb: KnowledgeBaseConfig,
    checkpoint: str | None,
    world: str | None,
    groups: Sequence[Sequence[int]] = (),
) -> str:
    """Mark the embed stage complete once every shard is embedded; ``groups``: what this run embedded."""
    stage, shards = embed_stage(storage, model, kb, checkpoint, world)
    return finish(storage, stage, shards, resumed_shards=len(shards) - sum(len(g) for g in groups))


def run_embed(
    storage: Storage, model: ModelConfig, kb: KnowledgeBaseConfig, checkpoint: str | None, world: str | None
) -> str:
    """The whole embed stage in this process (what the flow fans out as embed_plan / run_embed_shards / finish)."""
    stage, shards = embed_stage(storage, model, kb, checkpoint, world)
    if stage.done:
        return stage.uri
    m, tok = _model(model, checkpoint, storage)
    return embed_knowledge_base(m, tok, storage, shards, stage, kb.batch_size, kb.num_workers, draft=kb.jpeg_draft)


def run_index(storage: Storage, index: IndexConfig, k: int, embed_uri: str) -> str:
    stage = storage.stage("index", {"index": index.model_dump(mode="json"), "k": k}, {"embed": embed_uri})
    return build_indices(storage, embed_uri, stage, index, k)


def audit_datasets(
    retrieval: RetrievalConfig, evaluation: EvaluationConfig, world: str | None
) -> tuple[list[tuple[str, str]], str | None]:
    """(name, folder) of each evaluation set the overlap audit checks, or why there are none.

    Only names and folders: they are part of the retrieve stage's identity, computed on every run, so
    nothing is listed or read here (an ImageNet val folder holds 50,000 files).
    """
    if not retrieval.audit.enabled:
        return [], None
    found = []
    for name in retrieval.audit.datasets or [retrieval.task]:
        if name.endswith((".yaml", ".yml")):
            return [], f"task {name} is a class list with no evaluation images; set retrieval.audit.datasets"
        try:
            found.append((name, dataset_uri(evaluation, name, world)))
        except DatasetError as exc:
            return [], f"{name}: {exc}"
    return found, None


def run_retrieve(
    storage: Storage,
    model: ModelConfig,
    checkpoint: str | None,
    retrieval: RetrievalConfig,
    embed_uri: str,
    index_uri: str,
    world: str | None,
    evaluation: EvaluationConfig | None = None,
) -> str:
    evaluation = evaluation or EvaluationConfig()
    audited, why_not = audit_datasets(retrieval, evaluation, world)
    stage = storage.stage(
        "retrieve", retrieval,
        {"embed": embed_uri, "index": index_uri, "checkpoint": checkpoint or "",
         "audit": ",".join(uri for _, uri in audited)},
    )  # fmt: skip
    if stage.done:
        return stage.uri
    sets: list[EvalSet] | str = why_not or "no evaluation set given"
    if audited:
        try:
            sets = [open_eval(storage, evaluation, name, world, retrieval.audit.split) for name, _ in audited]
        except DatasetError as exc:
            sets = str(exc)
    m, tok = _model(model, checkpoint, storage)
    task = resolve_task(storage, retrieval.task, world)
    return retrieve(m, tok, storage, embed_uri, index_uri, task, retrieval, stage, sets)


def run_download(storage: Storage, cfg: DownloadConfig, retrieve_uri: str, world: str | None) -> str:
    stage = storage.stage("download", cfg, {"retrieve": retrieve_uri})
    if stage.done:
        return stage.uri
    if cfg.mode == "extract" or (cfg.mode == "auto" and not manifest_has_urls(read_manifest(storage, retrieve_uri))):
        return extract(storage, retrieve_uri, stage, cfg)  # a corpus of local shards: no network needed
    if world is None:
        return download(storage, retrieve_uri, stage, cfg)
    from react_core.miniweb.serve import MiniWebServer

    with MiniWebServer(storage, world) as server:  # the mini-web's images, over HTTP on 127.0.0.1
        return download(storage, retrieve_uri, stage, cfg, base_url=server.base_url)


def run_train(
    storage: Storage,
    model: ModelConfig,
    checkpoint: str | None,
    training: TrainingConfig,
    download_uri: str,
    tracker: Tracker | None = None,
) -> str:
    # The version holds the recipe only: resuming with more processes or another checkpoint interval
    # continues the same stage (react_core.config.OPERATIONAL_TRAINING_FIELDS).
    stage = storage.stage("train", {"model": model.name, "training": training.recipe()},
                          {"download": download_uri, "checkpoint": checkpoint or ""})  # fmt: skip
    shards = downloaded_shards(storage, download_uri)
    return customize(model.name, checkpoint, training, storage, shards, stage, tracker, progress=False,
                     download_uri=download_uri)  # fmt: skip


def model_weights(model: ModelConfig, checkpoint: str | None) -> str:
    """What identifies a model's weights in a stage's inputs: its checkpoint, else the pretrained tag."""
    return checkpoint or f"{model.name}:{model.pretrained or 'random'}"


def run_evaluate_dataset(
    storage: Storage,
    model: ModelConfig,
    checkpoint: str | None,
    evaluation: EvaluationConfig,
    dataset: str,
    world: str | None,
    progress: bool = False,
) -> str:
    """One model on one dataset (``result.json``); a stage of its own, so adding a dataset re-runs only it."""
    probe = evaluation.linear_probe
    stage = storage.stage(
        "eval",
        {"dataset": dataset, "location": dataset_uri(evaluation, dataset, world), "split": evaluation.split,
         "metrics": metrics_for(dataset), "linear_probe": probe.model_dump(mode="json") if probe.enabled else None},
        {"model": model.name, "weights": model_weights(model, checkpoint)},
    )  # fmt: skip
    if stage.done:
        return stage.uri
    m, tok = _model(model, checkpoint, storage)
    result = evaluate_dataset(m, tok, storage, evaluation, dataset, world, progress)
    result.update(model=model.name, checkpoint=checkpoint)
    storage.write_json(stage.file("result.json"), result)
    return stage.complete(counts={"images": result["n"]}, zero_shot=result["zero_shot"])


def metric_key(*parts: str) -> str:
    """An MLflow metric name: the parts joined by '/', each stripped of what MLflow rejects."""
    return "/".join(re.sub(r"[^\w\-. ]", "_", p) for p in parts)


def run_report(
    storage: Storage,
    results: Mapping[str, Sequence[str]],
    checkpoints: Mapping[str, str | None],
    tracker: Tracker | None = None,
) -> str:
    """``metrics.json``, ``table.md`` and ``deltas.png`` from per-dataset stages of two models (base, customized)."""
    inputs = {f"{which}/{i}": uri for which, uris in results.items() for i, uri in enumerate(uris)}
    stage = storage.stage("evaluate", {"models": list(results)}, inputs)
    if stage.done:
        return stage.uri
    tracker = tracker or NullTracker()
    per_model = {w: [storage.read_json(join(u, "result.json")) for u in uris] for w, uris in results.items()}
    rows = report_rows(per_model, checkpoints)
    models = tuple(results)
    table = comparison(rows, models)
    markdown = markdown_table(table, models)
    storage.write_json(stage.file("metrics.json"), rows)
    storage.write_bytes(stage.file("table.md"), (markdown + "\n").encode())
    storage.write_json(stage.file("table.json"), table)
    for r in rows:
        tracker.log_metrics({metric_key(r["protocol"], r["dataset"], r["metric"], r["model"]): r["value"]})
    for r in table:
        if "delta" in r:
            tracker.log_metrics({metric_key(r["protocol"], r["dataset"], r["metric"], "delta"): r["delta"]})
    tracker.log_dict(rows, "metrics.json")
    tracker.log_dict({"table": markdown}, "evaluation_table.json")
    fig = delta_figure(table, models)
    tracker.log_figure(fig, "deltas.png")
    storage.write_bytes(stage.file("deltas.png"), figure_png(fig))
    headline = {
        r["dataset"]: {"metric": r["metric"], **{m: r[m] for m in (*models, "delta") if m in r}}
        for r in table
        if r["protocol"] == "zero-shot" and r["metric"] == metrics_for(r["dataset"])[0]
    }
    return stage.complete(counts={"rows": len(rows)}, table=headline)


def run_evaluate(
    storage: Storage,
    model: ModelConfig,
    base: str | None,
    customized_stage: str,
    evaluation: EvaluationConfig,
    world: str | None,
    tracker: Tracker | None = None,
) -> str:
    """Base and customized model on every ``evaluation.tasks`` dataset, then the report."""
    checkpoints = {"base": base, "customized": checkpoint_of(customized_stage)}
    results = {
        which: [run_evaluate_dataset(storage, model, ckpt, evaluation, name, world) for name in evaluation.tasks]
        for which, ckpt in checkpoints.items()
    }
    return run_report(storage, results, checkpoints, tracker)
