"""An ablation's report: each (cell, seed)'s results read from its stages, their mean and spread per cell, the
paper-style tables (``ablation.md``, ``ablation.json``) and a plot per axis (:mod:`react_core.ablation` holds the
grid)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from react_core.ablation import REFERENCE, Grid, slug
from react_core.evaluation.report import headline
from react_core.storage import Stage, Storage
from react_core.tracking import NullTracker, Tracker, metric_key


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


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(
    grid: Grid, results: Mapping[str, Mapping[int, Mapping[str, Any]]], base: Mapping[str, float]
) -> dict[str, Any]:
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
        cost = {
            k: statistics.mean(r[k] for r in per_seed)
            for k in ("pairs", "retrieved", "steps", "trainable_params", "train_s", "data_bytes")
        }
        cells.append(
            {
                "id": cell.id,
                "axis": cell.axis,
                "label": cell.label,
                "overrides": cell.overrides,
                "seeds": [r["seed"] for r in per_seed],
                "mean": mean,
                "sd": sd,
                "delta": delta,
                "cost": cost,
                "per_seed": per_seed,
            }
        )
    return {
        "grid": grid.name,
        "description": grid.description,
        "seeds": grid.seeds,
        "base": dict(base),
        "axes": grid.axes,
        "labels": grid.labels,
        "fields": grid.fields,
        "cells": cells,
    }


def markdown(summary: Mapping[str, Any], roles: Mapping[str, str]) -> str:
    """``ablation.md``: the reference and the base model, then one table per axis (the paper's layout)."""
    by_id = {c["id"]: c for c in summary["cells"]}
    datasets = sorted(summary["base"], key=lambda d: (_ROLE_ORDER.get(roles.get(d, "other"), 9), d))
    head = " | ".join(f"{d} ({roles.get(d, 'other')})" for d in datasets)
    seeds = ", ".join(str(s) for s in summary["seeds"])
    lines = [f"# Ablation `{summary['grid']}`", ""]
    if summary.get("description"):
        lines += [summary["description"], ""]
    lines += [
        (
            f"Zero-shot headline metric per dataset (accuracy; i2t recall@1 for caption sets), mean ± sd over seeds "
            f"{seeds}; in brackets the change from the base model. Cost: pairs trained on, trainable parameters, "
            "training seconds (this machine), MB of image-text data downloaded."
        ),
        "",
    ]
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
    return (
        f"| {label} | " + " | ".join(vals) + f" | {c['pairs']:,.0f} | {c['trainable_params']:,.0f} | "
        f"{c['train_s']:.0f} | {c['data_bytes'] / 1e6:.1f} |"
    )


def axis_figure(summary: Mapping[str, Any], axis: str, roles: Mapping[str, str]):
    """One axis: each target task's metric (left) and each generic task's change from the base (right), mean ±
    sd over seeds per value; the base model's level dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_id = {c["id"]: c for c in summary["cells"]}
    shown = [
        (by_id[i], label) for i, label in zip(summary["axes"][axis], summary["labels"][axis], strict=True) if i in by_id
    ]
    cells, labels = [c for c, _ in shown], [label for _, label in shown]
    x = list(range(len(cells)))
    groups = {
        "target": [d for d in summary["base"] if roles.get(d) == "target"],
        "generic": [d for d in summary["base"] if roles.get(d) == "generic"],
    }
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


def write_ablation(
    storage: Storage,
    stage: Stage,
    grid: Grid,
    results: Mapping[str, Mapping[int, Mapping]],
    base: Mapping[str, float],
    roles: Mapping[str, str],
    tracker: Tracker | None = None,
) -> str:
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
        with storage.open(stage.file(f"{slug(axis)}.png"), "wb") as f:
            fig.savefig(f, format="png", dpi=110)
        tracker.log_figure(fig, f"ablation/{slug(axis)}.png")
        plt.close(fig)
    tracker.log_metrics({metric_key("ablation", c["id"], d): v for c in summary["cells"] for d, v in c["mean"].items()})
    return stage.complete(
        counts={
            "cells": len(summary["cells"]),
            "seeds": len(grid.seeds),
            "trainings": sum(len(c["seeds"]) for c in summary["cells"]),
        },
        axes=list(grid.axes),
    )
