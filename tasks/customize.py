"""Tasks of the customize flow: one react_core.pipeline call each; configs and URIs in, URIs out."""

from __future__ import annotations

from prefect import get_run_logger, runtime, task

from react_core import pipeline
from react_core import preflight as checks
from react_core.config import (
    DownloadConfig,
    EvaluationConfig,
    IndexConfig,
    KnowledgeBaseConfig,
    ModelConfig,
    ReactConfig,
    RetrievalConfig,
    StorageConfig,
    TrackingConfig,
    TrainingConfig,
)
from tasks.common import CACHE, TASK_OPTIONS, storage_of, tracker_of


@task(name="preflight", cache_policy=None, persist_result=False)
def preflight(config: ReactConfig, flow_name: str = "customize", customized: str | None = None) -> None:
    """What can be checked before any stage runs (react_core.preflight), for the customize or evaluate flow (and
    the evaluate flow's ``customized`` model: a registered version's weights and architecture)."""
    if flow_name == "evaluate":
        checks.check_evaluate(config, storage_of(config.storage), customized)
    else:
        checks.check_customize(config, storage_of(config.storage))


@task(name="resolve-base", **TASK_OPTIONS)
def resolve_base(model: ModelConfig, base_stage: str | None) -> str | None:
    """The checkpoint the customization starts from."""
    return pipeline.base_checkpoint(model, base_stage)


@task(name="embed-plan", cache_policy=None, persist_result=False)
def embed_plan(
    storage: StorageConfig, model: ModelConfig, kb: KnowledgeBaseConfig, checkpoint: str | None, miniweb_uri: str | None
) -> tuple[str, list[list[int]]]:
    """The embed stage's URI (it hashes the shards' sizes and etags) and the groups of shard indices still to embed
    (read from the shards' files, so never cached)."""
    return pipeline.embed_plan(storage_of(storage), model, kb, checkpoint, miniweb_uri)


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
    miniweb_uri: str | None,
    indices: list[int],
) -> dict[str, int]:
    counts = pipeline.run_embed_shards(storage_of(storage), model, kb, checkpoint, miniweb_uri, indices)
    get_run_logger().info("embedded shards %d..%d: %s", indices[0], indices[-1], counts)
    return counts


# "groups" says what this run embedded (for the resumed-shards count); the stage is the same without it.
@task(name="embed", **{**TASK_OPTIONS, "cache_policy": CACHE - "groups"})
def embed(
    storage: StorageConfig,
    model: ModelConfig,
    kb: KnowledgeBaseConfig,
    checkpoint: str | None,
    miniweb_uri: str | None,
    groups: list[list[int]] | None = None,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
    planned: str | None = None,
) -> str:
    """Mark the embed stage complete once every shard is embedded; returns its URI. ``planned``: the stage URI
    the plan found; unused here, it puts the knowledge base's contents into the cache key (a replaced shard
    makes a new stage, which a key of configs and folder paths alone would not see)."""
    st = storage_of(storage)
    return pipeline.run_embed_finish(
        st, model, kb, checkpoint, miniweb_uri, groups or [], tracker_of(tracking, st), parent_run_id
    )


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
    return pipeline.run_index(st, cfg, k, embed_uri, tracker_of(tracking, st), parent_run_id)


@task(name="retrieve", **TASK_OPTIONS)
def retrieve(
    storage: StorageConfig,
    model: ModelConfig,
    checkpoint: str | None,
    cfg: RetrievalConfig,
    embed_uri: str,
    index_uri: str,
    miniweb_uri: str | None,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
    evaluation: EvaluationConfig | None = None,
) -> str:
    st = storage_of(storage)
    return pipeline.run_retrieve(st, model, checkpoint, cfg, embed_uri, index_uri, miniweb_uri, evaluation,
                                 tracker_of(tracking, st), parent_run_id)  # fmt: skip


@task(name="download", **TASK_OPTIONS)
def download(
    storage: StorageConfig,
    cfg: DownloadConfig,
    retrieve_uri: str,
    miniweb_uri: str | None,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
) -> str:
    st = storage_of(storage)
    return pipeline.run_download(st, cfg, retrieve_uri, miniweb_uri, tracker_of(tracking, st), parent_run_id)


@task(name="replay-sample", **TASK_OPTIONS)
def replay(
    storage: StorageConfig,
    share: float,
    seed: int,
    embed_uri: str,
    retrieve_uri: str,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
) -> str | None:
    st = storage_of(storage)
    return pipeline.run_replay(st, share, seed, embed_uri, retrieve_uri, tracker_of(tracking, st), parent_run_id)


@task(name="train", **TASK_OPTIONS)
def train(
    storage: StorageConfig,
    model: ModelConfig,
    checkpoint: str | None,
    cfg: TrainingConfig,
    tracking: TrackingConfig,
    download_uri: str,
    parent_run_id: str | None = None,
    replay_uri: str | None = None,
) -> str:
    st = storage_of(storage)
    return pipeline.run_train(st, model, checkpoint, cfg, download_uri, tracker_of(tracking, st), parent_run_id,
                              replay_uri)  # fmt: skip


@task(name="head", **TASK_OPTIONS)
def head(
    storage: StorageConfig,
    model: ModelConfig,
    checkpoint: str | None,
    cfg: TrainingConfig,
    retrieval: RetrievalConfig,
    embed_uri: str,
    download_uri: str | None,
    miniweb_uri: str | None,
    tracking: TrackingConfig,
    parent_run_id: str | None = None,
) -> str:
    """A cheap rival's head (training.mode real-prompt, real-linear, cache-head) on the base model."""
    st = storage_of(storage)
    return pipeline.run_head(st, model, checkpoint, cfg, retrieval, embed_uri, download_uri or "", miniweb_uri,
                             tracker_of(tracking, st), parent_run_id)  # fmt: skip


@task(name="evaluate-dataset", task_run_name="eval {dataset} ({label})", **TASK_OPTIONS)
def evaluate_dataset(
    storage: StorageConfig,
    model: ModelConfig,
    checkpoint: str | None,
    cfg: EvaluationConfig,
    dataset: str,
    miniweb_uri: str | None,
    label: str = "model",
    gate_scale: float = 1.0,
    head_uri: str | None = None,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
) -> str:
    """One model on one dataset; cached per (model weights, dataset, evaluation settings, gate scale, a rival's
    head)."""
    st = storage_of(storage)
    return pipeline.run_evaluate_dataset(st, model, checkpoint, cfg, dataset, miniweb_uri, gate_scale=gate_scale,
                                         head_uri=head_uri, tracker=tracker_of(tracking, st),
                                         parent_run_id=parent_run_id)  # fmt: skip


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
    uri = pipeline.run_report(st, results, checkpoints, tracker_of(tracking, st), parent_run_id)
    get_run_logger().info("evaluation:\n%s", st.read_bytes(f"{uri}/table.md").decode())
    return uri


@task(name="report", cache_policy=None, persist_result=False)
def report(storage: StorageConfig, evaluate_uri: str) -> dict:
    """The base / customized / delta table, read from the evaluation stage."""
    return storage_of(storage).stage_manifest(evaluate_uri)["table"]
