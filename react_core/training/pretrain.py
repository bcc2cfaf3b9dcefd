"""Contrastive pretraining of the mini-web's tiny base CLIP (open_clip architecture, our loop).

The base is trained on the *generic* split, where the target tasks' concepts are rare. Trained on
the knowledge base instead (``model.pretrain.split = kb``), the same recipe gives the "oracle": a
model that saw the target concepts plentifully, the ceiling that customization has room to reach.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import open_clip
import torch
from open_clip.loss import ClipLoss

from react_core.config import ModelConfig
from react_core.data import load_labelled_pairs
from react_core.data.datasets import read_vision_dataset
from react_core.evaluation.zeroshot import evaluate_zero_shot
from react_core.miniweb.generate import TASK_NAMES
from react_core.models import model_config, model_file, save_checkpoint
from react_core.models.encode import normalize
from react_core.progress import bar as progress_bar
from react_core.storage import Stage, Storage, join
from react_core.tracking import NullTracker, Tracker
from react_core.training.optim import adamw, cosine_lr, optimizer_step, set_lr

_logger = logging.getLogger(__name__)


def pretrain_base(
    cfg: ModelConfig,
    storage: Storage,
    stage: Stage,
    miniweb_uri: str,
    tracker: Tracker | None = None,
    progress: bool = True,
) -> str:
    """Pretrain ``cfg.name`` from scratch on a mini-web split (``cfg.pretrain``) into ``stage``; returns its URI.

    The stage folder holds ``model.pt`` (open_clip state dict), ``model.json`` (config and metrics)
    and ``_SUCCESS``. Zero-shot accuracy on the mini-web target tasks is measured at the end.
    """
    pc = cfg.pretrain
    tracker = tracker or NullTracker()
    if pc.num_threads:
        torch.set_num_threads(pc.num_threads)
    torch.manual_seed(pc.seed)
    arch = model_config(cfg.name)
    image_size = int(arch["vision_cfg"]["image_size"])
    shards = storage.ls(join(miniweb_uri, pc.split, "shards"), "*.tar")
    images, captions, _, _ = load_labelled_pairs(storage, shards, image_size, pc.max_samples)
    tokenizer = open_clip.get_tokenizer(cfg.name)
    tokens = tokenizer(captions)  # (N, L)
    n = len(captions)
    model = open_clip.create_model(cfg.name, pretrained=None)
    model.train()
    opt = adamw(model.named_parameters(), pc.lr, pc.weight_decay)
    loss_fn = ClipLoss()
    steps_per_epoch = max(1, n // pc.batch_size)
    total = steps_per_epoch * pc.epochs
    gen = torch.Generator().manual_seed(pc.seed)
    step, t0, seen = 0, time.time(), 0
    bar = progress_bar(total, f"pretrain {cfg.name} on {pc.split}", "step", show=progress)
    loss_val = float("nan")
    for epoch in range(pc.epochs):
        perm = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * pc.batch_size : (b + 1) * pc.batch_size]
            lr = cosine_lr(step, pc.lr, pc.warmup_steps, total)
            set_lr(opt, lr)
            img_f, txt_f, scale = model(normalize(images[idx], image_size), tokens[idx])[:3]
            loss = loss_fn(img_f, txt_f, scale)
            optimizer_step(opt, loss, model.logit_scale)
            step += 1
            seen += len(idx)
            loss_val = float(loss.detach())
            bar.update(1)
            if step % 20 == 0 or step == total:
                bar.set_postfix(loss=f"{loss_val:.3f}")
                tracker.log_metrics(
                    {"pretrain/loss": loss_val, "pretrain/lr": lr, "pretrain/samples_per_s": seen / (time.time() - t0)},
                    step=step,
                )
    bar.close()
    wall = time.time() - t0
    metrics: dict[str, Any] = {"train_pairs": n, "steps": total, "wall_s": round(wall, 1), "final_loss": loss_val}
    for task in TASK_NAMES.values():
        if not storage.exists(join(miniweb_uri, "tasks", task, "dataset_info.json")):
            continue  # miniweb-extra, in a world without a third task
        res = evaluate_zero_shot(model, tokenizer, read_vision_dataset(storage, join(miniweb_uri, "tasks", task)))
        metrics[f"{task}.top1"] = res["accuracy"]
        tracker.log_metrics({f"zeroshot/{task}/top1": res["accuracy"]})
    _logger.info("base model trained in %.0f s: %s", wall, metrics)
    save_checkpoint(
        model, storage, model_file(stage.uri), {"model": cfg.name, "stage": stage.config, "metrics": metrics}
    )
    return stage.complete(counts={"train_pairs": n, "steps": total}, metrics=metrics)
