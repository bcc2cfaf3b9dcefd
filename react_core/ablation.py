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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from react_core.config import ConfigError, ReactConfig, field_paths
from react_core.config_loading import deep_merge
from react_core.errors import ReactError
from react_core.overrides import apply_overrides

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
        return {
            "name": self.name,
            "seeds": self.seeds,
            "axes": self.axes,
            "labels": self.labels,
            "cells": {c.id: c.overrides for c in self.cells},
        }


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


def slug(text: str) -> str:
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
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
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
                problems.append(
                    f"{name}: axis '{axis}': values {first!r} and {label!r} give the same recipe; "
                    "fix: list each variant once"
                )
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
    return Grid(
        name=Path(name).stem,
        seeds=list(seeds),
        cells=cells,
        axes=grid_axes,
        labels=labels,
        fields=fields,
        description=description,
        doc=dict(doc),
    )


def _check_fields(name: str, where: str, dotted: Mapping[str, Any]) -> list[str]:
    problems = []
    for key in dotted:
        key = str(key)
        if key == "label":
            continue
        if not is_field(key):
            close = difflib.get_close_matches(key, field_paths(), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(
                f"{name}: {where}: {key} is not a config field{hint}; fix: name a field as "
                "`react config show` prints it, dotted (training.mode)"
            )
        elif key.split(".", 1)[0] in SHARED_SECTIONS:
            problems.append(
                f"{name}: {where}: {key} changes what every cell shares (the world, the base model, the "
                "embeddings, the indices); fix: vary retrieval, download, training or evaluation fields, "
                "or run another ablation with a preset that sets it"
            )
    return problems


def _axis_values(name: str, axis: str, spec: Any, problems: list[str]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(label, override layers) of each value of an axis; problems appended, one line each."""
    where = f"axis '{axis}'"
    if not isinstance(spec, Mapping):
        problems.append(
            f"{name}: {where} is {spec!r}; fix: a mapping with values (and field when the values are plain values)"
        )
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
            label = str(value.pop("label", "")) or (
                ", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in value.items()) or "none"
            )
            bad = _check_fields(name, f"{where}, value {label!r}", value)
            problems += bad
            if not bad:
                out.append((label, [dict(fixed), value]))
        elif field_name is None:
            problems.append(
                f"{name}: {where}: value {value!r} without a field; fix: add field: (the dotted config "
                "field the values set), or give each value as a mapping of fields"
            )
        else:
            out.append((_fmt(value), [dict(fixed), {field_name: value}]))
    return out


def _cell(
    name: str, axis: str, label: str, preset: ReactConfig, layers: Sequence[Mapping[str, Any]], problems: list[str]
) -> Cell | None:
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, nest({k: v for k, v in layer.items() if k != "label"}))
    try:
        config = apply_overrides(preset, merged)
    except ConfigError as exc:
        where = "base" if axis == REFERENCE else f"axis '{axis}', value {label!r}"
        for line in str(exc).splitlines():
            problems.append(f"{name}: {where}: {line.split(': ', 1)[-1]}")
        return None
    cell_id = REFERENCE if axis == REFERENCE else f"{slug(axis)}={slug(label)}"
    return Cell(id=cell_id, axis=axis, label=label, overrides=merged, config=config)


# -- results ------------------------------------------------------------------------------------------------
