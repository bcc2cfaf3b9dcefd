"""ELEVATER's image-classification metrics, computed as its toolkit computes them.

Every metric takes the targets and a score matrix ``(N, C)`` (probabilities, or any scores whose order
per class is what matters): multi-class targets are ``(N,)`` class indices, multi-label targets
``(N, C)`` in {0, 1}.

* ``accuracy``: top-1 accuracy; ``top5``: the label among the 5 best-scored classes.
* ``mean_per_class``: per-class recall averaged over the classes present in the targets
  (scikit-learn's ``balanced_accuracy_score``, as ELEVATER).
* ``roc_auc``: area under the ROC curve; of the positive class's score for two classes (Hateful Memes),
  one-vs-rest otherwise.
* ``map_11point``: PASCAL VOC 2007's 11-point interpolated average precision per class, averaged over
  classes; the interpolation walks scikit-learn's precision-recall curve exactly as ELEVATER's toolkit
  (``vision_evaluation``'s ``MeanAveragePrecisionNPointsEvaluator``), so the numbers are comparable.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import balanced_accuracy_score, precision_recall_curve, roc_auc_score


def _arrays(targets: object, scores: object) -> tuple[np.ndarray, np.ndarray]:
    t, s = np.asarray(targets), np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or len(s) != len(t):
        raise ValueError(f"scores must be (N, C) with N = len(targets) = {len(t)}; got shape {s.shape}")
    return t, s


def topk_accuracy(targets: object, scores: object, k: int = 1) -> float:
    t, s = _arrays(targets, scores)
    if k >= s.shape[1]:
        return 1.0
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    return float((top == t[:, None]).any(axis=1).mean())


def accuracy(targets: object, scores: object) -> float:
    t, s = _arrays(targets, scores)
    return float((s.argmax(axis=1) == t).mean())


def top5(targets: object, scores: object) -> float:
    return topk_accuracy(targets, scores, 5)


def mean_per_class(targets: object, scores: object) -> float:
    t, s = _arrays(targets, scores)
    return float(balanced_accuracy_score(t, s.argmax(axis=1)))


def roc_auc(targets: object, scores: object) -> float:
    t, s = _arrays(targets, scores)
    if s.shape[1] == 2:
        return float(roc_auc_score(t, s[:, 1]))
    return float(roc_auc_score(t, s / s.sum(axis=1, keepdims=True), multi_class="ovr"))


def average_precision_n_points(target: np.ndarray, score: np.ndarray, n_points: int = 11) -> float:
    """One class's n-point interpolated AP: mean over recall levels r of the best precision at recall >= r."""
    precision, recall, _ = precision_recall_curve(target, score)  # recall decreasing, ends at (p=1, r=0)
    levels = np.linspace(1, 0, n_points)
    interp, i, best = np.empty(n_points), 0, 0.0
    for j, level in enumerate(levels):
        while i < len(recall) and level <= recall[i]:
            best = max(best, precision[i])
            i += 1
        interp[j] = best
    return float(interp.mean())


def map_11point(targets: object, scores: object) -> float:
    t, s = _arrays(targets, scores)
    if t.ndim != 2 or t.shape != s.shape:
        raise ValueError(f"map_11point needs multi-label targets of shape {s.shape}; got {t.shape}")
    return float(np.mean([average_precision_n_points(t[:, c], s[:, c]) for c in range(s.shape[1])]))


METRICS: dict[str, Callable[[object, object], float]] = {
    "accuracy": accuracy,
    "top5": top5,
    "mean_per_class": mean_per_class,
    "roc_auc": roc_auc,
    "map_11point": map_11point,
}


def compute(metric: str, targets: object, scores: object) -> float:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    return METRICS[metric](targets, scores)
