"""The ``prepare-world`` flow: the mini-web and its tiny base CLIP (the embedded default's first half)."""

from __future__ import annotations

from typing import Any

from prefect import flow, runtime

from react_core.config import ReactConfig
from tasks.world import base_report, generate_miniweb, pretrain_base_model, start_tracking

DEFAULT_CONFIG = ReactConfig()


@flow(name="prepare-world")
def prepare_world(config: ReactConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """Generate the mini-web, pretrain the base CLIP on its generic split, report zero-shot accuracy."""
    parent = start_tracking(config, "prepare-world", runtime.flow_run.id)
    miniweb = generate_miniweb(config.storage, config.miniweb)
    base = pretrain_base_model(config.storage, config.model, config.tracking, miniweb, parent_run_id=parent)
    return {
        "miniweb": miniweb,
        "base": base,
        "report": base_report(config.storage, base),
        "mlflow_run_id": parent,
        "flow_run_id": runtime.flow_run.id,
    }
