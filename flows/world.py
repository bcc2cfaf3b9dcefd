"""The ``prepare-world`` flow: the mini-web and its tiny base CLIP (the embedded default's first half)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import Preset, run_config, tracked
from react_core.overrides import ConfigOverrides
from tasks.world import base_report, generate_miniweb, pretrain_base_model


@flow(name="prepare-world", persist_result=True)
def prepare_world(preset: Preset = "demo", config: ConfigOverrides | None = None) -> dict[str, Any]:
    """Generate the mini-web, pretrain the base CLIP on its generic split, report zero-shot accuracy.

    ``preset``: a preset of deployments/; ``config``: the fields to change in it (a full tree changes them all).
    """
    config = run_config(preset, config)
    with tracked(config, "prepare-world") as out:
        parent = out["mlflow_run_id"]
        out["miniweb"] = miniweb = generate_miniweb(config.storage, config.miniweb, config.tracking, parent)
        out["base"] = base = pretrain_base_model(
            config.storage, config.model, config.tracking, miniweb, parent_run_id=parent
        )
        out["report"] = base_report(config.storage, base)
    return out
