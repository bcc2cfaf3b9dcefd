"""The ``ablate`` flow: the paper's ablations (and any grid of recipes) on one knowledge base, with seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.common import PRESETS, Preset, run_config, tracked
from react_core import plans
from react_core.overrides import ConfigOverrides
from tasks import ablate as a
from tasks import customize as t
from tasks.stage import PrefectRunner

GRIDS = PRESETS / "grids"  # grids a deployment names (deployments/grids/*.yaml)


def grid_file(grid: str) -> str:
    """A grid's file: a path as given, else a grid of deployments/grids/ by name."""
    return grid if Path(grid).suffix in (".yaml", ".yml") else str(GRIDS / f"{grid}.yaml")


@flow(name="ablate", persist_result=True)
def ablate(
    preset: Preset = "demo", grid: str | dict[str, Any] = "small", config: ConfigOverrides | None = None
) -> dict[str, Any]:
    """Run every cell of an ablation grid for every seed on the preset's base model, embeddings and indices, and
    write the paper-style tables (``ablation.md``, ``ablation.json``) and a plot per axis.

    ``grid``: a grid of deployments/grids/ by name (``small``), a YAML file, or the grid itself as a mapping;
    ``config``: the fields to change in the preset (every cell starts from it).
    """
    config = run_config(preset, config)
    expanded = a.plan(config, grid_file(grid) if isinstance(grid, str) else grid)
    t.preflight(config)
    with tracked(config, "ablate") as out:
        plans.ablate_stages(config, expanded, PrefectRunner(config, out["mlflow_run_id"]), out)
    return out
