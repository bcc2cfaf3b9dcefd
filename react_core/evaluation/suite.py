"""The evaluation suite: datasets by name, each with ELEVATER's metric, and the base-vs-customized report.

A dataset name resolves to a folder (``evaluation.locations``, else ``{evaluation.data_root}/{name}``;
the mini-web's tasks live in the world; a URI is its own folder) and to its class names, templates and
metrics (``react_core.registry``: CLIP's names and templates for ImageNet and the 20 ELEVATER datasets;
the dataset's own label map and ``templates.json`` otherwise).
"""

from __future__ import annotations

import io
import logging
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from react_core.config import EvaluationConfig
from react_core.data import DatasetError
from react_core.evaluation.datasets import EvalSet, open_dataset
from react_core.evaluation.linear_probe import ProbeSettings, linear_probe
from react_core.evaluation.metrics import compute
from react_core.evaluation.zeroshot import image_features, zero_shot
from react_core.registry import elevater_datasets, elevater_metric, elevater_task, imagenet_templates
from react_core.storage import Storage, join

_logger = logging.getLogger(__name__)

IMAGENET = ("imagenet-1k", "imagenet1k", "imagenet")


def metrics_for(name: str) -> list[str]:
    """The metrics reported for a dataset; the first is its headline (ELEVATER's) metric."""
    if name in elevater_datasets():
        return [elevater_metric(name)]
    if name in IMAGENET:
        return ["accuracy", "top5"]
    return ["accuracy", "mean_per_class"]


def display_name(name: str) -> str:
    """A dataset's name in reports: a folder given as a path or URI goes by its last component."""
    return name.rstrip("/").rsplit("/", 1)[-1] if ("/" in name or "://" in name) else name


def dataset_uri(cfg: EvaluationConfig, name: str, world: str | None) -> str:
    if name in cfg.locations:
        return cfg.locations[name]
    if name.startswith("miniweb-") and world is not None:
        return join(world, "tasks", name)
    if "://" in name or name.startswith(("/", "./", "../")):
        return name
    if cfg.data_root:
        return join(cfg.data_root, name)
    raise DatasetError(
        f"evaluation dataset {name!r} has no location; fix: set evaluation.data_root (datasets as "
        f"{{data_root}}/{name}) or evaluation.locations.{name}"
    )


def open_eval(storage: Storage, cfg: EvaluationConfig, name: str, world: str | None, split: str) -> EvalSet:
    """The split of dataset ``name``, with the registry's class names and templates where it has them."""
    uri = dataset_uri(cfg, name, world)
    evalset = open_dataset(storage, uri, split, name=display_name(name))
    if name in elevater_datasets():
        task = elevater_task(name)
        return evalset.with_names(task.classnames, task.templates, f"the ELEVATER entry for {name}")
    if name in IMAGENET:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return evalset.with_names(IMAGENET_CLASSNAMES, imagenet_templates(), "ImageNet-1K's class list")
    return evalset


def evaluate_dataset(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    storage: Storage,
    cfg: EvaluationConfig,
    name: str,
    world: str | None,
    progress: bool = False,
) -> dict[str, Any]:
    """Zero-shot metrics (and the few-shot probe when enabled) of one model on one dataset."""
    evalset = open_eval(storage, cfg, name, world, cfg.split)
    metrics = metrics_for(name)
    z = zero_shot(model, tokenizer, evalset, cfg.batch_size, cfg.num_workers, progress)
    result: dict[str, Any] = {
        "dataset": display_name(name),
        "source": evalset.source,
        "split": cfg.split,
        "n": len(z.targets),
        "classes": len(evalset.classnames),
        "metric": metrics[0],
        "zero_shot": {m: compute(m, z.targets.numpy(), z.scores) for m in metrics},
    }
    if cfg.linear_probe.enabled:
        p = cfg.linear_probe
        try:
            train_set = open_eval(storage, cfg, name, world, p.train_split)
        except DatasetError as exc:  # e.g. an ImageNet val folder alone: zero-shot still counts
            _logger.warning("%s: no few-shot probe (%s)", name, exc)
            result["linear_probe"] = {"skipped": str(exc)}
            return result
        train = image_features(model, train_set, cfg.batch_size, cfg.num_workers, progress)
        settings = ProbeSettings(p.shots, p.seeds, p.lrs, p.weight_decays, p.steps, p.val_per_class)
        result["linear_probe"] = linear_probe(train, (z.features, z.targets), z.classifier, metrics[0], settings)
    return result


# -- the report -----------------------------------------------------------------------------------------


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
                    rows.append({**base, "protocol": f"linear-probe-{shots}-shot", "metric": r["metric"],
                                 "value": p["mean"], "std": p["std"], "seeds": len(p["runs"])})  # fmt: skip
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
            table.append({"dataset": f"ELEVATER average ({len(elevater)}/20)", "protocol": protocol,
                          "metric": "mixed", **avg})  # fmt: skip
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


def delta_figure(table: Sequence[Mapping[str, Any]], models: Sequence[str] = ("base", "customized"),
                 protocol: str = "zero-shot"):  # fmt: skip
    """Bars per dataset (headline metric): customized - base, green up and red down; one model: its values."""
    key = "delta" if len(models) == 2 else models[0]
    rows = [r for r in table if r["protocol"] == protocol and key in r
            and (r["metric"] == "mixed" or r["metric"] == metrics_for(r["dataset"])[0])]  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.35 * len(rows) + 1)))
    ax.barh([r["dataset"] for r in rows], [100 * r[key] for r in rows],
            color=["#27ae60" if r[key] >= 0 else "#c0392b" for r in rows])  # fmt: skip
    ax.axvline(0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{models[1]} - {models[0]} (points)" if key == "delta" else f"{models[0]} (%)")
    ax.set_title(f"{protocol}: {'change' if key == 'delta' else 'score'} per dataset")
    fig.tight_layout()
    return fig


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
