"""What the flows share: orchestration that maps tasks (never arithmetic or I/O of its own)."""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger, runtime, unmapped
from prefect.context import FlowRunContext

from react_core.config import (
    RIVAL_MODES,
    EvaluationConfig,
    ModelConfig,
    ReactConfig,
    StorageConfig,
    TrackingConfig,
    deployment_run,
)
from react_core.environment import lock_drift
from react_core.errors import ReactError
from react_core.overrides import ConfigOverrides, apply_overrides
from react_core.preflight import check_deployed
from react_core.tracking import unreachable_server
from tasks import customize as t
from tasks.common import embed_task_runner, result_storage_of
from tasks.world import end_tracking, generate_miniweb, pretrain_base_model, start_tracking

# The presets a deployment names (deployments/*.yaml, beside the code on every worker); a Literal, so the
# Prefect form offers them as a list.
PRESETS = Path(__file__).resolve().parents[1] / "deployments"
Preset = Literal[tuple(sorted(p.stem for p in PRESETS.glob("*.yaml")))]  # type: ignore[valid-type]


def run_config(preset: str, config: ConfigOverrides | None) -> ReactConfig:
    """The tree a flow run uses: its preset with the fields ``config`` names changed. Prefect merges a run's
    parameters into the deployment's one level deep only, so a run that names ``training.epochs`` sends a
    ``config`` holding just that; applied here, the preset keeps every other value.

    Called first by every flow. A deployment run (a worker runs it from a temporary copy of the code) refuses a
    relative ``storage.root`` without $REACT_STORAGE_ROOT and a tracking store that would live in that copy, says
    in one line when the worker's packages are not the code's lock, and logs a user error (ReactError) as one
    ``error:`` line. Every run keeps its task results, its own result and its failure under the storage root."""
    deployed = runtime.deployment.id is not None
    if deployed:
        one_line_user_errors()
        if drift := lock_drift():
            get_run_logger().warning(drift)
    with deployment_run() if deployed else contextlib.nullcontext():
        cfg = apply_overrides(PRESETS / f"{preset}.yaml", config)
    if deployed:
        check_deployed(cfg)
    # Task results, cache records, and the flow's own result or failure under the storage root, shared by every
    # worker (tasks.common). Prefect takes a flow's result storage from its decorator only, fixed at import; a
    # run's storage is known here, so the run's result store is pointed there before the first task (tasks
    # inherit it) and before anything can fail (the engine records a failure through the same store).
    ctx = FlowRunContext.get()
    if ctx is not None:
        ctx.result_store = ctx.result_store.model_copy(update={"result_storage": result_storage_of(cfg.storage)})
    return cfg


class _OneLineUserErrors(logging.Filter):
    """On a deployment run's log handlers (the API's, which feed the Prefect UI, and the console's): a user
    error (ReactError, whose message names the field or file and the fix) is one ``error:`` line, without its
    traceback, and only once (the failed task and then the flow each log it)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: deque[tuple[str, str]] = deque(maxlen=64)

    def filter(self, record: logging.LogRecord) -> bool:
        key = getattr(record, "react_error", None)  # rewritten by another handler's filter: shown there once
        exc = record.exc_info[1] if record.exc_info else None
        if key is None and isinstance(exc, ReactError):
            key = (type(exc).__name__, str(exc))
            if key in self.seen:
                return False
            record.msg, record.args = "error: %s", (" ".join(str(exc).split()),)
            record.exc_info, record.exc_text, record.react_error = None, None, key
        elif key is not None and key in self.seen:
            return False
        if key is not None:
            self.seen.append(key)
        return True


def one_line_user_errors() -> None:
    """Put :class:`_OneLineUserErrors` on every handler a flow or task run's record reaches (once per process)."""
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect", ""):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _OneLineUserErrors) for f in handler.filters):
                handler.addFilter(_OneLineUserErrors())


