"""Encoding with a CLIP model: what embedding, retrieval, training and evaluation all do the same way.

One place for the model's input (its image size, CLIP's pixel normalisation), where it runs (its device
and the autocast used there) and the encoders built on them: prompts to normalised text embeddings, the
zero-shot text classifier (the prompt ensemble), and batches of images to normalised image features.
The stages compose these with their own readers; this module reads no data and imports only the model
helpers beside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from tqdm.auto import tqdm

from react_core.models.text import encode_text

_MEAN = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)


def model_image_size(model: torch.nn.Module) -> int:
    """The side of the square images the model's image tower takes."""
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def default_device(local_rank: int | None = None) -> str:
    """Where work runs unless told otherwise: the (local rank's) GPU when there is one, else the CPU."""
    if not torch.cuda.is_available():
        return "cpu"
    return "cuda" if local_rank is None else f"cuda:{local_rank}"


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def autocast(device: torch.device | str, dtype: torch.dtype = torch.bfloat16, enabled: bool = True):
    """The mixed-precision context for inference or training on ``device``: bf16 autocast on CUDA, none elsewhere."""
    if torch.device(device).type != "cuda" or not enabled:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def normalize(images_u8: torch.Tensor, image_size: int | None = None) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float normalised with CLIP's mean/std, resized to ``image_size`` if needed."""
    x = images_u8.float().div_(255.0)
    if image_size is not None and x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", align_corners=False).clamp_(0, 1)
    return (x - _MEAN.to(x.device)) / _STD.to(x.device)


@torch.no_grad()
def embed_prompts(
    model: torch.nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], prompts: list[str], batch_size: int = 1024
) -> np.ndarray:
    """(P, D) float32 L2-normalised text embeddings, batched."""
    model.eval()
    device = model_device(model)
    out = []
    for i in range(0, len(prompts), batch_size):
        out.append(F.normalize(encode_text(model, tokenizer(prompts[i : i + batch_size]).to(device)).float(), dim=-1))
    return torch.cat(out).cpu().numpy()


@torch.no_grad()
def text_classifier(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 1024,
) -> torch.Tensor:
    """(D, C) classifier: each prompt embedding normalised, averaged per class, normalised again."""
    prompts = [t.format(name) for name in classnames for t in templates]
    emb = torch.from_numpy(embed_prompts(model, tokenizer, prompts, batch_size))  # (C*T, D), normalised
    per_class = emb.view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1).T.contiguous()


@torch.no_grad()
def encode_images(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    total: int | None = None,
    desc: str = "encode",
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image features (N, D) float32 on the CPU and the targets, from (uint8 images, targets) batches.

    The images are normalised on the model's device and encoded under its autocast (bf16 on CUDA); batches
    from pinned memory are copied without blocking. Returns empty tensors when ``batches`` is empty.
    """
    was_training = model.training
    model.eval()
    device = model_device(model)
    feats, targets = [], []
    bar = tqdm(total=total or None, desc=desc, unit="img", disable=not progress)
    for x, y in batches:
        x = normalize(x.to(device, non_blocking=True))
        with autocast(device):
            f = model.encode_image(x)
        feats.append(F.normalize(f.float(), dim=-1).cpu())
        targets.append(y)
        bar.update(len(x))
    bar.close()
    model.train(was_training)
    if not feats:
        return torch.empty(0), torch.empty(0)
    return torch.cat(feats), torch.cat(targets)
