"""The ``prepare-world`` flow: the mini-web and its tiny base CLIP (the embedded default's first half)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import Preset, run_config, tracked
from react_core import plans
from react_core.overrides import ConfigOverrides
from tasks.stage import PrefectRunner
from tasks.world import base_report


@flow(name="prepare-world", persist_result=True)
def prepare_world(preset: Preset = "demo", config: ConfigOverrides | None = None) -> dict[str, Any]:
    """Generate the mini-web, pretrain the base CLIP on its generic split, report zero-shot accuracy.

    ``preset``: a preset of deployments/; ``config``: the fields to change in it (a full tree changes them all).
    """
    config = run_config(preset, config)
    with tracked(config, "prepare-world") as out:
        out["miniweb"], out["base"] = plans.world_stages(config, PrefectRunner(config, out["mlflow_run_id"]))
        out["report"] = base_report(config.storage, out["base"])
    return out
