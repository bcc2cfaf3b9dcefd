"""The evaluation suite: datasets by name, each with ELEVATER's metric (the report: :mod:`react_core.evaluation.report`).

A dataset name resolves to a folder (``evaluation.locations``, else ``{evaluation.data_root}/{name}``;
the mini-web's tasks live in its stage folder; a URI is its own folder) and to its class names, templates and
metrics (``react_core.registry``: CLIP's names and templates for ImageNet and the 20 ELEVATER datasets;
the dataset's own label map and ``templates.json`` otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from react_core.config import EvaluationConfig
from react_core.data import DatasetError
from react_core.data.datasets import EvalSet, image_features, open_dataset
from react_core.evaluation.heads import Head, head_logits
from react_core.evaluation.heads import scores as head_scores
from react_core.evaluation.linear_probe import ProbeSettings, linear_probe
from react_core.evaluation.metrics import compute
from react_core.evaluation.retrieval import RETRIEVAL_METRICS, image_text_retrieval
from react_core.evaluation.zeroshot import zero_shot
from react_core.registry import elevater_datasets, elevater_metric, elevater_task, imagenet_templates
from react_core.storage import Storage, join

_logger = logging.getLogger(__name__)

IMAGENET = ("imagenet-1k", "imagenet1k", "imagenet")
# Caption sets by name (image-text retrieval): the mini-web's, and COCO's and Flickr30K's Karpathy test splits
# (any folder holding a dataset_*.json is read as one; these names are also known to the report).
CAPTION_SETS = ("miniweb-captions", "coco-captions", "flickr30k-captions")


def is_caption_set(name: str) -> bool:
    return display_name(name) in CAPTION_SETS or display_name(name).endswith("-captions")


def metrics_for(name: str) -> list[str]:
    """The metrics reported for a dataset; the first is its headline (ELEVATER's) metric."""
    if is_caption_set(name):
        return list(RETRIEVAL_METRICS)
    if name in elevater_datasets():
        return [elevater_metric(name)]
    if name in IMAGENET:
        return ["accuracy", "top5"]
    return ["accuracy", "mean_per_class"]


def display_name(name: str) -> str:
    """A dataset's name in reports: a folder given as a path or URI goes by its last component."""
    return name.rstrip("/").rsplit("/", 1)[-1] if ("/" in name or "://" in name) else name


def dataset_uri(cfg: EvaluationConfig, name: str, miniweb_uri: str | None) -> str:
    if name in cfg.locations:
        return cfg.locations[name]
    if name.startswith("miniweb-") and miniweb_uri is not None:
        return join(miniweb_uri, "tasks", name)
    if "://" in name or name.startswith(("/", "./", "../")):
        return name
    if cfg.data_root:
        return join(cfg.data_root, name)
    raise DatasetError(
        f"evaluation dataset {name!r} has no location; fix: set evaluation.data_root (datasets as "
        f"{{data_root}}/{name}) or evaluation.locations.{name}"
    )


def open_eval(storage: Storage, cfg: EvaluationConfig, name: str, miniweb_uri: str | None, split: str) -> EvalSet:
    """The split of dataset ``name``, with the registry's class names and templates where it has them."""
    uri = dataset_uri(cfg, name, miniweb_uri)
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
    miniweb_uri: str | None,
    progress: bool = False,
    head: Head | None = None,
) -> dict[str, Any]:
    """Zero-shot metrics (and the few-shot probe when enabled) of one model on one dataset; image-text retrieval
    (:mod:`react_core.evaluation.retrieval`) for a caption set. ``head``: a rival's head for this dataset
    (:mod:`react_core.evaluation.heads`), which then scores the classes."""
    evalset = open_eval(storage, cfg, name, miniweb_uri, cfg.split)
    if evalset.captions is not None:
        if not is_caption_set(name):
            raise DatasetError(
                f"{evalset.source} is a caption set (it holds dataset_*.json) but {name!r} does not say so; fix: name "
                f"it *-captions in evaluation.tasks (e.g. with evaluation.locations), as {', '.join(CAPTION_SETS)}"
            )
        recalls, n_captions = image_text_retrieval(model, tokenizer, evalset, cfg.batch_size, cfg.num_workers, progress)
        return {
            "dataset": display_name(name),
            "source": evalset.source,
            "split": cfg.split,
            "n": len(evalset),
            "captions": n_captions,
            "metric": RETRIEVAL_METRICS[0],
            "zero_shot": recalls,
        }
    metrics = metrics_for(name)
    z = zero_shot(model, tokenizer, evalset, cfg.batch_size, cfg.num_workers, progress)
    if head is not None:
        if list(head.classnames) != list(evalset.classnames):
            raise DatasetError(
                f"the {head.kind} head of {head.task} has other classes than {evalset.source}; fix: "
                "fit the head for this dataset's class list"
            )
        logits = head_logits(head, model, tokenizer, list(evalset.templates), z.features, z.classifier)
        z.scores = head_scores(logits)
    result: dict[str, Any] = {
        "dataset": display_name(name),
        "source": evalset.source,
        "split": cfg.split,
        "n": len(z.targets),
        "classes": len(evalset.classnames),
        "metric": metrics[0],
        "zero_shot": {m: compute(m, z.targets.numpy(), z.scores) for m in metrics},
    }
    if head is not None:
        result["head"] = head.kind
    if cfg.linear_probe.enabled:
        p = cfg.linear_probe
        try:
            train_set = open_eval(storage, cfg, name, miniweb_uri, p.train_split)
        except DatasetError as exc:  # e.g. an ImageNet val folder alone: zero-shot still counts
            _logger.warning("%s: no few-shot probe (%s)", name, exc)
            result["linear_probe"] = {"skipped": str(exc)}
            return result
        train = image_features(model, train_set, cfg.batch_size, cfg.num_workers, progress)
        settings = ProbeSettings(p.shots, p.seeds, p.lrs, p.weight_decays, p.steps, p.val_per_class)
        result["linear_probe"] = linear_probe(train, (z.features, z.targets), z.classifier, metrics[0], settings)
    return result
