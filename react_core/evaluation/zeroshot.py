"""Zero-shot classification: a prompt-ensemble text classifier and batched image scoring."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from react_core.data import ClassificationSet, normalize

_logger = logging.getLogger(__name__)


@torch.no_grad()
def text_classifier(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """(D, C) classifier: each prompt embedding normalised, averaged per class, normalised again."""
    weights = []
    for name in classnames:
        tokens = tokenizer([t.format(name) for t in templates]).to(device)
        emb = F.normalize(model.encode_text(tokens).float(), dim=-1)  # (T, D)
        weights.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(weights, dim=1)  # (D, C)


@torch.no_grad()
def image_features(
    model: torch.nn.Module, images_u8: torch.Tensor, image_size: int, batch_size: int = 256, device: str = "cpu"
) -> torch.Tensor:
    """(N, D) L2-normalised image features of uint8 images."""
    out = []
    for i in range(0, len(images_u8), batch_size):
        x = normalize(images_u8[i : i + batch_size].to(device), image_size)
        out.append(F.normalize(model.encode_image(x).float(), dim=-1))
    return torch.cat(out)


def model_image_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


@torch.no_grad()
def evaluate_zero_shot(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    data: ClassificationSet,
    batch_size: int = 256,
    device: str = "cpu",
) -> dict[str, Any]:
    """Top-1 and mean-per-class accuracy of zero-shot classification on ``data``."""
    was_training = model.training
    model.eval()
    clf = text_classifier(model, tokenizer, data.classnames, data.templates, device)
    feats = image_features(model, data.images, model_image_size(model), batch_size, device)
    pred = (feats @ clf).argmax(dim=1).cpu()
    correct = (pred == data.labels).float()
    per_class = torch.stack([correct[data.labels == c].mean() for c in range(len(data.classnames))])
    model.train(was_training)
    return {
        "dataset": data.name,
        "top1": float(correct.mean()),
        "mean_per_class": float(per_class.nanmean()),
        "n": len(correct),
        "classes": len(data.classnames),
        "chance": 1.0 / len(data.classnames),
    }
