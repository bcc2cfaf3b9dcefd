"""Few-shot linear probe with the language-augmented head initialisation (ELEVATER's "text init").

On frozen, L2-normalised image features, a linear head ``100 * f @ W.T + b`` starts from the
zero-shot classifier (``W`` = the class text embeddings, ``b`` = 0), so zero steps are the zero-shot
model and training can only move away from it where the shots say so.

Protocol, per shot count k and seed s:

1. a validation part of the training split is set aside (``val_per_class`` images per class, drawn
   with seed s); the k shots per class are drawn from the rest;
2. for every learning rate x weight decay of the grid, the head is trained full-batch with AdamW on the
   shots and scored on the validation part with the dataset's metric;
3. the best head is scored on the test split.

Mean and standard deviation over seeds are reported per k. Differences from the ELEVATER toolkit: its
hyper-parameter search is larger (more learning rates and weight decays, a two-stage search and
mini-batch SGD over epochs); here the grid is small and training is full-batch on cached features,
which takes seconds per dataset. Multi-label datasets (VOC-2007) train with a per-class sigmoid; k shots
per class then means at least k positives per class.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from react_core.evaluation.metrics import compute
from react_core.evaluation.zeroshot import LOGIT_SCALE


@dataclass(frozen=True)
class ProbeSettings:
    shots: Sequence[int] = (5, 20, 50)
    seeds: Sequence[int] = (0, 1, 2)
    lrs: Sequence[float] = (1e-3, 1e-2, 1e-1)
    weight_decays: Sequence[float] = (0.0, 1e-4, 1e-2)
    steps: int = 200
    val_per_class: int = 4


def _label_sets(targets: torch.Tensor) -> list[np.ndarray]:
    """Indices of the images of each class (multi-class (N,) or multi-label (N, C))."""
    t = targets.numpy()
    if t.ndim == 1:
        return [np.flatnonzero(t == c) for c in range(int(t.max()) + 1)]
    return [np.flatnonzero(t[:, c] > 0) for c in range(t.shape[1])]


def split_shots(
    targets: torch.Tensor, n_classes: int, k: int, val_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(shot indices, validation indices), or None when some class has fewer than k + val images."""
    rng = np.random.default_rng([seed, k])
    sets = _label_sets(targets)
    sets += [np.array([], dtype=np.int64)] * (n_classes - len(sets))
    taken: set[int] = set()
    val, shots = [], []
    for members in sets:
        members = np.array([i for i in rng.permutation(members) if i not in taken], dtype=np.int64)
        if len(members) < k + val_per_class:
            return None
        val += list(members[:val_per_class])
        shots += list(members[val_per_class : val_per_class + k])
        taken.update(members[: val_per_class + k].tolist())
    return np.array(sorted(set(shots))), np.array(sorted(set(val)))


def train_head(
    feats: torch.Tensor,
    targets: torch.Tensor,
    init: torch.Tensor,
    lr: float,
    weight_decay: float,
    steps: int,
    multilabel: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch AdamW on (N, D) features; ``init`` is the (D, C) zero-shot classifier."""
    w = torch.nn.Parameter(init.T.clone())
    logits0 = LOGIT_SCALE * feats @ init
    b = torch.nn.Parameter(-logits0.mean(0) if multilabel else torch.zeros(init.shape[1]))
    opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        logits = LOGIT_SCALE * feats @ w.T + b
        loss = (
            F.binary_cross_entropy_with_logits(logits, targets.float())
            if multilabel
            else F.cross_entropy(logits, targets)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return w.detach(), b.detach()


def probe_scores(feats: torch.Tensor, head: tuple[torch.Tensor, torch.Tensor], multilabel: bool) -> np.ndarray:
    logits = LOGIT_SCALE * feats @ head[0].T + head[1]
    return (torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)).numpy()


def linear_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    init: torch.Tensor,
    metric: str,
    settings: ProbeSettings = ProbeSettings(),
) -> dict[str, Any]:
    """Few-shot probe results per shot count: mean, std, per-seed values and chosen hyper-parameters."""
    (f_tr, y_tr), (f_te, y_te) = train, test
    multilabel = y_tr.ndim == 2
    n_classes = init.shape[1]
    out: dict[str, Any] = {}
    for k in settings.shots:
        runs = []
        for seed in settings.seeds:
            split = split_shots(y_tr, n_classes, k, settings.val_per_class, seed)
            if split is None:
                break
            shots, val = split
            best = None
            for lr in settings.lrs:
                for wd in settings.weight_decays:
                    head = train_head(f_tr[shots], y_tr[shots], init, lr, wd, settings.steps, multilabel)
                    v = compute(metric, y_tr[val].numpy(), probe_scores(f_tr[val], head, multilabel))
                    if best is None or v > best[0]:
                        best = (v, lr, wd, head)
            assert best is not None
            test_value = compute(metric, y_te.numpy(), probe_scores(f_te, best[3], multilabel))
            runs.append({"seed": seed, "value": test_value, "val": best[0], "lr": best[1], "weight_decay": best[2]})
        if len(runs) < len(settings.seeds):
            out[str(k)] = {"skipped": f"fewer than {k} + {settings.val_per_class} training images in some class"}
            continue
        values = [r["value"] for r in runs]
        out[str(k)] = {
            "mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "runs": runs,
        }
    return out
