"""The customization trainer: gated-image or locked-text training of a CLIP image tower (and, for the paper's
tuning-strategy ablation, the modes that train the text tower: full, locked-image, gated-image+text).

One function, :func:`train`, runs in every training process: alone, or as one rank of ``torchrun``
(DDP; gloo on CPUs, NCCL on GPUs). What makes it cheap and exact:

* **No text tower** in REACT's modes (gated-image, locked-text). It is frozen, so the captions' features are
  computed once per dataset (:func:`react_core.training.customize.caption_features`) and training holds only the
  image tower and ``logit_scale``; the text weights are not even in memory. The modes that train the text tower
  hold it and encode the captions' tokens each step, each at its own length (:mod:`react_core.models.text`).
* **No autograd before the first gated block** (gated-image): those layers have no trainable weight and
  their input needs no grad, so autograd records nothing there; no gradient checkpointing is needed.
* **Deterministic data order**: the permutation of epoch ``e`` is a function of (seed, e), each
  sample's augmentation a function of (seed, e, sample), and the global batch is split evenly over
  ranks. A run resumed at step s sees exactly the batches an uninterrupted run sees, and N processes
  see the same global batches as one.
* **Checkpoints** every ``checkpoint_every`` steps (trainable weights + optimiser), atomic, last N kept.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from react_core.config import AugmentConfig, ConfigError, TrainingConfig
from react_core.data import DatasetError, load_labelled_pairs, training_subset
from react_core.models import create_model, model_file, save_checkpoint
from react_core.models.encode import autocast, default_device, model_image_size, normalize
from react_core.models.gated import (
    GATED_MODES,
    TEXT_MODES,
    add_gated_blocks,
    gate_values,
    gated_parameter_count,
    set_gate_scale,
    set_trainable,
)
from react_core.models.text import encode_text
from react_core.progress import bar as progress_bar
from react_core.secrets import public
from react_core.storage import Storage, join
from react_core.training import checkpoints
from react_core.training.losses import contrastive_loss
from react_core.training.optim import adamw, cosine_lr, optimizer_step, set_lr

_logger = logging.getLogger(__name__)

METRICS_FILE = "train_metrics.json"


OPTIONS_ENV = "REACT_STORAGE_OPTIONS"  # JSON storage options (with credentials) of a torchrun worker


@dataclass
class TrainJob:
    """Everything a training process needs; JSON-serialisable, so ``torchrun`` workers can read it."""

    model_name: str
    base_checkpoint: str | None
    training: dict[str, Any]
    storage_root: str
    storage_options: dict[str, Any]
    shards: list[str]
    text_features: str  # URI of the caption-features .npy (float16, rows in shard order)
    stage_uri: str
    replay_shards: list[str] = field(default_factory=list)  # training.replay: the replay sample's download
    replay_text_features: str = ""

    @property
    def cfg(self) -> TrainingConfig:
        return TrainingConfig.model_validate(self.training)

    def to_json(self) -> str:
        """The job as written to ``job.json``: storage options without credentials (those reach a torchrun worker
        through its environment, :data:`OPTIONS_ENV`)."""
        return json.dumps({**self.__dict__, "storage_options": public(self.storage_options)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainJob:
        return cls(**json.loads(text))


# -- data -------------------------------------------------------------------------------------------


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


class RankBatches(Sampler[list[tuple[int, int]]]):
    """This rank's share of every global batch, from ``start_step`` on: lists of (epoch, sample index).

    Samples ``0..n-1`` are the retrieved pairs: an epoch is one pass over them in the permutation of
    (seed, epoch). With ``replay_per_rank`` > 0, each rank's share also has that many replayed pairs, indices
    ``n..n+n_replay-1``, read from a stream of their own (a permutation of the replay pool per pass, seeded apart
    from the retrieved pairs'): the batch holds exactly ``replay_per_rank * world`` of them, every step.
    """

    def __init__(
        self,
        n: int,
        global_batch: int,
        epochs: int,
        seed: int,
        rank: int,
        world: int,
        start_step: int,
        n_replay: int = 0,
        replay_per_rank: int = 0,
        total: int | None = None,
    ):
        self.n, self.epochs, self.seed = n, epochs, seed
        self.rank, self.world, self.start = rank, world, start_step
        self.n_replay, self.replay = n_replay, replay_per_rank if n_replay else 0
        self.local = global_batch // world - self.replay  # retrieved pairs per rank and step
        self.batch = self.local * world
        self.steps_per_epoch = n // self.batch
        # training.steps: that many steps, the last pass cut short; else whole passes
        self.total = self.steps_per_epoch * epochs if total is None else total

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm_epoch, perm = -1, None
        replay_pass, replay_perm = -1, None
        for step in range(self.start, self.total):
            epoch, b = divmod(step, self.steps_per_epoch)
            if epoch != perm_epoch:  # once per epoch: at 10M pairs a permutation is not free
                perm_epoch, perm = epoch, epoch_permutation(self.n, self.seed, epoch)
            lo = b * self.batch + self.rank * self.local
            items = [(epoch, int(i)) for i in perm[lo : lo + self.local]]
            first = (step * self.world + self.rank) * self.replay  # this rank's place in the replay stream
            for p in range(first, first + self.replay):
                k, j = divmod(p, self.n_replay)
                if k != replay_pass:
                    replay_pass, replay_perm = k, epoch_permutation(self.n_replay, self.seed + 7_919, k)
                items.append((epoch, self.n + int(replay_perm[j])))
            yield items


def build_augment(cfg: AugmentConfig, image_size: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """uint8 (3, H, W) -> uint8 (3, S, S): random resized crop, horizontal flip, RandAugment."""
    if not cfg.enabled:
        return None
    from torchvision.transforms import v2

    ops: list[Any] = [v2.RandomResizedCrop(image_size, scale=tuple(cfg.crop_scale), antialias=True)]
    if cfg.hflip > 0:
        ops.append(v2.RandomHorizontalFlip(cfg.hflip))
    if cfg.randaugment_ops > 0:
        ops.append(v2.RandAugment(num_ops=cfg.randaugment_ops, magnitude=cfg.randaugment_magnitude))
    return v2.Compose(ops)


class PairDataset(Dataset):
    """Pairs in memory; item (epoch, i) -> (uint8 image, caption feature, class id, replayed?). Rows from
    ``n_retrieved`` on are replayed pairs (:class:`RankBatches`)."""

    def __init__(
        self,
        images: torch.Tensor,
        text: torch.Tensor,
        labels: torch.Tensor,
        augment,
        seed: int,
        n_retrieved: int | None = None,
    ):
        self.images, self.text, self.labels, self.augment, self.seed = images, text, labels, augment, seed
        self.n_retrieved = len(images) if n_retrieved is None else n_retrieved

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]):
        epoch, i = item
        img = self.images[i]
        if self.augment is not None:
            with torch.random.fork_rng(devices=[]):  # the same crop for (seed, epoch, i), in any process
                torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + i)
                img = self.augment(img)
        return img, self.text[i], self.labels[i], i >= self.n_retrieved


# -- model ------------------------------------------------------------------------------------------


class ImageTower(nn.Module):
    """What customization trains and runs: the image tower and ``logit_scale`` of a CLIP model, and the text tower
    (``text``: the CLIP model without its image tower) in the modes that train it."""

    def __init__(self, visual: nn.Module, logit_scale: nn.Parameter, text: nn.Module | None = None) -> None:
        super().__init__()
        self.visual = visual
        self.logit_scale = logit_scale
        self.text = text

    def forward(
        self, x: torch.Tensor, tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(image features, logit scale, the captions' features when ``tokens`` are given); features normalised."""
        img = F.normalize(self.visual(x).float(), dim=-1)
        txt = None if tokens is None else F.normalize(encode_text(self.text, tokens.long()).float(), dim=-1)
        return img, self.logit_scale.exp(), txt


def build_tower(job: TrainJob, device: str) -> tuple[ImageTower, list[int], int, Callable | None]:
    """The base model's image tower with gated blocks added and the mode's trainable parameters; the text tower
    and the tokenizer when the mode trains the text tower (else None)."""
    cfg = job.cfg
    storage = Storage(job.storage_root, job.storage_options)
    torch.manual_seed(cfg.seed)  # the gated blocks' initial weights: the same in every process
    model, tokenizer = create_model(job.model_name, job.base_checkpoint, storage)
    gated = add_gated_blocks(model, cfg.gated_layers) if cfg.mode in GATED_MODES else []
    n_trainable = set_trainable(model, cfg.mode)
    visual, logit_scale, text = model.visual, model.logit_scale, None
    if cfg.mode in TEXT_MODES:
        model.visual = nn.Identity()  # the text tower is the model without its image tower ...
        del model.logit_scale  # ... and without the scale, which the tower holds once
        text = model
    tower = ImageTower(visual, logit_scale, text).to(device)
    del model  # in REACT's modes the text tower's weights go with it
    if cfg.grad_checkpointing:
        tower.visual.set_grad_checkpointing(True)
    return tower, gated, n_trainable, tokenizer if text is not None else None


def trainable_state(tower: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in tower.named_parameters() if p.requires_grad}


def full_state_dict(job: TrainJob, tower: ImageTower) -> nn.Module:
    """The whole CLIP model (text tower from the base) with the trained image tower: open_clip's layout."""
    cfg = job.cfg
    model, _ = create_model(job.model_name, job.base_checkpoint, Storage(job.storage_root, job.storage_options))
    if cfg.mode in GATED_MODES:
        add_gated_blocks(model, cfg.gated_layers)
    model.visual.load_state_dict({k: v.cpu() for k, v in tower.visual.state_dict().items()})
    if tower.text is not None:  # the trained text tower (its keys are the model's own, the image tower's aside)
        missing, unexpected = model.load_state_dict(
            {k: v.cpu() for k, v in tower.text.state_dict().items()}, strict=False
        )
        stray = list(unexpected) + [
            k for k in missing if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias")
        ]
        if stray:
            raise RuntimeError(f"the trained text tower does not fit {job.model_name}: {stray[:5]}")
    with torch.no_grad():
        model.logit_scale.copy_(tower.logit_scale.detach().cpu())
    return model


# -- the loop ---------------------------------------------------------------------------------------


def _dist_env() -> tuple[int, int, int]:
    return (
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


@dataclass
class _Session:
    """What :func:`_setup` prepares for the loop: the process's place, the model, the data, the schedule."""

    job: TrainJob
    rank: int
    world: int
    device: str
    storage: Storage
    tower: ImageTower
    model: nn.Module  # the tower, wrapped for DDP / compiled as configured
    gated: list[int]
    n_trainable: int
    image_size: int
    opt: torch.optim.Optimizer
    loader: DataLoader
    n: int
    global_batch: int
    total: int
    start: int
    history: list[dict[str, Any]]
    n_replay: int = 0
    replay_per_step: int = 0  # replayed pairs in each global batch
    reference: nn.Module | None = None  # training.anchor: the base model's image tower, frozen


def train(
    job: TrainJob,
    log: Callable[[dict[str, float], int], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train; rank 0 writes ``model.pt``, ``model.json`` and ``train_metrics.json`` into the stage folder.

    Set up (:func:`_setup`), loop (:func:`_loop`), finish (:func:`_finish`).

    Args:
        job: the model, data and config.
        log: receives ``(metrics, step)`` on rank 0 as training goes (a tracker's ``log_metrics``).
        on_step: called with the number of finished steps after each step (tests stop training here).
        progress: show a progress bar (rank 0).

    Returns:
        A summary (rank 0; other ranks return an empty dict).
    """
    run = _setup(job)
    seen, loss_val, wall = _loop(run, log, on_step, progress)
    return _finish(run, seen, loss_val, wall)


def _setup(job: TrainJob) -> _Session:
    """The process group, the tower (resumed from the newest checkpoint when asked), the pairs and their loader."""
    cfg = job.cfg
    rank, world, local_rank = _dist_env()
    if world != cfg.distributed.world_size and world > 1:
        _logger.warning("running %d processes while training.distributed says %d", world, cfg.distributed.world_size)
    if cfg.batch_size % world:
        raise ConfigError(
            f"training.batch_size={cfg.batch_size} is not divisible by the {world} processes; "
            f"fix: a multiple of {world}"
        )
    device = default_device(local_rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    if world > 1 and not dist.is_initialized():
        backend = cfg.distributed.backend
        dist.init_process_group(("nccl" if device.startswith("cuda") else "gloo") if backend == "auto" else backend)
    storage = Storage(job.storage_root, job.storage_options)

    tower, gated, n_trainable, tokenizer = build_tower(job, device)
    image_size = model_image_size(tower)
    images, labels, text = _pairs(
        storage, job.shards, job.text_features, image_size, cfg.holdout, cfg.subset, tokenizer
    )
    n, n_replay = len(images), 0
    if cfg.replay > 0:
        r_images, r_labels, r_text = _pairs(
            storage, job.replay_shards, job.replay_text_features, image_size, tokenizer=tokenizer
        )
        n_replay = len(r_images)
        images, text = torch.cat([images, r_images]), torch.cat([text, r_text])
        labels = torch.cat([labels, torch.full_like(r_labels, -1)])  # replayed pairs have no class
    global_batch = min(cfg.batch_size, n + n_replay - (n + n_replay) % world)
    replay_per_rank = max(1, round(cfg.replay * global_batch / world)) if n_replay else 0
    if (
        global_batch < world
        or global_batch // world - replay_per_rank < 1
        or n < global_batch - world * replay_per_rank
    ):
        raise DatasetError(
            f"{n} training pairs ({n_replay} replayed) cannot make a batch of {cfg.batch_size} over {world} "
            "processes with at least one retrieved pair per process; fix: lower training.batch_size or "
            "training.replay, or retrieve more pairs"
        )
    steps_per_epoch = n // (global_batch - world * replay_per_rank)
    total = cfg.steps or steps_per_epoch * cfg.epochs
    epochs = -(-total // steps_per_epoch)  # the passes training.steps needs (the last one cut short)
    # Anchoring compares with the base model's features: a frozen copy of the tower as it starts (its gated
    # blocks scaled to 0, which is the base exactly), taken before a checkpoint's weights are loaded.
    reference = None
    if cfg.anchor > 0:
        reference = copy.deepcopy(tower.visual).requires_grad_(False).eval()
        set_gate_scale(reference, 0.0)

    opt = adamw(tower.named_parameters(), cfg.lr, cfg.weight_decay)
    start, history = 0, []
    if cfg.resume == "latest" and (ckpt := checkpoints.load_latest(storage, job.stage_uri)) is not None:
        own = dict(tower.named_parameters())
        with torch.no_grad():
            for name, value in ckpt["trainable"].items():
                own[name].copy_(value)
        opt.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"])
        history = list(ckpt.get("history", []))
    model: nn.Module = tower
    if world > 1:
        model = nn.parallel.DistributedDataParallel(tower, device_ids=[local_rank] if device != "cpu" else None)
    if cfg.compile:
        model = torch.compile(model)

    loader = DataLoader(
        PairDataset(images, text, labels, build_augment(cfg.augment, image_size), cfg.seed, n_retrieved=n),
        batch_sampler=RankBatches(
            n, global_batch, epochs, cfg.seed, rank, world, start, n_replay, replay_per_rank, total
        ),
        num_workers=cfg.num_workers,
        pin_memory=device != "cpu",
        persistent_workers=False,
    )
    if rank == 0:
        _logger.info(
            "training %s (%s, loss %s): %d pairs (+%d replayed, %d per batch), global batch %d over %d process(es), "
            "steps %d..%d on %s",
            job.model_name,
            cfg.mode,
            cfg.loss,
            n,
            n_replay,
            world * replay_per_rank,
            global_batch,
            world,
            start,
            total,
            device,
        )
    return _Session(
        job,
        rank,
        world,
        device,
        storage,
        tower,
        model,
        gated,
        n_trainable,
        image_size,
        opt,
        loader,
        n,
        global_batch,
        total,
        start,
        history,
        n_replay,
        world * replay_per_rank,
        None if reference is None else reference.to(device),
    )


def _pairs(
    storage: Storage,
    shards: list[str],
    features_uri: str,
    image_size: int,
    holdout: float = 0.0,
    subset: float = 1.0,
    tokenizer: Callable | None = None,
):
    """(uint8 images, class ids, caption features) of downloaded shards, checked to be as many; the ``holdout``
    share (:func:`react_core.data.held_out`) left out and the ``subset`` share kept
    (:func:`react_core.data.training_subset`). With a ``tokenizer`` (modes that train the text tower) the third is
    the captions' tokens (int32: 10M captions x 77 tokens are 3 GB) instead of their features."""
    images, captions, keys, labels = load_labelled_pairs(storage, shards, image_size)
    if tokenizer is not None:
        text = tokenizer(captions).to(torch.int32)
    else:
        text = torch.from_numpy(np.load(storage.open(features_uri, "rb")).astype(np.float32))  # (N, D)
        if len(text) != len(images):
            raise DatasetError(
                f"{features_uri} has {len(text)} caption features for {len(images)} pairs; "
                "fix: delete that stage so it is recomputed"
            )
    if holdout > 0 or subset < 1:
        keep = torch.from_numpy(training_subset(keys, subset, holdout))
        images, labels, text = images[keep], labels[keep], text[keep]
    return images, labels, text


def _loop(
    run: _Session,
    log: Callable[[dict[str, float], int], None] | None,
    on_step: Callable[[int], None] | None,
    progress: bool,
) -> tuple[int, float, float]:
    """Steps ``run.start``..``run.total``: logging every ``log_every``, checkpoints every ``checkpoint_every``.
    Returns (samples seen, the last logged loss, wall seconds)."""
    cfg, tower, opt = run.job.cfg, run.tower, run.opt
    use_amp = run.device != "cpu" and cfg.precision in ("amp_bf16", "bf16", "amp")
    amp_dtype = torch.float16 if cfg.precision == "amp" else torch.bfloat16
    bar = progress_bar(
        run.total, f"customize ({cfg.mode})", "step", initial=run.start, show=progress, enabled=run.rank == 0
    )
    t0, seen, step, loss_val = time.time(), 0, run.start, float("nan")
    tower.visual.eval()  # frozen parts behave as at inference; the gated blocks have no dropout
    if tower.text is not None:
        tower.text.eval()
    anchor_t = torch.zeros(())
    for x_u8, t, y, replayed in run.loader:
        lr = cosine_lr(step, cfg.lr, cfg.warmup_steps, run.total)
        set_lr(opt, lr)
        x = normalize(x_u8.to(run.device, non_blocking=True), run.image_size)
        tokens = t.to(run.device) if tower.text is not None else None  # the text tower trains: t holds tokens
        with autocast(run.device, amp_dtype, use_amp):
            img, scale, txt = run.model(x, tokens)
        loss = contrastive_loss(img, t.to(run.device) if txt is None else txt, scale, y.to(run.device), cfg.loss)
        if run.reference is not None:
            anchor_t = anchor_penalty(run.reference, x, img, replayed.to(run.device), run.device, amp_dtype, use_amp)
            loss = loss + cfg.anchor * anchor_t
        optimizer_step(opt, loss, tower.logit_scale)
        step += 1
        seen += run.global_batch
        bar.update(1)
        if step % cfg.log_every == 0 or step == run.total:
            loss_t = loss.detach().clone()
            if run.world > 1:
                dist.all_reduce(loss_t)
                loss_t /= run.world
            loss_val = float(loss_t)
            if run.rank == 0:
                metrics = {
                    "train/loss": loss_val,
                    "train/lr": lr,
                    "train/samples_per_s": seen / (time.time() - t0),
                    "train/logit_scale": float(scale.detach()),
                }
                if run.reference is not None:
                    metrics["train/anchor"] = float(anchor_t.detach())
                for i, (ga, gd) in gate_values(tower).items():
                    metrics[f"gate/attn/{i}"], metrics[f"gate/dense/{i}"] = ga, gd
                run.history.append({"step": step, **metrics})
                if log is not None:
                    log(metrics, step)
                bar.set_postfix(loss=f"{loss_val:.3f}")
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < run.total:
            if run.rank == 0:
                checkpoints.save(
                    run.storage,
                    run.job.stage_uri,
                    step,
                    {
                        "trainable": trainable_state(tower),
                        "optimizer": opt.state_dict(),
                        "training": cfg.model_dump(mode="json"),
                        "history": run.history,
                    },
                    cfg.keep_checkpoints,
                )
            if run.world > 1:
                dist.barrier()
        if on_step is not None:
            on_step(step)
    bar.close()
    return seen, loss_val, time.time() - t0


def anchor_penalty(
    reference: nn.Module,
    x: torch.Tensor,
    features: torch.Tensor,
    replayed: torch.Tensor,
    device: str,
    amp_dtype: torch.dtype,
    use_amp: bool,
) -> torch.Tensor:
    """Mean squared distance between the customized features (``features``, L2-normalised, with grad) and the
    base model's (``reference``, no grad) of the replayed images of ``x``: feature-space anchoring, as LDIFS."""
    if not bool(replayed.any()):
        return features.sum() * 0.0
    with torch.no_grad(), autocast(device, amp_dtype, use_amp):
        ref = F.normalize(reference(x[replayed]).float(), dim=-1)
    return (features[replayed] - ref).pow(2).sum(dim=-1).mean()


def _finish(run: _Session, seen: int, loss_val: float, wall: float) -> dict[str, Any]:
    """Rank 0 writes the whole model (``model.pt`` with the summary beside it) and the metric history."""
    job, tower = run.job, run.tower
    summary: dict[str, Any] = {}
    if run.rank == 0:
        summary = {
            "model": job.model_name,
            "base_checkpoint": job.base_checkpoint,
            "training": job.cfg.model_dump(mode="json"),
            "gated_layers": run.gated,
            "gated_params": gated_parameter_count(tower) if run.gated else 0,
            "trainable_params": run.n_trainable,
            "gates": {str(i): v for i, v in gate_values(tower).items()},
            "pairs": run.n,
            "replay_pairs": run.n_replay,
            "replay_per_batch": run.replay_per_step,
            "global_batch": run.global_batch,
            "processes": run.world,
            "steps": run.total,
            "resumed_from_step": run.start,
            "final_loss": loss_val,
            "wall_s": round(wall, 1),
            "samples_per_s": round(seen / wall, 1) if wall > 0 else None,
        }
        save_checkpoint(full_state_dict(job, tower), run.storage, model_file(job.stage_uri), summary)
        run.storage.write_json(join(job.stage_uri, METRICS_FILE), run.history)
    if run.world > 1:
        dist.barrier()
    return summary
