"""What a person reads after a customize run, from its stages: each evaluated dataset's role, the evaluation table,
the gain and its price in one line, the retrieval and download in a few, and where the model and the runs are."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from react_core.config import ReactConfig
from react_core.evaluation.suite import is_caption_set
from react_core.models import model_file
from react_core.storage import Storage, join
from react_core.tracking import Tracker

ROLES = ("target", "generic", "retrieval", "other")


def dataset_roles(config: ReactConfig) -> dict[str, str]:
    """Each evaluated dataset's role in a customize run: ``target`` (what retrieval was for), ``generic`` (what
    the base already knew: ``evaluation.generic``), ``retrieval`` (a caption set: image-text retrieval) or
    ``other``."""
    generic = set(config.evaluation.generic_tasks)
    targets = set(config.retrieval.target_tasks)
    return {
        d: "target" if d in targets else "generic" if d in generic else "retrieval" if is_caption_set(d) else "other"
        for d in config.evaluation.tasks
    }


def price_line(rows: Sequence[Mapping[str, Any]]) -> str:
    """``target miniweb-fine +0.615; generic miniweb-generic -0.237; retrieval miniweb-captions -0.05; other
    miniweb-coarse -0.061``: the gain and what it cost (each dataset's headline metric), from summary rows with
    a ``role``; empty when no row has a delta."""
    parts = [
        f"{role} {r['dataset']} {r['delta']:+.3f}"
        for role in ROLES
        for r in rows
        if r.get("role") == role and r.get("delta") is not None
    ]
    return "; ".join(parts)


def table_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """Summary rows (:func:`run_summary`) as an aligned text table, for a log or a terminal; a base-only evaluation
    has no customized or delta column."""
    cols = ["dataset", "role", "metric", "base"]
    if any(r.get("customized") is not None for r in rows):
        cols += ["customized", "delta"]

    def cell(r: Mapping[str, Any], c: str) -> str:
        v = r.get(c)
        return "" if v is None else f"{v:+.4f}" if c == "delta" else f"{v:.4f}" if isinstance(v, float) else str(v)

    cells = [cols] + [[cell(r, c) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def customized_model(result: Mapping[str, Any]) -> str:
    """Where the run's customized model is: its checkpoint, and its head (a ``training.choose`` pick's) beside it."""
    choice = result.get("choice") or {}
    where = choice.get("checkpoint") or model_file(result["train"])
    return f"{where} with the head {choice['head']}/head.pt" if choice.get("head") else where


def run_summary(
    storage: Storage,
    result: Mapping[str, Any],
    tracker: Tracker | None = None,
    roles: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """What a person looks at after a customize run, from its stages: the evaluation table (rows of dataset,
    role (``dataset_roles``), metric, base, customized, delta), where the model and the tracking run are, and a
    markdown summary: the gain and its price (target, generic and other datasets' changes), the retrieval
    (pairs, pairs per class, what the overlap audit removed) and the download."""
    roles = roles or {}
    rows = [
        {
            "dataset": d,
            "role": roles.get(d, "other"),
            "metric": r["metric"],
            "base": round(r["base"], 4),
            "customized": None if r.get("customized") is None else round(r["customized"], 4),
            "delta": None if r.get("delta") is None else round(r["delta"], 4),
        }
        for d, r in sorted(
            (result.get("table") or {}).items(), key=lambda kv: (ROLES.index(roles.get(kv[0], "other")), kv[0])
        )
    ]
    links: dict[str, str] = {}
    if result.get("train"):
        links["customized model"] = customized_model(result)
    run_id = result.get("mlflow_run_id")
    if tracker is not None and run_id:
        links["MLflow run"] = tracker.run_url(run_id) or run_id
    if (reg := result.get("registered")) and reg.get("version"):
        links["registered version"] = (
            tracker.model_registry.version_url(reg["name"], str(reg["version"])) if tracker else None
        ) or f"models:/{reg['name']}/{reg['version']}"
    lines = []
    if price := price_line(rows):
        lines += [f"**Gain and its price** (zero-shot, customized - base): {price}.", ""]
    if result.get("retrieve"):
        m = storage.stage_manifest(result["retrieve"])
        c, per_class = m["counts"], storage.read_json(join(result["retrieve"], "class_counts.json"))
        names = m["config"].get("tasks") or [m["config"].get("task")]
        split = "; ".join(f"{t} {c[f'pairs.{t}']:,}" for t in names if f"pairs.{t}" in c)
        lines += [
            (
                f"**Retrieval** for {', '.join(f'`{t}`' for t in names)}: {c.get('pairs', 0):,} pairs"
                + (f" ({split})" if split else "")
                + f" from {c.get('prompts', 0):,} prompts over "
                f"{c.get('classes', 0)} classes; the overlap audit checked {c.get('overlap.checked', 0):,} and "
                f"removed {c.get('overlap.duplicates', 0):,} near-duplicates of evaluation images."
            ),
            "",
            "| class | pairs |",
            "|---|---|",
        ]
        lines += [f"| {name} | {n:,} |" for name, n in sorted(per_class.items(), key=lambda kv: -kv[1])]
    if result.get("download"):
        d = storage.stage_manifest(result["download"])["counts"]
        lines += [
            "",
            (
                f"**Download**: {d.get('successes', 0):,} of {d.get('count', 0):,} images "
                f"({100 * d.get('success_rate', 0):.1f}%)."
            ),
        ]
    return {"table": rows, "links": links, "markdown": "\n".join(lines)}
