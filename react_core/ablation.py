"""The paper's ablations as one grid: which of REACT's choices matter for a task, with seeds and spreads.

A **grid** (YAML, ``deployments/grids/*.yaml``) names the seeds, the overrides every cell shares (``base``), and
the axes. An axis is a list of variants of the reference recipe, one factor at a time (as the paper's tables):

.. code-block:: yaml

    seeds: [0, 1, 2]
    base: {training.epochs: 5}               # every cell: the preset with these fields changed
    axes:
      tuning:                                # scalar values: one field
        field: training.mode
        values: [gated-image, locked-text, full, locked-image, gated-image+text]
      size:
        field: training.subset
        values: [0.25, 0.5, 1.0]
        with: {training.steps: 120}          # the axis's cells also change these (fixed steps, as the paper)
      filtering:                             # mapping values: several fields at once (label optional)
        values:
          - {label: none}
          - {retrieval.min_pair_score: 0.3}
          - {label: top 50 %, retrieval.pair_score_top: 0.5}

:func:`load_grid` checks all of it against the config tree before anything runs (one line per problem, naming
the grid file, the axis and the fix) and expands it into cells: the *reference* (preset + base), then each
axis's values. Cells change only what the stages after the index read (retrieval, download, training,
evaluation): the base model, the embeddings and the indices are the preset's, shared by every cell. Two cells
with the same config are one (the stages' cache makes them one computation anyway).

:func:`write_ablation` turns the cells' results (per seed: every evaluated dataset's headline metric, the
training cost and the data it needed) into ``ablation.json``, ``ablation.md`` (one table per axis, mean ± sd over
seeds, generic retention as the change from the base model) and one plot per axis.
"""

from __future__ import annotations

import difflib
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from react_core.config import ConfigError, ReactConfig, _deep_merge, apply_overrides
from react_core.errors import ReactError
from react_core.storage import Stage, Storage
from react_core.tracking import NullTracker, Tracker, metric_key

GRID_KEYS = ("description", "seeds", "base", "axes")
AXIS_KEYS = ("field", "values", "with")
# What every cell shares: the world, the base model, the embedded knowledge base and its indices.
SHARED_SECTIONS = ("storage", "model", "miniweb", "knowledge_base", "index", "tracking")
REFERENCE = "reference"


class GridError(ReactError, ValueError):
    """An ablation grid was rejected; one line per problem, naming the grid file, the axis and the fix."""


@dataclass(frozen=True)
class Cell:
    """One variant of the recipe: its axis, its label there, the fields it changes and the config it runs."""

    id: str
    axis: str
    label: str
    overrides: dict[str, Any]
    config: ReactConfig


@dataclass
class Grid:
    name: str
    seeds: list[int]
    cells: list[Cell]  # the reference first, then every axis's values, in the file's order
    axes: dict[str, list[str]] = field(default_factory=dict)  # axis -> its cells' ids, in order
    labels: dict[str, list[str]] = field(default_factory=dict)  # axis -> its values' labels, in the same order
    fields: dict[str, str] = field(default_factory=dict)  # axis -> the field it varies (or "several")
    description: str = ""
    doc: dict[str, Any] = field(default_factory=dict)  # the grid as read (what a task re-reads it from)

    def cell(self, cell_id: str) -> Cell:
        return next(c for c in self.cells if c.id == cell_id)

    def describe(self) -> dict[str, Any]:
        """What identifies the grid (the ablation stage's config): its cells' overrides and the seeds."""
        return {"name": self.name, "seeds": self.seeds, "axes": self.axes, "labels": self.labels,
                "cells": {c.id: c.overrides for c in self.cells}}  # fmt: skip


def is_field(path: str) -> bool:
    """Whether ``path`` (``training.mode``) names a field of the config tree."""
    model: type[BaseModel] = ReactConfig
    parts = path.split(".")
    for i, part in enumerate(parts):
        f = model.model_fields.get(part)
        if f is None:
            return False
        ann = f.annotation
        if i < len(parts) - 1:
            if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                return False
            model = ann
    return True


