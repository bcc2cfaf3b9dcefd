"""The evaluation report: ``metrics.json`` rows, the base / customized / delta table, its markdown and plot.

:func:`write_report` writes them into the report stage and logs them through the tracking interface.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from react_core.evaluation.suite import metrics_for
from react_core.registry import elevater_datasets
from react_core.storage import Stage, Storage
from react_core.tracking import NullTracker, Tracker, metric_key


def report_rows(results: Mapping[str, Sequence[Mapping[str, Any]]], checkpoints: Mapping[str, str | None]) -> list:
    """``metrics.json``: one row per (model, dataset, protocol, metric)."""
    rows = []
    for which, per_dataset in results.items():
        for r in per_dataset:
            base = {"model": which, "checkpoint": checkpoints.get(which), "dataset": r["dataset"], "n": r["n"]}
            for metric, value in r["zero_shot"].items():
                rows.append({**base, "protocol": "zero-shot", "metric": metric, "value": value})
            for shots, p in (r.get("linear_probe") or {}).items():
                if isinstance(p, dict) and "mean" in p:
                    rows.append(
                        {
                            **base,
                            "protocol": f"linear-probe-{shots}-shot",
                            "metric": r["metric"],
                            "value": p["mean"],
                            "std": p["std"],
                            "seeds": len(p["runs"]),
                        }
                    )
    return rows


def comparison(rows: Sequence[Mapping[str, Any]], models: Sequence[str] = ("base", "customized")) -> list[dict]:
    """Per (dataset, protocol, metric): each model's value and the delta; an ELEVATER average row per protocol."""
    keyed: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["dataset"], r["protocol"], r["metric"])
        keyed.setdefault(key, {"dataset": key[0], "protocol": key[1], "metric": key[2]})[r["model"]] = r["value"]
    table = list(keyed.values())
    headline = {(r["dataset"], r["protocol"]): r for r in table if r["metric"] == metrics_for(r["dataset"])[0]}
    for protocol in sorted({p for _, p in headline}):
        elevater = [r for (d, p), r in headline.items() if p == protocol and d in elevater_datasets()]
        if elevater and all(all(m in r for m in models) for r in elevater):
            avg = {m: statistics.mean(r[m] for r in elevater) for m in models}
            table.append(
                {"dataset": f"ELEVATER average ({len(elevater)}/20)", "protocol": protocol, "metric": "mixed", **avg}
            )
    for r in table:
        if len(models) == 2 and all(m in r for m in models):
            r["delta"] = r[models[1]] - r[models[0]]
    return table


def markdown_table(table: Sequence[Mapping[str, Any]], models: Sequence[str] = ("base", "customized")) -> str:
    cols = ["dataset", "protocol", "metric", *models, *(["delta"] if len(models) == 2 else [])]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        cells = [f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        if len(models) == 2 and isinstance(r.get("delta"), float):
            cells[-1] = f"{r['delta']:+.4f}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def delta_figure(
    table: Sequence[Mapping[str, Any]], models: Sequence[str] = ("base", "customized"), protocol: str = "zero-shot"
):
    """Bars per dataset (headline metric): customized - base, green up and red down; one model: its values."""
    key = "delta" if len(models) == 2 else models[0]
    rows = [
        r
        for r in table
        if r["protocol"] == protocol
        and key in r
        and (r["metric"] == "mixed" or r["metric"] == metrics_for(r["dataset"])[0])
    ]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.35 * len(rows) + 1)))
    ax.barh(
        [r["dataset"] for r in rows],
        [100 * r[key] for r in rows],
        color=["#27ae60" if r[key] >= 0 else "#c0392b" for r in rows],
    )
    ax.axvline(0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{models[1]} - {models[0]} (points)" if key == "delta" else f"{models[0]} (%)")
    ax.set_title(f"{protocol}: {'change' if key == 'delta' else 'score'} per dataset")
    fig.tight_layout()
    return fig


def headline(storage: Storage, evals: Mapping[str, str]) -> dict[str, float]:
    """dataset -> its headline zero-shot metric (accuracy, or i2t recall@1 for a caption set)."""
    out = {}
    for dataset, uri in evals.items():
        r = storage.read_json(f"{uri}/result.json")
        out[dataset] = float(r["zero_shot"][r["metric"]])
    return out


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def gate_scale_note(per_model: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """A line under the table naming each model evaluated with its gated blocks scaled (``evaluation.gate_scale``
    below 1), so nobody reads a lambda-0.7 column as the model as trained; empty when there is none."""
    scaled = {m: sorted({r["gate_scale"] for r in results if "gate_scale" in r}) for m, results in per_model.items()}
    parts = [f"{m}: gate scale (lambda) {', '.join(f'{v:g}' for v in v_)}" for m, v_ in scaled.items() if v_]
    return ("\n\n" + "; ".join(parts) + " (1 = as trained, 0 = the base model)") if parts else ""


def write_report(
    storage: Storage,
    stage: Stage,
    per_model: Mapping[str, Sequence[Mapping[str, Any]]],
    checkpoints: Mapping[str, str | None],
    tracker: Tracker | None = None,
) -> str:
    """``metrics.json``, ``table.md``, ``table.json`` and ``deltas.png`` from each model's per-dataset results,
    logged to ``tracker``; completes ``stage`` with the headline table (zero-shot, each dataset's main metric)."""
    tracker = tracker or NullTracker()
    rows = report_rows(per_model, checkpoints)
    models = tuple(per_model)
    table = comparison(rows, models)
    markdown = markdown_table(table, models) + gate_scale_note(per_model)
    storage.write_json(stage.file("metrics.json"), rows)
    storage.write_bytes(stage.file("table.md"), (markdown + "\n").encode())
    storage.write_json(stage.file("table.json"), table)
    for r in rows:
        tracker.log_metrics({metric_key(r["protocol"], r["dataset"], r["metric"], r["model"]): r["value"]})
    for r in table:
        if "delta" in r:
            tracker.log_metrics({metric_key(r["protocol"], r["dataset"], r["metric"], "delta"): r["delta"]})
    tracker.log_dict(rows, "metrics.json")
    tracker.log_dict({"table": markdown}, "evaluation_table.json")
    fig = delta_figure(table, models)
    tracker.log_figure(fig, "deltas.png")
    storage.write_bytes(stage.file("deltas.png"), figure_png(fig))
    headline = {
        r["dataset"]: {"metric": r["metric"], **{m: r[m] for m in (*models, "delta") if m in r}}
        for r in table
        if r["protocol"] == "zero-shot" and r["metric"] == metrics_for(r["dataset"])[0]
    }
    return stage.complete(counts={"rows": len(rows)}, table=headline)
