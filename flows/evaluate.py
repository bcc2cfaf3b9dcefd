"""The ``evaluate`` flow: any model on ``evaluation.tasks``, zero-shot (and few-shot probe), one task per dataset."""

from __future__ import annotations

from typing import Any

from prefect import flow, runtime

from react_core.config import ReactConfig
from tasks import customize as t
from tasks.world import generate_miniweb, pretrain_base_model, start_tracking

DEFAULT_CONFIG = ReactConfig()


@flow(name="evaluate")
def evaluate(config: ReactConfig = DEFAULT_CONFIG, customized: str | None = None) -> dict[str, Any]:
    """Evaluate ``model`` (``model.pretrained``: a tag, a checkpoint, or the mini-web base) and, when given,
    the ``customized`` checkpoint against it. Each (model, dataset) pair is its own cached task, so adding a
    dataset to ``evaluation.tasks`` evaluates only that one."""
    parent = start_tracking(config, "evaluate", runtime.flow_run.id)
    world = generate_miniweb(config.storage, config.miniweb) if config.uses_miniweb else None
    base_stage = None
    if config.model.pretrained == "miniweb":
        base_stage = pretrain_base_model(config.storage, config.model, config.tracking, world, parent_run_id=parent)
    base = t.resolve_base(config.model, base_stage)
    checkpoints = {"base": base} if customized is None else {"base": base, "customized": customized}
    evaluated = t.evaluate_models(
        config.storage, config.model, checkpoints, config.evaluation, config.tracking, world, parent_run_id=parent
    )
    return {
        "evaluate": evaluated,
        "table": t.report(config.storage, evaluated),
        "mlflow_run_id": parent,
        "flow_run_id": runtime.flow_run.id,
    }