def _all_fields(model: type[BaseModel] = ReactConfig, prefix: str = "") -> list[str]:
    out = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _all_fields(ann, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """``{"training.mode": "full"}`` -> ``{"training": {"mode": "full"}}``."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = str(key).split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "+".join(_fmt(v) for v in value)
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]+", "-", text).strip("-") or "x"


def load_grid(source: str | Path | Mapping[str, Any], preset: ReactConfig, name: str | None = None) -> Grid:
    """Read and check a grid against ``preset`` (the config every cell starts from) and expand it into cells.

    Raises:
        GridError: every problem, one line each: ``{grid file}: axis '{axis}'...: what is wrong; fix: ...``.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = name or str(path)
        if not path.is_file():
            raise GridError(f"{name}: no such grid file; fix: pass a grid YAML such as deployments/grids/small.yaml")
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise GridError(f"{name}: not valid YAML: {' '.join(str(exc).split())}") from None
    else:
        doc, name = dict(source), name or "grid"
    if not isinstance(doc, Mapping):
        raise GridError(f"{name}: expected a mapping with seeds, base and axes; fix: see deployments/grids/small.yaml")
    problems: list[str] = []
    for key in doc:
        if key not in GRID_KEYS:
            close = difflib.get_close_matches(str(key), GRID_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"{name}: '{key}' is not a grid key{hint}; fix: use {', '.join(GRID_KEYS)}")
    seeds = doc.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            for s in seeds):  # fmt: skip
        problems.append(f"{name}: seeds is {seeds!r}; fix: a non-empty list of integers, e.g. [0, 1, 2]")
        seeds = [0]
    base = doc.get("base") or {}
    if not isinstance(base, Mapping):
        problems.append(f"{name}: base is {base!r}; fix: a mapping of dotted fields, e.g. {{training.epochs: 5}}")
        base = {}
    problems += _check_fields(name, "base", base)
    axes = doc.get("axes")
    if not isinstance(axes, Mapping) or not axes:
        problems.append(
            f"{name}: no axes; fix: add axes, e.g. axes: {{k: {{field: training.gated_layers, values: [1, 2]}}}}"
        )
        axes = {}
    reference = _cell(name, REFERENCE, REFERENCE, preset, [base], problems)
    cells = [reference] if reference else []
    grid_axes: dict[str, list[str]] = {}
    labels: dict[str, list[str]] = {}
    fields: dict[str, str] = {}
    for axis, spec in axes.items():
        ids: list[str] = []
        for label, layers in _axis_values(name, str(axis), spec, problems):
            cell = _cell(name, str(axis), label, preset, [base, *layers], problems)
            if cell is None:
                continue
            # the same recipe as another cell (often the reference): one computation, a row in each table
            same = next((c for c in cells if c.config == cell.config), cell)
            if same.id in ids:
                first = labels[str(axis)][ids.index(same.id)] if str(axis) in labels else same.label
                problems.append(f"{name}: axis '{axis}': values {first!r} and {label!r} give the same recipe; "
                                "fix: list each variant once")  # fmt: skip
                continue
            if same is cell:
                cells.append(cell)
            ids.append(same.id)
            labels.setdefault(str(axis), []).append(label)
        grid_axes[str(axis)] = ids
        labels.setdefault(str(axis), [])
        fields[str(axis)] = spec.get("field", "several") if isinstance(spec, Mapping) else "several"
    if problems:
        raise GridError("\n".join(dict.fromkeys(problems)))
    description = str(doc.get("description", "")).strip()
    return Grid(name=Path(name).stem, seeds=list(seeds), cells=cells, axes=grid_axes, labels=labels, fields=fields,
                description=description, doc=dict(doc))  # fmt: skip


