"""The ``customize`` flow: REACT end to end for one target task."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import Preset, run_config, tracked
from react_core import plans
from react_core.overrides import ConfigOverrides
from tasks import customize as t
from tasks.stage import PrefectRunner
from tasks.world import publish, register_model


@flow(name="customize", persist_result=True)
def customize(preset: Preset = "demo", config: ConfigOverrides | None = None) -> dict[str, Any]:
    """Embed the knowledge base, index it, retrieve for the task's class names, download, train, evaluate.

    ``preset``: a preset of deployments/; ``config``: the fields to change in it (a full tree changes them all).
    """
    config = run_config(preset, config)
    t.preflight(config)
    with tracked(config, "customize") as out:
        plans.customize_stages(config, PrefectRunner(config, out["mlflow_run_id"]), out)
        out["registered"] = register_model(config, out, preset)
    publish(config, out)  # after the parent run ends: the table is the run's last log lines
    return out
