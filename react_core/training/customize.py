"""REACT customization: train gated blocks (or the whole image tower) on retrieved pairs.

The CLIP weights stay frozen in *gated-image* mode (only the gated blocks and ``logit_scale`` learn), so
the customized model starts exactly equal to the base. Two savings come by design:

* the text tower is frozen, so every caption's text feature is computed **once** before training
  instead of at every step;
* the layers before the first gated block see neither trainable weights nor inputs that need grad, so
  autograd records nothing for them.

This loop keeps the downloaded pairs in memory (the mini-web scale); issue #4 brings the streaming,
distributed, resumable loop of the paper's scale.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from tqdm.auto import tqdm

from react_core.config import TrainingConfig
from react_core.data import load_pairs, normalize
from react_core.evaluation.zeroshot import model_image_size
from react_core.models import create_model, save_checkpoint
from react_core.models.gated import add_gated_blocks, gate_values, gated_parameter_count, set_trainable
from react_core.storage import Stage, Storage, join
from react_core.tracking import NullTracker, Tracker
from react_core.training.optim import adamw, cosine_lr, set_lr

_logger = logging.getLogger(__name__)


@torch.no_grad()
def caption_features(
    model: torch.nn.Module, tokenizer: Any, captions: Sequence[str], batch_size: int = 1024
) -> torch.Tensor:
    """(N, D) normalised text features of every caption, computed once by the frozen text tower."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(captions), batch_size):
        out.append(
            F.normalize(model.encode_text(tokenizer(list(captions[i : i + batch_size])).to(device)).float(), dim=-1)
        )
    return torch.cat(out)


def customize(
    model_name: str,
    base_checkpoint: str | None,
    cfg: TrainingConfig,
    storage: Storage,
    shard_uris: Sequence[str],
    stage: Stage,
    tracker: Tracker | None = None,
    progress: bool = True,
) -> str:
    """Train on the pairs in ``shard_uris``; writes ``model.pt`` (+ ``model.json``) into ``stage``."""
    if stage.done:
        return stage.uri
    tracker = tracker or NullTracker()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(cfg.seed)
    model, tokenizer = create_model(model_name, base_checkpoint, storage, device=device)
    gated = add_gated_blocks(model, cfg.gated_layers) if cfg.mode == "gated-image" else []
    n_trainable = set_trainable(model, cfg.mode)
    image_size = model_image_size(model)
    images, captions, _ = load_pairs(storage, shard_uris, image_size)
    model.eval()  # frozen parts behave as at inference (no dropout); gated blocks have none
    text = caption_features(model, tokenizer, captions)  # (N, D), once
    n = len(captions)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total = steps_per_epoch * cfg.epochs
    opt = adamw(model.named_parameters(), cfg.lr, cfg.weight_decay)
    loss_fn = ClipLoss()
    use_amp = device == "cuda" and cfg.precision in ("amp_bf16", "bf16")
    gen = torch.Generator().manual_seed(cfg.seed)
    tracker.log_metrics({"train/pairs": n, "train/trainable_params": n_trainable})
    t0, step, loss_val = time.time(), 0, float("nan")
    bar = tqdm(total=total, desc=f"customize ({cfg.mode})", unit="step", disable=not progress)
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * batch : (b + 1) * batch]
            lr = cosine_lr(step, cfg.lr, cfg.warmup_steps, total)
            set_lr(opt, lr)
            x = normalize(images[idx].to(device), image_size)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                img = F.normalize(model.encode_image(x).float(), dim=-1)  # (B, D)
            loss = loss_fn(img, text[idx.to(device)], model.logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            loss_val = float(loss.detach())
            bar.update(1)
            if step % 10 == 0 or step == total:
                metrics = {
                    "train/loss": loss_val,
                    "train/lr": lr,
                    "train/samples_per_s": step * batch / (time.time() - t0),
                }
                for i, (ga, gd) in gate_values(model).items():
                    metrics[f"gate/attn/{i}"], metrics[f"gate/dense/{i}"] = ga, gd
                tracker.log_metrics(metrics, step=step)
                bar.set_postfix(loss=f"{loss_val:.3f}")
    bar.close()
    wall = time.time() - t0
    info = {
        "model": model_name,
        "base_checkpoint": base_checkpoint,
        "training": cfg.model_dump(mode="json"),
        "gated_layers": gated,
        "gated_params": gated_parameter_count(model) if gated else 0,
        "trainable_params": n_trainable,
        "gates": {str(i): v for i, v in gate_values(model).items()},
        "pairs": n,
        "steps": total,
        "final_loss": loss_val,
        "wall_s": round(wall, 1),
    }
    save_checkpoint(model.cpu(), storage, stage.file("model.pt"), info)
    return stage.complete(
        counts={"pairs": n, "steps": total}, metrics={"final_loss": loss_val, "wall_s": info["wall_s"]}
    )


def checkpoint_of(stage_uri: str) -> str:
    return join(stage_uri, "model.pt")