def _check_fields(name: str, where: str, dotted: Mapping[str, Any]) -> list[str]:
    problems = []
    for key in dotted:
        key = str(key)
        if key == "label":
            continue
        if not is_field(key):
            close = difflib.get_close_matches(key, _all_fields(), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{name}: {where}: {key} is not a config field{hint}; fix: name a field as "
                            "`react config show` prints it, dotted (training.mode)")  # fmt: skip
        elif key.split(".", 1)[0] in SHARED_SECTIONS:
            problems.append(f"{name}: {where}: {key} changes what every cell shares (the world, the base model, the "
                            "embeddings, the indices); fix: vary retrieval, download, training or evaluation fields, "
                            "or run another ablation with a preset that sets it")  # fmt: skip
    return problems


def _axis_values(name: str, axis: str, spec: Any, problems: list[str]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(label, override layers) of each value of an axis; problems appended, one line each."""
    where = f"axis '{axis}'"
    if not isinstance(spec, Mapping):
        problems.append(f"{name}: {where} is {spec!r}; fix: a mapping with values (and field when the values are "
                        "plain values)")  # fmt: skip
        return []
    for key in spec:
        if key not in AXIS_KEYS:
            problems.append(f"{name}: {where}: '{key}' is not an axis key; fix: use {', '.join(AXIS_KEYS)}")
    values = spec.get("values")
    if not isinstance(values, list) or not values:
        problems.append(f"{name}: {where} has no values; fix: list at least one value under values")
        return []
    fixed = spec.get("with") or {}
    if not isinstance(fixed, Mapping):
        problems.append(f"{name}: {where}: with is {fixed!r}; fix: a mapping of dotted fields")
        fixed = {}
    field_name = spec.get("field")
    bad = _check_fields(name, where, {**fixed, **({field_name: None} if field_name is not None else {})})
    if bad:  # the values cannot be tried against a field that is not there
        problems += bad
        return []
    out = []
    for value in values:
        if isinstance(value, Mapping):
            value = dict(value)
            label = str(value.pop("label", "")) or (", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}"
                                                              for k, v in value.items()) or "none")  # fmt: skip
            bad = _check_fields(name, f"{where}, value {label!r}", value)
            problems += bad
            if not bad:
                out.append((label, [dict(fixed), value]))
        elif field_name is None:
            problems.append(f"{name}: {where}: value {value!r} without a field; fix: add field: (the dotted config "
                            "field the values set), or give each value as a mapping of fields")  # fmt: skip
        else:
            out.append((_fmt(value), [dict(fixed), {field_name: value}]))
    return out


def _cell(name: str, axis: str, label: str, preset: ReactConfig, layers: Sequence[Mapping[str, Any]],
          problems: list[str]) -> Cell | None:  # fmt: skip
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _deep_merge(merged, nest({k: v for k, v in layer.items() if k != "label"}))
    try:
        config = apply_overrides(preset, merged)
    except ConfigError as exc:
        where = "base" if axis == REFERENCE else f"axis '{axis}', value {label!r}"
        for line in str(exc).splitlines():
            problems.append(f"{name}: {where}: {line.split(': ', 1)[-1]}")
        return None
    cell_id = REFERENCE if axis == REFERENCE else f"{_slug(axis)}={_slug(label)}"
    return Cell(id=cell_id, axis=axis, label=label, overrides=merged, config=config)


# -- results ------------------------------------------------------------------------------------------------


def cell_result(storage: Storage, uris: Mapping[str, Any]) -> dict[str, Any]:
    """One (cell, seed): every evaluated dataset's headline metric, what training cost and the data it needed.

    ``uris``: ``retrieve``, ``download``, ``train`` (stage URIs) and ``evals`` (dataset -> its eval stage)."""
    head = f"{uris['train']}/head.json"  # a rival's head stage, else a train stage
    summary = storage.read_json(head if storage.exists(head) else f"{uris['train']}/model.json")
    files = storage.top_files(uris["download"]) if uris.get("download") else {}  # real-prompt: no download
    retrieved = storage.stage_manifest(uris["retrieve"])["counts"]["pairs"] if uris.get("retrieve") else 0
    return {
        "metrics": headline(storage, uris["evals"]),
        "pairs": int(summary["pairs"]),
        "retrieved": int(retrieved),
        "steps": int(summary["steps"]),
        "trainable_params": int(summary["trainable_params"]),
        "train_s": float(summary["wall_s"]),
        "data_bytes": int(sum(size for n, size in files.items() if n.endswith(".tar"))),
    }


def headline(storage: Storage, evals: Mapping[str, str]) -> dict[str, float]:
    """dataset -> its headline zero-shot metric (accuracy, or i2t recall@1 for a caption set)."""
    out = {}
    for dataset, uri in evals.items():
        r = storage.read_json(f"{uri}/result.json")
        out[dataset] = float(r["zero_shot"][r["metric"]])
    return out


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(grid: Grid, results: Mapping[str, Mapping[int, Mapping[str, Any]]],
              base: Mapping[str, float]) -> dict[str, Any]:  # fmt: skip
    """``ablation.json``: per cell, mean and sd over seeds of each dataset's metric and its change from the base,
    and the cost (pairs, trainable parameters, training seconds, bytes of data)."""
    cells = []
    for cell in grid.cells:
        per_seed = [dict(results[cell.id][s], seed=s) for s in grid.seeds if s in results.get(cell.id, {})]
        if not per_seed:
            continue
        mean, sd, delta = {}, {}, {}
        for dataset in per_seed[0]["metrics"]:
            mean[dataset], sd[dataset] = _mean_sd([r["metrics"][dataset] for r in per_seed])
            if dataset in base:
                delta[dataset] = mean[dataset] - base[dataset]
        cost = {k: statistics.mean(r[k] for r in per_seed) for k in ("pairs", "retrieved", "steps", "trainable_params",
                                                                      "train_s", "data_bytes")}  # fmt: skip
        cells.append({"id": cell.id, "axis": cell.axis, "label": cell.label, "overrides": cell.overrides,
                      "seeds": [r["seed"] for r in per_seed], "mean": mean, "sd": sd, "delta": delta, "cost": cost,
                      "per_seed": per_seed})  # fmt: skip
    return {"grid": grid.name, "description": grid.description, "seeds": grid.seeds, "base": dict(base),
            "axes": grid.axes, "labels": grid.labels, "fields": grid.fields, "cells": cells}  # fmt: skip


def markdown(summary: Mapping[str, Any], roles: Mapping[str, str]) -> str:
    """``ablation.md``: the reference and the base model, then one table per axis (the paper's layout)."""
    by_id = {c["id"]: c for c in summary["cells"]}
    datasets = sorted(summary["base"], key=lambda d: (_ROLE_ORDER.get(roles.get(d, "other"), 9), d))
    head = " | ".join(f"{d} ({roles.get(d, 'other')})" for d in datasets)
    seeds = ", ".join(str(s) for s in summary["seeds"])
    lines = [f"# Ablation `{summary['grid']}`", ""]
    if summary.get("description"):
        lines += [summary["description"], ""]
    lines += [(f"Zero-shot headline metric per dataset (accuracy; i2t recall@1 for caption sets), mean ± sd over seeds "
              f"{seeds}; in brackets the change from the base model. Cost: pairs trained on, trainable parameters, "
              "training seconds (this machine), MB of image-text data downloaded."), ""]  # fmt: skip
    cols = f"| variant | {head} | pairs | trainable | train s | data MB |"
    sep = "|---|" + "---|" * (len(datasets) + 4)
    lines += [
        "## Reference and base",
        "",
        cols,
        sep,
        "| base model | " + " | ".join(f"{summary['base'][d]:.3f}" for d in datasets) + " | – | – | – | – |",
    ]
    if REFERENCE in by_id:
        lines.append(_row("reference", by_id[REFERENCE], datasets))
    for axis, ids in summary["axes"].items():
        what = summary.get("fields", {}).get(axis, "")
        lines += ["", f"## {axis}" + (f" (`{what}`)" if what and what != "several" else ""), "", cols, sep]
        for i, label in zip(ids, summary["labels"][axis], strict=True):
            if i in by_id:  # a value that is another axis's cell (the reference, mostly) says so
                lines.append(_row(label if by_id[i]["axis"] == axis else f"{label} (= {i})", by_id[i], datasets))
    return "\n".join(lines) + "\n"


_ROLE_ORDER = {"target": 0, "generic": 1, "retrieval": 2, "other": 3}


def _row(label: str, cell: Mapping[str, Any], datasets: Sequence[str]) -> str:
    vals = []
    for d in datasets:
        spread = f" ± {cell['sd'][d]:.3f}" if len(cell["seeds"]) > 1 else ""
        vals.append(f"{cell['mean'][d]:.3f}{spread} ({cell['delta'][d]:+.3f})" if d in cell["mean"] else "–")
    c = cell["cost"]
    return (f"| {label} | " + " | ".join(vals) + f" | {c['pairs']:,.0f} | {c['trainable_params']:,.0f} | "
            f"{c['train_s']:.0f} | {c['data_bytes'] / 1e6:.1f} |")  # fmt: skip


def axis_figure(summary: Mapping[str, Any], axis: str, roles: Mapping[str, str]):
    """One axis: each target task's metric (left) and each generic task's change from the base (right), mean ±
    sd over seeds per value; the base model's level dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_id = {c["id"]: c for c in summary["cells"]}
    shown = [(by_id[i], label) for i, label in zip(summary["axes"][axis], summary["labels"][axis], strict=True)
             if i in by_id]  # fmt: skip
    cells, labels = [c for c, _ in shown], [label for _, label in shown]
    x = list(range(len(cells)))
    groups = {"target": [d for d in summary["base"] if roles.get(d) == "target"],
              "generic": [d for d in summary["base"] if roles.get(d) == "generic"]}  # fmt: skip
    panels = [(k, v) for k, v in groups.items() if v] or [("other", sorted(summary["base"]))]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), squeeze=False)
    for ax, (role, datasets) in zip(axes[0], panels, strict=True):
        for d in datasets:
            mean = [c["mean"].get(d, math.nan) for c in cells]
            sd = [c["sd"].get(d, 0.0) for c in cells]
            line = ax.errorbar(x, mean, yerr=sd, marker="o", capsize=3, label=d)
            ax.axhline(summary["base"][d], ls="--", lw=0.8, color=line[0].get_color())
        ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{role} (dashed: base model)", fontsize=9)
        ax.set_ylabel("zero-shot")
        ax.legend(fontsize=7)
    fig.suptitle(f"{summary['grid']}: {axis} ({len(summary['seeds'])} seed(s), mean ± sd)", fontsize=10)
    fig.tight_layout()
    return fig


def write_ablation(storage: Storage, stage: Stage, grid: Grid, results: Mapping[str, Mapping[int, Mapping]],
                   base: Mapping[str, float], roles: Mapping[str, str], tracker: Tracker | None = None) -> str:  # fmt: skip
    """``ablation.json``, ``ablation.md`` and ``{axis}.png`` into ``stage``; logged through ``tracker``: the files as
    artifacts, each cell's means as metrics (``ablation/{cell}/{dataset}``)."""
    import matplotlib.pyplot as plt

    tracker = tracker or NullTracker()
    summary = summarise(grid, results, base)
    text = markdown(summary, roles)
    storage.write_json(stage.file("ablation.json"), summary)
    storage.write_bytes(stage.file("ablation.md"), text.encode())
    tracker.log_dict(summary, "ablation.json")
    tracker.log_text(text, "ablation.md")
    for axis in grid.axes:
        fig = axis_figure(summary, axis, roles)
        with storage.open(stage.file(f"{_slug(axis)}.png"), "wb") as f:
            fig.savefig(f, format="png", dpi=110)
        tracker.log_figure(fig, f"ablation/{_slug(axis)}.png")
        plt.close(fig)
    tracker.log_metrics({metric_key("ablation", c["id"], d): v for c in summary["cells"] for d, v in c["mean"].items()})
    return stage.complete(counts={"cells": len(summary["cells"]), "seeds": len(grid.seeds),
                                  "trainings": sum(len(c["seeds"]) for c in summary["cells"])},
                          axes=list(grid.axes))  # fmt: skip
