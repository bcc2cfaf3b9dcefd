"""The ``ablate`` flow: the paper's ablations (and any grid of recipes) on one knowledge base, with seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.common import (
    PRESETS,
    Preset,
    embed_knowledge_base,
    evaluate_datasets,
    miniweb_and_base,
    retrieve_and_train,
    run_config,
    tracked,
)
from react_core.config import RIVAL_MODES
from react_core.models import model_file
from react_core.overrides import ConfigOverrides
from tasks import ablate as a
from tasks import customize as t

GRIDS = PRESETS / "grids"  # grids a deployment names (deployments/grids/*.yaml)


def grid_file(grid: str) -> str:
    """A grid's file: a path as given, else a grid of deployments/grids/ by name."""
    return grid if Path(grid).suffix in (".yaml", ".yml") else str(GRIDS / f"{grid}.yaml")


@flow(name="ablate", persist_result=True)
def ablate(preset: Preset = "demo", grid: str | dict[str, Any] = "small", config: ConfigOverrides | None = None
           ) -> dict[str, Any]:  # fmt: skip
    """Run every cell of an ablation grid for every seed on the preset's base model, embeddings and indices, and
    write the paper-style tables (``ablation.md``, ``ablation.json``) and a plot per axis.

    ``grid``: a grid of deployments/grids/ by name (``small``), a YAML file, or the grid itself as a mapping;
    ``config``: the fields to change in the preset (every cell starts from it).
    """
    config = run_config(preset, config)
    plan = a.plan(config, grid_file(grid) if isinstance(grid, str) else grid)
    t.preflight(config)
    with tracked(config, "ablate") as out:
        parent = out["mlflow_run_id"]
        out["miniweb"], out["base"] = miniweb_uri, checkpoint = miniweb_and_base(config, parent)
        out["embed"] = embedded = embed_knowledge_base(config, checkpoint, miniweb_uri, parent)
        track = {"tracking": config.tracking, "parent_run_id": parent}
        base_evals = evaluate_datasets(config.storage, config.model, checkpoint, config.evaluation, miniweb_uri,
                                       "base", **track)  # fmt: skip
        cells: dict[str, dict[int, dict[str, Any]]] = {}
        for cell in plan.cells:  # one after the other: each training takes every core of a CPU worker
            for seed in plan.seeds:
                c = cell.config.model_copy(update={"training": cell.config.training.model_copy(update={"seed": seed})})
                uris = retrieve_and_train(c, checkpoint, miniweb_uri, embedded, parent, label=f"{cell.id} seed {seed}")
                if c.training.mode in RIVAL_MODES:  # the base model with the rival's head on the target task
                    uris["evals"] = evaluate_datasets(c.storage, c.model, checkpoint, c.evaluation, miniweb_uri,
                                                      f"{cell.id} seed {seed}", head_uri=uris["train"], **track)  # fmt: skip
                else:
                    uris["evals"] = evaluate_datasets(c.storage, c.model, model_file(uris["train"]), c.evaluation,
                                                      miniweb_uri, f"{cell.id} seed {seed}",
                                                      c.evaluation.customized_scale(), **track)  # fmt: skip
                cells.setdefault(cell.id, {})[seed] = uris
        out["ablation"] = a.report(config, plan.doc, plan.name, cells, base_evals, parent)
    return out
