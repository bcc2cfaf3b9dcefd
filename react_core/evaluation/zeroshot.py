"""Zero-shot classification as CLIP and ELEVATER do it, and the image-feature pass it shares with the probe.

The classifier is the prompt ensemble: every template filled with every class name, each prompt
embedding L2-normalised, averaged per class and normalised again (all prompts embedded in large
batches, once per dataset). Scores are ``softmax(100 * image_features @ classifier)``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from react_core.data import normalize
from react_core.evaluation.datasets import EvalSet
from react_core.evaluation.metrics import compute

_logger = logging.getLogger(__name__)

LOGIT_SCALE = 100.0


def model_image_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def text_classifier(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 1024,
) -> torch.Tensor:
    """(D, C) classifier: each prompt embedding normalised, averaged per class, normalised again."""
    from react_core.knowledge.retrieve import embed_prompts

    prompts = [t.format(name) for name in classnames for t in templates]
    emb = torch.from_numpy(embed_prompts(model, tokenizer, prompts, batch_size))  # (C*T, D), normalised
    per_class = emb.view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1).T.contiguous()


def loader(evalset: EvalSet, image_size: int, batch_size: int, num_workers: int, device: torch.device):
    workers = num_workers if not evalset.shards else min(num_workers, len(evalset.shards))
    return torch.utils.data.DataLoader(
        evalset.torch_dataset(image_size),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )


@torch.no_grad()
def image_features(
    model: torch.nn.Module,
    evalset: EvalSet,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image features (N, D) float32 on the CPU and the targets, in loader order.

    Decoding runs in ``num_workers`` processes while the model encodes; on CUDA the batches come from
    pinned memory, are normalised on the device and encoded under bf16 autocast.
    """
    was_training = model.training
    model.eval()
    device = _device(model)
    feats, targets = [], []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    bar = tqdm(total=len(evalset) or None, desc=f"encode {evalset.name}", unit="img", disable=not progress)
    for x, y in loader(evalset, model_image_size(model), batch_size, num_workers, device):
        x = normalize(x.to(device, non_blocking=True))
        with autocast:
            f = model.encode_image(x)
        feats.append(F.normalize(f.float(), dim=-1).cpu())
        targets.append(y)
        bar.update(len(x))
    bar.close()
    model.train(was_training)
    if not feats:
        raise ValueError(f"{evalset.source}: the dataset yielded no images")
    return torch.cat(feats), torch.cat(targets)


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
