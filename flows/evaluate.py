"""The ``evaluate`` flow: any model on ``evaluation.tasks``, zero-shot (and few-shot probe), one task per dataset."""

from __future__ import annotations

from typing import Any

from prefect import flow, runtime

from flows.common import evaluate_models, miniweb_and_base
from react_core.config import ReactConfig
from tasks import customize as t
from tasks.world import start_tracking

DEFAULT_CONFIG = ReactConfig()


@flow(name="evaluate")
def evaluate(config: ReactConfig = DEFAULT_CONFIG, customized: str | None = None) -> dict[str, Any]:
    """Evaluate ``model`` (``model.pretrained``: a tag, a checkpoint, or the mini-web base) and, when given,
    the ``customized`` checkpoint against it. Each (model, dataset) pair is its own cached task, so adding a
    dataset to ``evaluation.tasks`` evaluates only that one."""
    t.preflight(config, "evaluate")
    parent = start_tracking(config, "evaluate", runtime.flow_run.id)
    miniweb_uri, base = miniweb_and_base(config, parent)
    checkpoints = {"base": base} if customized is None else {"base": base, "customized": customized}
    evaluated = evaluate_models(
        config.storage, config.model, checkpoints, config.evaluation, config.tracking, miniweb_uri, parent_run_id=parent
    )
    return {
        "evaluate": evaluated,
        "table": t.report(config.storage, evaluated),
        "mlflow_run_id": parent,
        "flow_run_id": runtime.flow_run.id,
    }
