"""Tasks of the customize flow: one react_core.pipeline call each; configs and URIs in, URIs out."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from prefect import get_run_logger, runtime, task, unmapped

from react_core import pipeline
from react_core.config import (
    DownloadConfig,
    EvaluationConfig,
    IndexConfig,
    KnowledgeBaseConfig,
    ModelConfig,
    RetrievalConfig,
    StorageConfig,
    TrackingConfig,
    TrainingConfig,
)
from react_core.knowledge import report as retrieval_report
from react_core.knowledge.retrieve import read_manifest
from react_core.storage import Storage
from react_core.tracking import Tracker, make_tracker
from tasks.common import CACHE, TASK_OPTIONS, storage_of


@contextlib.contextmanager
def _stage_run(
    tracking: TrackingConfig | None,
    st: Storage,
    name: str,
    parent_run_id: str | None,
    params: dict,
    uri: str,
    files: tuple[str, ...] = (),
) -> Iterator[Tracker | None]:
    """A nested MLflow run for a stage: its config, the numeric counts of its ``_SUCCESS`` and its JSON
    reports; yields the tracker for anything more (None when tracking is off)."""
    if tracking is None:
        yield None
        return
    with make_tracker(tracking, st).run(name, parent_run_id=parent_run_id) as t:
        t.log_params(params)
        counts = st.stage_manifest(uri)["counts"]
        t.log_metrics({f"{name}/{k}": v for k, v in counts.items() if isinstance(v, int | float)})
        for f in files:
            if st.exists(f"{uri}/{f}"):  # stages finished by an older version may lack a newer report
                t.log_dict(st.read_json(f"{uri}/{f}"), f)
        yield t


def _log_stage(*args: Any, **kwargs: Any) -> None:
    """:func:`_stage_run` with nothing more to log."""
    with _stage_run(*args, **kwargs):
        pass


@task(name="preflight", cache_policy=None, persist_result=False)
def preflight(model: ModelConfig, training: TrainingConfig) -> None:
    """Checks that need the architecture, before any stage runs."""
    pipeline.preflight(model, training)


@task(name="resolve-base", **TASK_OPTIONS)
def resolve_base(model: ModelConfig, base_stage: str | None) -> str | None:
    """The checkpoint the customization starts from."""
    return pipeline.base_checkpoint(model, base_stage)


@task(name="embed-plan", cache_policy=None, persist_result=False)
def embed_plan(
    storage: StorageConfig, model: ModelConfig, kb: KnowledgeBaseConfig, checkpoint: str | None, world: str | None
) -> list[list[int]]:
    """Groups of shard indices still to embed (read from the shards' markers, so never cached)."""
    return pipeline.embed_plan(storage_of(storage), model, kb, checkpoint, world)


def _shards_run_name() -> str:
    indices = runtime.task_run.parameters["indices"]
    return f"embed shards {indices[0]}..{indices[-1]}"


# Not cached by Prefect: the shard files' markers are the cache (a re-run skips finished shards), and the
# task may run on a Dask worker whose result storage the flow's process cannot read.
@task(
    name="embed-shards",
    task_run_name=_shards_run_name,
    cache_policy=None,
    persist_result=False,
    retries=TASK_OPTIONS["retries"],
    retry_delay_seconds=TASK_OPTIONS["retry_delay_seconds"],
    retry_condition_fn=TASK_OPTIONS["retry_condition_fn"],
)
def embed_shards(
    storage: StorageConfig,
    model: ModelConfig,
    kb: KnowledgeBaseConfig,
    checkpoint: str | None,
    world: str | None,
    indices: list[int],
) -> dict[str, int]:
    counts = pipeline.run_embed_shards(storage_of(storage), model, kb, checkpoint, world, indices)
    get_run_logger().info("embedded shards %d..%d: %s", indices[0], indices[-1], counts)
    return counts


# "groups" says what this run embedded (for the resumed-shards count); the stage is the same without it.
@task(name="embed", **{**TASK_OPTIONS, "cache_policy": CACHE - "groups"})
def embed(
    storage: StorageConfig,
    model: ModelConfig,
    kb: KnowledgeBaseConfig,
    checkpoint: str | None,
    world: str | None,
    groups: list[list[int]] | None = None,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Mark the embed stage complete once every shard is embedded; returns its URI."""
    st = storage_of(storage)
    uri = pipeline.run_embed_finish(st, model, kb, checkpoint, world, groups or [])
    _log_stage(tracking, st, "embed", parent_run_id, {"knowledge_base": kb.model_dump(mode="json")}, uri,
               ("throughput.json",))  # fmt: skip
    return uri


@task(name="index", **TASK_OPTIONS)
def index(
    storage: StorageConfig,
    cfg: IndexConfig,
    k: int,
    embed_uri: str,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
) -> str:
    st = storage_of(storage)
    uri = pipeline.run_index(st, cfg, k, embed_uri)
    infos = ("image_infos.json", "text_infos.json")
    _log_stage(tracking, st, "index", parent_run_id, {"index": cfg.model_dump(mode="json"), "k": k}, uri, infos)
    return uri


@task(name="retrieve", **TASK_OPTIONS)
def retrieve(
    storage: StorageConfig,
    model: ModelConfig,
    checkpoint: str | None,
    cfg: RetrievalConfig,
    embed_uri: str,
    index_uri: str,
    world: str | None,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
    evaluation: EvaluationConfig | None = None,
) -> str:
    st = storage_of(storage)
    uri = pipeline.run_retrieve(st, model, checkpoint, cfg, embed_uri, index_uri, world, evaluation)
    params = {"retrieval": cfg.model_dump(mode="json")}
    files = ("overlap.json", "class_counts.json")
    with _stage_run(tracking, st, "retrieve", parent_run_id, params, uri, files) as t:
        if t is not None:
            counts = st.read_json(f"{uri}/class_counts.json")
            t.log_figure(retrieval_report.class_count_figure(counts), "class_counts.png")
            t.log_image(retrieval_report.sample_grid(st, read_manifest(st, uri)), "retrieved_samples.png")
    return uri


@task(name="download", **TASK_OPTIONS)
def download(
    storage: StorageConfig,
    cfg: DownloadConfig,
    retrieve_uri: str,
    world: str | None,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
) -> str:
    st = storage_of(storage)
    uri = pipeline.run_download(st, cfg, retrieve_uri, world)
    params = {"download": cfg.model_dump(mode="json")}
    _log_stage(tracking, st, "download", parent_run_id, params, uri, ("download_summary.json",))
    return uri


@task(name="train", **TASK_OPTIONS)
def train(
    storage: StorageConfig,
    model: ModelConfig,
    checkpoint: str | None,
    cfg: TrainingConfig,
    tracking: TrackingConfig,
    download_uri: str,
    parent_run_id: str | None = None,
) -> str:
    st = storage_of(storage)
    with make_tracker(tracking, st).run("train", parent_run_id=parent_run_id) as t:
        t.log_params({"training": cfg.model_dump(mode="json")})
        return pipeline.run_train(st, model, checkpoint, cfg, download_uri, t)


@task(name="evaluate-dataset", task_run_name="eval {dataset} ({label})", **TASK_OPTIONS)
def evaluate_dataset(
    storage: StorageConfig,
    model: ModelConfig,
    checkpoint: str | None,
    cfg: EvaluationConfig,
    dataset: str,
    world: str | None,
    label: str = "model",
) -> str:
    """One model on one dataset; cached per (model weights, dataset, evaluation settings)."""
    return pipeline.run_evaluate_dataset(storage_of(storage), model, checkpoint, cfg, dataset, world)


@task(name="evaluation-report", **TASK_OPTIONS)
def evaluation_report(
    storage: StorageConfig,
    results: dict[str, list[str]],
    checkpoints: dict[str, str | None],
    tracking: TrackingConfig,
    parent_run_id: str | None = None,
) -> str:
    """metrics.json, the table (printed to the flow's log) and the delta plot; logged to MLflow."""
    st = storage_of(storage)
    with make_tracker(tracking, st).run("evaluate", parent_run_id=parent_run_id) as t:
        uri = pipeline.run_report(st, results, checkpoints, t)
    get_run_logger().info("evaluation:\n%s", st.read_bytes(f"{uri}/table.md").decode())
    return uri


def evaluate_models(
    storage: StorageConfig,
    model: ModelConfig,
    checkpoints: dict[str, str | None],
    cfg: EvaluationConfig,
    tracking: TrackingConfig,
    world: str | None,
    parent_run_id: str | None = None,
) -> str:
    """Map one task per (model, dataset), then the report. Called from a flow."""
    # Each task gets the config narrowed to its dataset, so its cache key does not change when another
    # dataset is added. Shared arguments are unmapped (pydantic configs are iterable: map would split them).
    per_dataset = [cfg.model_copy(update={"tasks": [d], "locations": {k: v for k, v in cfg.locations.items() if k == d}})
                   for d in cfg.tasks]  # fmt: skip
    futures = {
        label: evaluate_dataset.map(
            unmapped(storage), unmapped(model), unmapped(ckpt), per_dataset, cfg.tasks, unmapped(world), label=label
        )
        for label, ckpt in checkpoints.items()
    }
    results = {label: [f.result() for f in fs] for label, fs in futures.items()}
    return evaluation_report(storage, results, checkpoints, tracking, parent_run_id=parent_run_id)


@task(name="report", cache_policy=None, persist_result=False)
def report(storage: StorageConfig, evaluate_uri: str) -> dict:
    """The base / customized / delta table, read from the evaluation stage."""
    return storage_of(storage).stage_manifest(evaluate_uri)["table"]
