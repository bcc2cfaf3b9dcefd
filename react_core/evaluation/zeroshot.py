"""Zero-shot classification as CLIP and ELEVATER do it.

The classifier is the prompt ensemble: every template filled with every class name, each prompt
embedding L2-normalised, averaged per class and normalised again (all prompts embedded in large
batches, once per dataset). Scores are ``softmax(100 * image_features @ classifier)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from react_core.data.datasets import EvalSet, image_features
from react_core.evaluation.metrics import compute
from react_core.models.encode import text_classifier

_logger = logging.getLogger(__name__)

LOGIT_SCALE = 100.0


def scores_of(features: torch.Tensor, classifier: torch.Tensor) -> np.ndarray:
    """(N, C) class probabilities: softmax of 100 x cosine similarity."""
    return torch.softmax(LOGIT_SCALE * features @ classifier, dim=1).numpy()


@dataclass
class ZeroShotPass:
    """One zero-shot pass over a dataset: what the metrics and the few-shot probe both need."""

    classifier: torch.Tensor  # (D, C) float32, CPU
    features: torch.Tensor  # (N, D) L2-normalised image features, CPU
    targets: torch.Tensor  # (N,) class indices or (N, C) multi-hot
    scores: np.ndarray  # (N, C) softmax(100 x cosine)


def zero_shot(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    evalset: EvalSet,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = False,
) -> ZeroShotPass:
    clf = text_classifier(model, tokenizer, evalset.classnames, evalset.templates).float().cpu()
    feats, targets = image_features(model, evalset, batch_size, num_workers, progress)
    return ZeroShotPass(clf, feats, targets, scores_of(feats, clf))


def evaluate_zero_shot(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    evalset: EvalSet,
    metrics: Sequence[str] = ("accuracy",),
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Zero-shot ``metrics`` (names of :mod:`react_core.evaluation.metrics`) on ``evalset``."""
    z = zero_shot(model, tokenizer, evalset, batch_size, num_workers, progress)
    out: dict[str, Any] = {m: compute(m, z.targets.numpy(), z.scores) for m in metrics}
    return {**out, "dataset": evalset.name, "n": len(z.targets), "classes": len(evalset.classnames)}
