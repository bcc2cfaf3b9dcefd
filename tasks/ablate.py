"""The ablate flow's grid, checked and expanded into cells (react_core.ablation); its stages are tasks.stage's."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from react_core.ablation import Grid, load_grid
from react_core.config import ReactConfig
from react_core.preflight import check_ablation


@task(name="ablation-plan", cache_policy=None, persist_result=False)
def plan(config: ReactConfig, grid: str | dict[str, Any], name: str | None = None) -> Grid:
    """The grid (a YAML file or its mapping) checked and expanded into cells; a bad grid fails here, before any
    stage runs, with one line per problem."""
    expanded = load_grid(grid, config, name)
    check_ablation(expanded, name or str(grid) if isinstance(grid, str) else name or "grid")
    get_run_logger().info(
        "grid %s: %d cells x %d seeds (%s)",
        expanded.name,
        len(expanded.cells),
        len(expanded.seeds),
        "; ".join(f"{a}: {len(ids)}" for a, ids in expanded.axes.items()),
    )
    return expanded
