"""Optimiser and learning-rate schedule shared by every training loop (open_clip_train's recipe)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def _no_decay(name: str, p: torch.Tensor) -> bool:
    # Gains, biases, LayerNorm weights, logit_scale, embeddings and gates: no weight decay (open_clip's rule).
    return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name or "alpha" in name


def adamw(named_params: Iterable[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.98, eps 1e-6) with no decay on gains, biases, LayerNorm and ``logit_scale``."""
    decay, no_decay = [], []
    for n, p in named_params:
        if p.requires_grad:
            (no_decay if _no_decay(n, p) else decay).append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup to ``base_lr`` over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * base_lr


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, logit_scale: torch.nn.Parameter) -> None:
    """Backward, step, then clamp the (log) logit scale to [0, ln 100] as CLIP does."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        logit_scale.clamp_(0, math.log(100))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