@contextlib.contextmanager
def tracked(config: ReactConfig, flow_name: str) -> Iterator[dict[str, Any]]:
    """The flow's parent MLflow run, open while the flow runs and ended with its outcome: FINISHED, or FAILED
    when the flow raises (KILLED on an interrupt). Yields the flow's result dict (``mlflow_run_id``,
    ``flow_run_id``), which the flow fills with its stage URIs: they become the parent run's tags."""
    out: dict[str, Any] = {"flow_run_id": runtime.flow_run.id}
    out["mlflow_run_id"] = start_tracking(config, flow_name, runtime.flow_run.id)
    try:
        yield out
    except BaseException as exc:
        status = "FAILED" if isinstance(exc, Exception) else "KILLED"
        if unreachable_server(exc) is None:  # a server that went away cannot record it: the next start ends it KILLED
            end_tracking(config, out["mlflow_run_id"], status, _uris(out), out.get("table"))
        raise
    end_tracking(config, out["mlflow_run_id"], "FINISHED", _uris(out), out.get("table"))


def _uris(out: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in out.items() if isinstance(v, str)}


def miniweb_and_base(config: ReactConfig, parent_run_id: str | None) -> tuple[str | None, str | None]:
    """The mini-web (when any stage reads it) and the base weights: the mini-web base, trained if need be,
    or ``model.pretrained``. Shared by the flows that start from a base model."""
    miniweb_uri = (
        generate_miniweb(config.storage, config.miniweb, config.tracking, parent_run_id)
        if config.uses_miniweb
        else None
    )
    base_stage = None
    if config.model.pretrained == "miniweb":
        base_stage = pretrain_base_model(
            config.storage, config.model, config.tracking, miniweb_uri, parent_run_id=parent_run_id
        )
    return miniweb_uri, t.resolve_base(config.model, base_stage)


def embed_knowledge_base(
    config: ReactConfig, checkpoint: str | None, miniweb_uri: str | None, parent_run_id: str | None = None
) -> str:
    """The embed stage as one task per group of shards, on a Dask cluster's workers when
    ``knowledge_base.dask_address`` is set (else in this process), then the stage's completion."""
    kb = config.knowledge_base
    planned, groups = t.embed_plan(config.storage, config.model, kb, checkpoint, miniweb_uri)
    fixed = {"storage": config.storage, "model": config.model, "kb": kb, "checkpoint": checkpoint,
             "miniweb_uri": miniweb_uri}  # fmt: skip
    if kb.dask_address:
        with embed_task_runner(kb) as runner:
            runner.map(t.embed_shards, {**{k: unmapped(v) for k, v in fixed.items()}, "indices": groups}).result()
    else:  # in the flow's thread, one group after the other (see evaluate_models: DataLoaders and threads)
        for indices in groups:
            t.embed_shards(**fixed, indices=indices)
    return t.embed(config.storage, config.model, kb, checkpoint, miniweb_uri, groups, config.tracking, parent_run_id,
                   planned=planned)  # fmt: skip


