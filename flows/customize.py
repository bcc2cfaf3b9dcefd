"""The ``customize`` flow: REACT end to end for one target task."""

from __future__ import annotations

from typing import Any

from prefect import flow, runtime, unmapped

from react_core.config import ReactConfig
from react_core.training.customize import checkpoint_of
from tasks import customize as t
from tasks.common import embed_task_runner
from tasks.world import generate_miniweb, pretrain_base_model, start_tracking

DEFAULT_CONFIG = ReactConfig()


def world_and_base(config: ReactConfig, parent_run_id: str | None) -> tuple[str | None, str | None]:
    """The mini-web (when any stage reads it) and the base weights: the mini-web base, trained if need be,
    or ``model.pretrained``. Shared by the flows that start from a base model."""
    world = generate_miniweb(config.storage, config.miniweb) if config.uses_miniweb else None
    base_stage = None
    if config.model.pretrained == "miniweb":
        base_stage = pretrain_base_model(
            config.storage, config.model, config.tracking, world, parent_run_id=parent_run_id
        )
    return world, t.resolve_base(config.model, base_stage)


def embed_knowledge_base(
    config: ReactConfig, checkpoint: str | None, world: str | None, parent_run_id: str | None = None
) -> str:
    """The embed stage as one task per group of shards, on a Dask cluster's workers when
    ``knowledge_base.dask_address`` is set (else in this process), then the stage's completion."""
    kb = config.knowledge_base
    groups = t.embed_plan(config.storage, config.model, kb, checkpoint, world)
    with embed_task_runner(kb) as runner:
        fixed = {"storage": config.storage, "model": config.model, "kb": kb, "checkpoint": checkpoint, "world": world}
        runner.map(t.embed_shards, {**{k: unmapped(v) for k, v in fixed.items()}, "indices": groups}).result()
    return t.embed(config.storage, config.model, kb, checkpoint, world, groups, config.tracking, parent_run_id)


@flow(name="customize")
def customize(config: ReactConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """Embed the knowledge base, index it, retrieve for the task's class names, download, train, evaluate."""
    t.preflight(config.model, config.training)
    parent = start_tracking(config, "customize", runtime.flow_run.id)
    world, checkpoint = world_and_base(config, parent)
    embedded = embed_knowledge_base(config, checkpoint, world, parent)
    indexed = t.index(config.storage, config.index, config.retrieval.k, embedded, config.tracking, parent)
    retrieved = t.retrieve(
        config.storage, config.model, checkpoint, config.retrieval, embedded, indexed, world,
        config.tracking, parent_run_id=parent, evaluation=config.evaluation,
    )  # fmt: skip
    downloaded = t.download(config.storage, config.download, retrieved, world, config.tracking, parent)
    trained = t.train(
        config.storage, config.model, checkpoint, config.training, config.tracking, downloaded, parent_run_id=parent
    )
    evaluated = t.evaluate_models(
        config.storage, config.model, {"base": checkpoint, "customized": checkpoint_of(trained)}, config.evaluation,
        config.tracking, world, parent_run_id=parent,
    )  # fmt: skip
    return {
        "miniweb": world,
        "base": checkpoint,
        "embed": embedded,
        "index": indexed,
        "retrieve": retrieved,
        "download": downloaded,
        "train": trained,
        "evaluate": evaluated,
        "table": t.report(config.storage, evaluated),
        "mlflow_run_id": parent,
        "flow_run_id": runtime.flow_run.id,
    }
