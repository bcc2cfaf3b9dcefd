"""Fitting the cheap rivals' heads (:mod:`react_core.evaluation.heads`) on the retrieved pairs: no backbone step.

* real-prompt: nothing to fit; the names come from :func:`react_core.knowledge.names.most_frequent_names`.
* real-linear: the base model's image features of the retrieved pairs (class-balanced: each class's pairs weigh
  as much in the loss as any other's), a linear head initialised from the text classifier and trained full-batch
  with cross-entropy on ``100 * f @ W`` (``training.rivals.linear_steps`` AdamW steps, seeded).
* cache-head: the features and their classes are the cache; nothing is trained.

With ``training.holdout`` the blend with zero-shot (``mix``; ``alpha``, ``beta``) is chosen on the held-out
retrieved pairs (:func:`choose_blend`), as the rivals' papers tune it on validation data; else it is
``training.rivals``' value.

The head stage writes ``head.pt`` and ``head.json`` (pairs, steps, trainable parameters, seconds: the cost columns
of the ablation's rival table).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from react_core.config import TrainingConfig
from react_core.data import DatasetError, held_out, load_labelled_pairs, training_subset
from react_core.evaluation.heads import HEAD_FILE, Head, head_logits, save_head
from react_core.evaluation.zeroshot import LOGIT_SCALE
from react_core.models import create_model
from react_core.models.encode import default_device, model_device, model_image_size, normalize, text_classifier
from react_core.models.gated import set_gate_scale
from react_core.storage import Stage, Storage


@torch.no_grad()
def _features(model: torch.nn.Module, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    size, device = model_image_size(model), model_device(model)
    out = [
        F.normalize(model.encode_image(normalize(images[i : i + batch].to(device), size)).float(), dim=-1).cpu()
        for i in range(0, len(images), batch)
    ]
    return torch.cat(out)


def fit_linear(
    features: torch.Tensor, labels: torch.Tensor, init: torch.Tensor, steps: int, lr: float, seed: int
) -> torch.Tensor:
    """(D, C) weights from ``init`` (the text classifier), class-balanced cross-entropy, full batch."""
    torch.manual_seed(seed)
    w = init.clone().requires_grad_(True)
    counts = torch.bincount(labels, minlength=init.shape[1]).float()
    weights = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    opt = torch.optim.AdamW([w], lr=lr, weight_decay=0.0)
    for _ in range(steps):
        loss = F.cross_entropy(LOGIT_SCALE * features @ w, labels, weight=weights * len(counts) / weights.sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach()


MIXES = (0.0, 0.25, 0.5, 0.75, 1.0)  # real-linear: the trained head's weight against zero-shot's
CACHE_GRID = tuple((beta, alpha) for beta in (1.0, 5.5, 20.0) for alpha in (1.0, 3.0, 10.0))  # Tip-Adapter's search


def choose_blend(head: Head, features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor) -> dict:
    """Set the head's blend with zero-shot (real-linear: ``mix``; cache-head: ``alpha``, ``beta``) to the value most
    accurate on held-out retrieved pairs (their retrieval classes as labels: no target label is read), the first of
    equals (closest to zero-shot); returns the choice and its held-out accuracy. REAL and Tip-Adapter tune these
    on labelled validation data, which a REACT user does not have."""

    def accuracy() -> float:
        return float((head_logits(head, None, None, [], features, classifier).argmax(1) == labels).float().mean())

    options = [{"mix": m} for m in MIXES] if head.kind == "linear" else [{"beta": b, "alpha": a} for b, a in CACHE_GRID]
    scored = []
    for option in options:
        for k, v in option.items():
            setattr(head, k, v)
        scored.append((accuracy(), option))
    best_acc, best = max(scored, key=lambda t: t[0])  # max keeps the first of equals
    for k, v in best.items():
        setattr(head, k, v)
    return {**best, "holdout_accuracy": round(best_acc, 4), "holdout_pairs": len(labels)}


def fit_head(
    model_name: str,
    checkpoint: str | None,
    cfg: TrainingConfig,
    storage: Storage,
    task: str,
    classnames: Sequence[str],
    templates: Sequence[str],
    shards: Sequence[str],
    stage: Stage,
    names: Sequence[str] | None = None,
    gate_scale: float = 1.0,
) -> str:
    """Fit the head of ``cfg.mode`` for ``task`` on the features of ``checkpoint`` (a customized model's: at
    ``gate_scale``) and write it (``head.pt``, ``head.json``) into ``stage``."""
    t0 = time.time()
    classnames = list(classnames)
    head = Head(kind="prompts", task=task, classnames=classnames)
    pairs = steps = trainable = 0
    chosen: dict[str, float] = {}
    if cfg.mode == "real-prompt":
        head.names = list(names or classnames)
    else:
        if not shards:
            raise DatasetError(f"no retrieved pairs to fit the {cfg.mode} head on; fix: check the download stage")
        model, tokenizer = create_model(model_name, checkpoint, storage, device=default_device())
        set_gate_scale(model, gate_scale)
        model.eval()
        all_images, _, keys, all_labels = load_labelled_pairs(storage, shards, model_image_size(model))
        classed = (all_labels >= 0) & (all_labels < len(classnames))
        keep = torch.from_numpy(training_subset(keys, cfg.subset, cfg.holdout)) & classed
        held = torch.from_numpy(held_out(keys, cfg.holdout)) & classed
        features, labels = _features(model, all_images[keep]), all_labels[keep]
        pairs = len(labels)
        classifier = text_classifier(model, tokenizer, classnames, list(templates)).float().cpu()
        r = cfg.rivals
        if cfg.mode == "real-linear":
            head = Head(
                kind="linear",
                task=task,
                classnames=classnames,
                mix=r.linear_mix,
                weight=fit_linear(features, labels, classifier, r.linear_steps, r.linear_lr, cfg.seed),
            )
            steps, trainable = r.linear_steps, classifier.numel()
        else:
            head = Head(
                kind="cache",
                task=task,
                classnames=classnames,
                keys=features.half(),
                labels=labels,
                alpha=r.cache_alpha,
                beta=r.cache_beta,
            )
        if bool(held.any()):  # training.holdout: the blend chosen on held-out retrieved pairs, no target label
            chosen = choose_blend(head, _features(model, all_images[held]), all_labels[held], classifier)
    save_head(storage, stage.file(HEAD_FILE), head)
    summary = {
        "kind": head.kind,
        "mode": cfg.mode,
        "task": task,
        "pairs": pairs,
        "steps": steps,
        "trainable_params": trainable,
        "wall_s": round(time.time() - t0, 2),
        "names": head.names,
        "chosen_on_holdout": chosen,
    }
    storage.write_json(stage.file("head.json"), summary)
    return stage.complete(counts={"pairs": pairs, "trainable_params": trainable}, metrics={"wall_s": summary["wall_s"]})