def retrieve_and_train(
    config: ReactConfig,
    checkpoint: str | None,
    miniweb_uri: str | None,
    embedded: str,
    parent_run_id: str | None = None,
    label: str | None = None,
    out: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Index (for ``retrieval.k``), retrieve, download, the replay sample when ``training.replay`` is set, train: the
    stages after the embedding, as URIs. ``label`` names the train task run (an ablation's cell). A cheap rival
    (``training.mode`` in RIVAL_MODES) fits its head instead of training (``train`` is then the head stage);
    real-prompt reads the knowledge base's captions only. ``out``: filled stage by stage (a flow's result: the
    stages reached before a failure become its parent run's tags)."""
    out = {} if out is None else out
    parent = parent_run_id
    rival = config.training.mode in RIVAL_MODES
    if config.training.mode == "real-prompt":
        out["train"] = t.head.with_options(task_run_name=f"head {label or ''}".strip())(
            config.storage, config.model, checkpoint, config.training, config.retrieval, embedded, None, miniweb_uri,
            config.tracking, parent,
        )  # fmt: skip
        return out
    out["index"] = indexed = t.index(config.storage, config.index, config.retrieval.k, embedded, config.tracking,
                                     parent)  # fmt: skip
    out["retrieve"] = retrieved = t.retrieve(
        config.storage, config.model, checkpoint, config.retrieval, embedded, indexed, miniweb_uri,
        config.tracking, parent_run_id=parent, evaluation=config.evaluation,
    )  # fmt: skip
    out["download"] = downloaded = t.download(
        config.storage, config.download, retrieved, miniweb_uri, config.tracking, parent
    )
    if rival:
        out["train"] = t.head.with_options(task_run_name=f"head {label or ''}".strip())(
            config.storage, config.model, checkpoint, config.training, config.retrieval, embedded, downloaded,
            miniweb_uri, config.tracking, parent,
        )  # fmt: skip
        return out
    replayed = None
    if config.training.replay > 0:  # a random share of the knowledge base, trained on beside the retrieval
        out["replay"] = t.replay(config.storage, config.training.replay, config.training.seed, embedded, retrieved,
                                 config.tracking, parent)  # fmt: skip
        out["replay_download"] = replayed = t.download.with_options(task_run_name="download replay")(
            config.storage, config.download, out["replay"], miniweb_uri, config.tracking, parent
        )
    train = t.train.with_options(task_run_name=f"train {label}") if label else t.train
    out["train"] = train(
        config.storage, config.model, checkpoint, config.training, config.tracking, downloaded,
        parent_run_id=parent, replay_uri=replayed,
    )  # fmt: skip
    return out


def evaluate_datasets(
    storage: StorageConfig,
    model: ModelConfig,
    checkpoint: str | None,
    cfg: EvaluationConfig,
    miniweb_uri: str | None,
    label: str,
    gate_scale: float = 1.0,
    head_uri: str | None = None,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
) -> dict[str, str]:
    """One task per dataset of ``cfg.tasks`` for one model (with a rival's head: ``head_uri``): dataset -> its eval
    stage."""
    # Each task gets the config narrowed to its dataset, so its cache key does not change when another
    # dataset is added. The tasks run one after the other in the flow's thread, not mapped onto a thread pool:
    # each decodes in DataLoader worker processes, and PyTorch watches those from the main thread only (its
    # SIGCHLD handler); DataLoaders forked from several threads at once failed, rarely, with "DataLoader
    # worker exited unexpectedly with exit code 1" raised in the flow's thread. The workers keep the cores busy.
    return {
        name: t.evaluate_dataset(
            storage, model, checkpoint,
            cfg.model_copy(update={"tasks": [name], "locations": {k: v for k, v in cfg.locations.items() if k == name}}),
            name, miniweb_uri, label=label, gate_scale=gate_scale, head_uri=head_uri, tracking=tracking,
            parent_run_id=parent_run_id,
        )
        for name in cfg.tasks
    }  # fmt: skip


def evaluate_models(
    storage: StorageConfig,
    model: ModelConfig,
    checkpoints: dict[str, str | None],
    cfg: EvaluationConfig,
    tracking: TrackingConfig,
    miniweb_uri: str | None,
    parent_run_id: str | None = None,
    registered_scale: float | None = None,
) -> str:
    """One task per (model, dataset), then the report. Called from a flow. The customized model is evaluated at
    ``evaluation.gate_scale``, else ``registered_scale`` (a registered version's lambda), else 1."""
    scale = cfg.customized_scale(registered_scale)  # the customized model's lambda; the base is the base
    results = {
        label: list(evaluate_datasets(storage, model, ckpt, cfg, miniweb_uri, label,
                                      scale if label == "customized" else 1.0, tracking=tracking,
                                      parent_run_id=parent_run_id).values())
        for label, ckpt in checkpoints.items()
    }  # fmt: skip
    return t.evaluation_report(storage, results, checkpoints, tracking, parent_run_id=parent_run_id)
