"""Tasks of the ablate flow: the grid's plan and the ablation report (react_core.ablation)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from react_core import pipeline, summary
from react_core.ablation import Grid, load_grid
from react_core.config import ReactConfig
from react_core.preflight import check_ablation
from tasks.common import TASK_OPTIONS, storage_of, tracker_of


@task(name="ablation-plan", cache_policy=None, persist_result=False)
def plan(config: ReactConfig, grid: str | dict[str, Any], name: str | None = None) -> Grid:
    """The grid (a YAML file or its mapping) checked and expanded into cells; a bad grid fails here, before any
    stage runs, with one line per problem."""
    expanded = load_grid(grid, config, name)
    check_ablation(expanded, name or str(grid) if isinstance(grid, str) else name or "grid")
    get_run_logger().info(
        "grid %s: %d cells x %d seeds (%s)", expanded.name, len(expanded.cells), len(expanded.seeds),
        "; ".join(f"{a}: {len(ids)}" for a, ids in expanded.axes.items()),
    )  # fmt: skip
    return expanded


@task(name="ablation-report", **TASK_OPTIONS)
def report(
    config: ReactConfig,
    grid: dict[str, Any],
    name: str,
    cells: dict[str, dict[int, dict[str, Any]]],
    base_evals: dict[str, str],
    parent_run_id: str | None = None,
) -> str:
    """``ablation.md`` / ``ablation.json`` / a plot per axis, logged under the flow's MLflow run. ``grid``: the grid's
    mapping (its content is the cache key, not a file path)."""
    st = storage_of(config.storage)
    expanded = load_grid(grid, config, name)
    uri = pipeline.run_ablation_report(st, expanded, cells, base_evals, summary.dataset_roles(config),
                                       tracker_of(config.tracking, st), parent_run_id)  # fmt: skip
    get_run_logger().info("ablation:\n%s", st.read_bytes(f"{uri}/ablation.md").decode())
    return uri
