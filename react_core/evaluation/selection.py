"""Choosing lambda and the replay share without target labels (REACT is zero-shot: the task has none).

Two proxies, from what a run has:

* **target proxy**: zero-shot accuracy on the *held-out retrieved pairs* (``training.holdout``), each image
  labelled with the class it was retrieved for. The labels are noisy (retrieval is), but the noise is the same
  for every candidate, so the proxy ranks candidates as the target task would. Only pairs whose class came from
  their *caption* (the t2t search; ``training.choose.label_modes``) count by default: a t2i pair's class is the
  base model's own reading of its image, which a head fitted on the base's features learns to repeat, so those
  pairs favour heads over models that change the image or text tower (measured: BENCHMARKS.md);
* **retention proxy**: image-text retrieval (mean of R@1/5/10 both ways) on *generic pairs*, knowledge-base
  pairs drawn at random and trained on by no candidate: how much of what the base saw is still matched.

:func:`choose` keeps the candidates whose proxy target gain is at least ``keep`` (0.9) of the largest, and of
those picks the one that loses the least retention: the shape of the goal (keep the gain, lose nothing else).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from react_core.data.datasets import EvalSet, from_tensors
from react_core.evaluation.heads import Head, head_logits
from react_core.evaluation.retrieval import image_text_retrieval
from react_core.evaluation.zeroshot import evaluate_zero_shot, zero_shot


@dataclass(frozen=True)
class Proxies:
    target: float  # zero-shot accuracy on held-out retrieved pairs (retrieval classes as labels)
    retention: float  # mean recall (R@1/5/10, both ways) on generic pairs


def heldout_set(
    images: torch.Tensor, class_ids: torch.Tensor, classnames: Sequence[str], templates: Sequence[str]
) -> EvalSet:
    """The held-out retrieved pairs as a zero-shot set: their classes are those they were retrieved for."""
    keep = class_ids >= 0
    return from_tensors("held-out retrieved pairs", images[keep], class_ids[keep], list(classnames), list(templates))


def generic_pairs_set(images: torch.Tensor, captions: Sequence[str]) -> EvalSet:
    """Generic pairs as a caption set (one caption per image)."""
    data = from_tensors("generic pairs", images, torch.arange(len(images)), [], [])
    data.captions = [[c] for c in captions]
    return data


def proxies(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    heldout: EvalSet,
    generic: EvalSet,
    batch_size: int = 256,
    head: Head | None = None,
) -> Proxies:
    """``head``: a rival's head for the held-out pairs' task, which then scores their classes; the retention proxy
    is the model's alone (a head changes one task's classifier, not what the model matches)."""
    if head is None:
        target = evaluate_zero_shot(model, tokenizer, heldout, batch_size=batch_size)["accuracy"]
    else:
        z = zero_shot(model, tokenizer, heldout, batch_size)
        logits = head_logits(head, model, tokenizer, list(heldout.templates), z.features, z.classifier)
        target = float((logits.argmax(1) == z.targets).float().mean())
    recalls, _ = image_text_retrieval(model, tokenizer, generic, batch_size)
    return Proxies(float(target), sum(recalls.values()) / len(recalls))


def candidate(stage: str, checkpoint: str | None, gate_scale: float = 1.0, head: str | None = None) -> dict[str, Any]:
    """A candidate of the choice, as the choose stage and the plans pass it (plain JSON: a task parameter)."""
    return {"stage": stage, "checkpoint": checkpoint, "gate_scale": float(gate_scale), "head": head}


def choose(candidates: Mapping[str, Proxies], base: Proxies, keep: float = 0.9) -> str:
    """The candidate keeping at least ``keep`` of the largest proxy target gain with the least retention loss
    (ties: the larger target gain)."""
    if not candidates:
        raise ValueError("no candidate to choose from")
    best_gain = max(p.target - base.target for p in candidates.values())
    floor = best_gain - (1 - keep) * abs(best_gain)  # keep x the best gain (and sane when no candidate gains)
    eligible = {k: p for k, p in candidates.items() if p.target - base.target >= floor - 1e-12}
    return max(eligible, key=lambda k: (eligible[k].retention, eligible[k].target))
