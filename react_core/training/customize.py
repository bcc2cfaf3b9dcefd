"""REACT customization, as the train stage runs it: caption features once, then the trainer.

1. :func:`caption_features`: the frozen text tower embeds every downloaded caption once; the
   features are an artifact (``text-features/{version}/features.npy``, float16) keyed by the download
   stage and the base checkpoint, so re-training with another recipe does not recompute them.
2. :func:`launch`: one process runs :func:`react_core.training.trainer.train` in place; more run it
   under ``torchrun`` (DDP) with the rendezvous arguments of ``training.distributed``.
3. The gate values ``tanh(alpha)`` of every gated layer over training are plotted (the paper's Fig. 6).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from react_core.config import TrainingConfig
from react_core.data import DatasetError, load_captions
from react_core.errors import ReactError
from react_core.models import create_model
from react_core.models.encode import default_device, embed_prompts
from react_core.secrets import reveal, scrub
from react_core.storage import Stage, Storage, exclusive, join
from react_core.tracking import NullTracker, Tracker
from react_core.training.trainer import METRICS_FILE, OPTIONS_ENV, TrainJob, train

_logger = logging.getLogger(__name__)


class TrainingLaunchError(ReactError, RuntimeError):
    """torchrun exited with an error; the message carries the command and the tail of its output."""


# The version of what the text-features stage writes (react_core.storage.version_hash): 2 has the captions in
# key order within each shard (react_core.data.load_captions), the order the trainer reads the pairs in.
TEXT_FEATURES_SCHEMA = 2


@exclusive
def caption_features(
    storage: Storage, stage: Stage, model_name: str, checkpoint: str | None, shards: Sequence[str]
) -> str:
    """URI of ``features.npy`` in ``stage``: the captions' text features in shard order (computed once)."""
    uri = stage.file("features.npy")
    if stage.done:
        return uri
    device = default_device()
    model, tokenizer = create_model(model_name, checkpoint, storage, device=device)
    captions, keys = load_captions(storage, shards)
    feats = embed_prompts(model, tokenizer, captions).astype(np.float16)
    with storage.open(uri, "wb") as f:
        np.save(f, feats)
    stage.complete(counts={"captions": len(captions), "dim": int(feats.shape[1])}, first_key=keys[0])
    return uri


def launch(job: TrainJob, storage: Storage, tracker: Tracker, progress: bool) -> dict[str, Any]:
    """Run the trainer in this process, or under ``torchrun`` when ``training.distributed`` asks for more."""
    cfg = job.cfg
    dcfg = cfg.distributed
    if dcfg.world_size == 1:
        return train(job, log=tracker.log_metrics, progress=progress)
    job_uri = storage.write_bytes(join(job.stage_uri, "job.json"), job.to_json().encode())
    rendezvous = (
        ["--standalone"]
        if dcfg.nnodes == 1
        else ["--nnodes", str(dcfg.nnodes), "--node_rank", str(dcfg.node_rank), "--rdzv_backend", "c10d",
              "--rdzv_endpoint", dcfg.rdzv_endpoint, "--rdzv_id", dcfg.rdzv_id]
    )  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", *rendezvous, "--nproc_per_node", str(dcfg.nproc_per_node),
           "-m", "react_core.training.worker", job_uri]  # fmt: skip
    _logger.info("launching: %s", " ".join(cmd))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // dcfg.nproc_per_node))),
        # The storage options, credentials included, reach the workers through their environment: a command
        # line is visible to every user (ps, /proc/*/cmdline) and is logged; job.json holds only public options.
        OPTIONS_ENV: json.dumps(reveal(storage.options or {})),
    }
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        tail = scrub(tail, storage.options or {})
        raise TrainingLaunchError(f"torchrun exited with {proc.returncode}: {' '.join(cmd)}\n{tail}")
    for row in storage.read_json(join(job.stage_uri, METRICS_FILE)):
        step = int(row.pop("step"))
        tracker.log_metrics(row, step=step)
    return storage.read_json(join(job.stage_uri, "model.json"))


def plot_gates(history: list[dict[str, float]]):
    """``tanh(alpha)`` of each gated layer over training steps: attention and MLP gates side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    steps = [r["step"] for r in history]
    for ax, kind in zip(axes, ("attn", "dense"), strict=True):
        keys = sorted((k for k in (history[0] if history else {}) if k.startswith(f"gate/{kind}/")),
                      key=lambda k: int(k.rsplit("/", 1)[1]))  # fmt: skip
        for k in keys:
            ax.plot(steps, [r[k] for r in history], label=f"layer {k.rsplit('/', 1)[1]}")
        ax.set_title(f"tanh(alpha_{kind})")
        ax.set_xlabel("step")
        ax.axhline(0, color="grey", lw=0.5)
    axes[0].set_ylabel("gate value")
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


@exclusive
def customize(
    model_name: str,
    base_checkpoint: str | None,
    cfg: TrainingConfig,
    storage: Storage,
    shard_uris: Sequence[str],
    stage: Stage,
    text_features: str,
    tracker: Tracker | None = None,
    progress: bool = True,
    download_uri: str | None = None,
) -> str:
    """Train on the pairs in ``shard_uris`` (``text_features``: their captions' features, :func:`caption_features`);
    writes ``model.pt`` (+ ``model.json``, ``gates.png``) into ``stage``."""
    if stage.done:
        return stage.uri
    if not shard_uris:
        raise DatasetError(
            f"no training shards in {download_uri or stage.uri}; fix: check the download stage's success rate "
            "and the manifest (retrieval found nothing, or every download failed)"
        )
    tracker = tracker or NullTracker()
    job = TrainJob(
        model_name=model_name,
        base_checkpoint=base_checkpoint,
        training=cfg.model_dump(mode="json"),
        storage_root=storage.root,
        storage_options=dict(storage.options or {}),
        shards=list(shard_uris),
        text_features=text_features,
        stage_uri=stage.uri,
    )
    summary = launch(job, storage, tracker, progress)
    tracker.log_metrics({"train/pairs": summary["pairs"], "train/trainable_params": summary["trainable_params"]})
    history = storage.read_json(join(stage.uri, METRICS_FILE))
    if summary.get("gated_layers") and history:
        import matplotlib.pyplot as plt

        fig = plot_gates(history)
        with storage.open(stage.file("gates.png"), "wb") as f:
            fig.savefig(f, format="png", dpi=110)
        tracker.log_figure(fig, "gates.png")
        plt.close(fig)
    return stage.complete(
        counts={"pairs": summary["pairs"], "steps": summary["steps"]},
        metrics={"final_loss": summary["final_loss"], "wall_s": summary["wall_s"]},
    )
