"""A plan's stages as Prefect task runs (react_core.plans): one task run per stage, named after it, cached on the
stage's identity (tasks.common.StageIdentity), retried on transient failures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prefect import get_run_logger, task, unmapped

from react_core import pipeline
from react_core.config import ReactConfig, StorageConfig, TrackingConfig
from tasks.common import TASK_OPTIONS, embed_task_runner, storage_of, tracker_of
from tasks.customize import embed_shards

T = TypeVar("T")


@task(name="stage", **TASK_OPTIONS)
def stage(
    entry: str,
    storage: StorageConfig,
    tracking: TrackingConfig | None,
    inputs: dict[str, Any],
    parent_run_id: str | None = None,
) -> Any:
    """``react_core.pipeline.{entry}`` (a stage's entry point) on ``inputs``, recorded under ``parent_run_id``."""
    st = storage_of(storage)
    return getattr(pipeline, entry)(st, **inputs, tracker=tracker_of(tracking, st), parent_run_id=parent_run_id)


@task(name="step", cache_policy=None, persist_result=False)
def step(entry: str, storage: StorageConfig, inputs: dict[str, Any]) -> Any:
    """``react_core.pipeline.{entry}`` on ``inputs``: what is read, not built (the embed plan, a stage's table),
    never cached."""
    return getattr(pipeline, entry)(storage_of(storage), **inputs)


class PrefectRunner:
    """The runner the flows give a plan: each stage a task run named after the plan's step, the embed stage's
    groups of shards on a Dask cluster's workers when ``knowledge_base.dask_address`` is set (else one after the
    other in the flow's thread), lines into the flow run's log."""

    def __init__(self, config: ReactConfig, parent_run_id: str | None) -> None:
        self.config, self.parent_run_id = config, parent_run_id

    def stage(self, name: str, fn: Callable[..., T], /, **inputs: Any) -> T:
        run = stage.with_options(name=name, task_run_name=lambda: name)
        return run(fn.__name__, self.config.storage, self.config.tracking, inputs, self.parent_run_id)

    def step(self, name: str, fn: Callable[..., T], /, **inputs: Any) -> T:
        return step.with_options(name=name, task_run_name=lambda: name)(fn.__name__, self.config.storage, inputs)

    def shards(self, groups: list[list[int]], /, **inputs: Any) -> None:
        fixed = {"storage": self.config.storage, "tracking": self.config.tracking, "parent_run_id": self.parent_run_id}
        fixed.update(inputs)
        kb = self.config.knowledge_base
        if kb.dask_address and groups:
            with embed_task_runner(kb) as runner:
                runner.map(embed_shards, {**{k: unmapped(v) for k, v in fixed.items()}, "indices": groups}).result()
            return
        # In the flow's thread, one group after the other: each decodes in DataLoader worker processes, which
        # PyTorch watches from the main thread only; DataLoaders forked from several threads at once failed, rarely.
        for indices in groups:
            embed_shards(**fixed, indices=indices)

    def log(self, text: str) -> None:
        get_run_logger().info("%s", text)
