"""Heads of the cheap rivals: what a rival adds to the base model's zero-shot classifier for its target task.

A rival (``training.mode`` real-prompt, real-linear or cache-head; fitted by :mod:`react_core.training.heads`)
leaves the backbone as it is and changes only how the target task's classes are scored, so every other dataset
sees the base model: a rival forgets nothing, and improves nothing else either.

* **prompts** (REAL-Prompt, Parashar et al., CVPR 2024): the zero-shot classifier built from each class's most
  frequent name in the pretraining captions instead of the task's own name.
* **linear** (REAL-Linear): ``(1 - mix) * zero-shot logits + mix * 100 * f @ W``, ``W`` a linear head trained on
  frozen features of retrieved images, initialised from the text classifier.
* **cache** (Tip-Adapter, Zhang et al., ECCV 2022, training-free): ``zero-shot logits + alpha * 100 * A``, ``A`` the
  per-class mean of ``exp(-beta (1 - f . k))`` over the retrieved images ``k`` of that class. Tip-Adapter sums over
  a few-shot cache with as many keys per class; a retrieved set has thousands, unevenly many per class, so the
  kernel is averaged per class (a sum would let the largest class win) and scaled like CLIP's logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from react_core.evaluation.zeroshot import LOGIT_SCALE
from react_core.models.encode import text_classifier
from react_core.storage import Storage

HEAD_FILE = "head.pt"


@dataclass
class Head:
    kind: Literal["prompts", "linear", "cache"]
    task: str  # the dataset it scores (the retrieval's target task)
    classnames: list[str]  # the task's class names, in its order (checked against the evaluated set's)
    names: list[str] = field(default_factory=list)  # prompts: each class's name in the prompts
    weight: torch.Tensor | None = None  # linear: (D, C)
    mix: float = 0.5
    keys: torch.Tensor | None = None  # cache: (N, D) normalised image features (float16 on disk: half the bytes)
    labels: torch.Tensor | None = None  # cache: (N,) class ids
    alpha: float = 1.0
    beta: float = 5.5

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def save_head(storage: Storage, uri: str, head: Head) -> str:
    with storage.open(uri, "wb") as f:
        torch.save(head.to_dict(), f)
    return uri


def load_head(storage: Storage, uri: str) -> Head:
    with storage.open(uri, "rb") as f:
        return Head(**torch.load(f, map_location="cpu", weights_only=True))  # tensors, names, numbers: no pickle


def head_logits(
    head: Head,
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    templates: list[str],
    features: torch.Tensor,
    classifier: torch.Tensor,
) -> torch.Tensor:
    """(N, C) logits of ``features`` (normalised image features) under the head; ``classifier``: the task's own
    zero-shot classifier (D, C)."""
    if head.kind == "prompts":
        classifier = text_classifier(model, tokenizer, head.names, templates).float().cpu()
    logits = LOGIT_SCALE * features @ classifier
    if head.kind == "linear":
        logits = (1 - head.mix) * logits + head.mix * LOGIT_SCALE * features @ head.weight
    elif head.kind == "cache":
        logits = logits + head.alpha * LOGIT_SCALE * cache_affinity(
            features, head.keys, head.labels, classifier.shape[1], head.beta
        )
    return logits


def cache_affinity(
    features: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, classes: int, beta: float, block: int = 4096
) -> torch.Tensor:
    """(N, C): per class, the mean of ``exp(-beta (1 - cos))`` between each feature and that class's keys (0 for a
    class without keys); blockwise over the features."""
    onehot = F.one_hot(labels.long(), classes).float()  # (K, C)
    keys = keys.float()  # stored in float16
    per_class = onehot.sum(dim=0).clamp(min=1)
    out = []
    for i in range(0, len(features), block):
        a = torch.exp(-beta * (1 - features[i : i + block] @ keys.T))  # (b, K)
        out.append(a @ onehot / per_class)
    return torch.cat(out) if out else features.new_zeros((0, classes))


def scores(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits, dim=1).numpy()
