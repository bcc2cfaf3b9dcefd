"""The ``evaluate`` flow: any model on ``evaluation.tasks``, zero-shot (and few-shot probe), one task per dataset."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import Preset, run_config, tracked
from react_core import plans
from react_core.overrides import ConfigOverrides
from tasks import customize as t
from tasks.stage import PrefectRunner
from tasks.world import publish, resolve_model


@flow(name="evaluate", persist_result=True)
def evaluate(
    preset: Preset = "demo", config: ConfigOverrides | None = None, customized: str | None = None
) -> dict[str, Any]:
    """Evaluate ``model`` (``model.pretrained``: a tag, a checkpoint, or the mini-web base) and, when given,
    the ``customized`` checkpoint against it (a URI, or a registered version:
    ``models:/react-miniweb-fine@champion``). Each (model, dataset) pair is its own cached task, so adding a
    dataset to ``evaluation.tasks`` evaluates only that one.

    ``preset``: a preset of deployments/; ``config``: the fields to change in it (a full tree changes them all).
    """
    config = run_config(preset, config)
    t.preflight(config, "evaluate", customized)
    with tracked(config, "evaluate", customized or f"{config.model.name} (base)") as out:
        checkpoint, scale, head = resolve_model(config, customized)
        plans.evaluate_stages(config, PrefectRunner(config, out["mlflow_run_id"]), out, checkpoint, scale, head)
    publish(config, out)  # the table and summary as the flow run's artifacts, and its last log lines
    return out
