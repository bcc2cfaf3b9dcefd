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
from react_core.storage import Stage, Storage, join
from react_core.tracking import NullTracker, Tracker
from react_core.training.trainer import METRICS_FILE, OPTIONS_ENV, TrainJob, train

_logger = logging.getLogger(__name__)


class TrainingLaunchError(ReactError, RuntimeError):
    """torchrun exited with an error; the message carries the command and the tail of its output."""


def caption_features(
    storage: Storage, stage: Stage, model_name: str, checkpoint: str | None, shards: Sequence[str]
) -> str:
    """URI of ``features.npy`` in ``stage``: the captions' text features in shard order (computed once)."""
    uri = stage.file("features.npy")
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
    if dcfg.world_size == 1 and dcfg.launcher == "torchrun":
        return train(job, log=tracker.log_metrics, progress=progress)
    job_uri = storage.write_bytes(join(job.stage_uri, "job.json"), job.to_json().encode())
    if dcfg.launcher == "kubernetes":
        return _launch_kubernetes(job, job_uri, storage, tracker)
    rendezvous = (
        ["--standalone"]
        if dcfg.nnodes == 1
        else [
            "--nnodes",
            str(dcfg.nnodes),
            "--node_rank",
            str(dcfg.node_rank),
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            dcfg.rdzv_endpoint,
            "--rdzv_id",
            dcfg.rdzv_id,
        ]
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rendezvous,
        "--nproc_per_node",
        str(dcfg.nproc_per_node),
        "-m",
        "react_core.training.worker",
        job_uri,
    ]
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
    return _collect(job, storage, tracker)


def _collect(job: TrainJob, storage: Storage, tracker: Tracker) -> dict[str, Any]:
    """What the processes of a launched job left: their metrics to the tracker, rank 0's summary."""
    for row in storage.read_json(join(job.stage_uri, METRICS_FILE)):
        step = int(row.pop("step"))
        tracker.log_metrics(row, step=step)
    return storage.read_json(join(job.stage_uri, "model.json"))


def write_kubernetes_job(job: TrainJob, job_uri: str, storage: Storage) -> str:
    """Write ``kubernetes.yaml`` (the Indexed Job of :mod:`react_core.training.kubernetes`) beside ``job.json``."""
    from react_core.training.kubernetes import render, training_job

    objects = training_job(job.cfg.distributed, job_uri, job.stage_uri, storage.options)
    return storage.write_bytes(join(job.stage_uri, "kubernetes.yaml"), render(objects).encode())


def _launch_kubernetes(job: TrainJob, job_uri: str, storage: Storage, tracker: Tracker) -> dict[str, Any]:
    """Write the Indexed Job, apply it when kubectl is here, and wait for rank 0's ``model.json``.

    Waiting is a look at the stage every ``poll_s`` seconds: the pods report only through storage (their model,
    or a ``failed/rank-N.json`` marker), which is what a flow run on another machine can see without cluster
    rights. A model already there (the job finished before this flow run crashed) is taken as it is."""
    import shutil
    import time

    from react_core.training.kubernetes import job_name

    kcfg = job.cfg.distributed.kubernetes
    model_json = join(job.stage_uri, "model.json")
    failed = join(job.stage_uri, "failed")
    manifest = write_kubernetes_job(job, job_uri, storage)
    name = job_name(job.stage_uri)
    kubectl = shutil.which("kubectl") if kcfg.apply else None
    if storage.exists(model_json):
        kubectl = None  # finished before: nothing to start or watch
    elif kubectl:
        storage.rm(failed)  # markers of an earlier attempt: this one starts the pods afresh
        local = storage.read_bytes(manifest)
        # kubectl refuses to replace a finished Job's template: a re-run deletes the old one first
        subprocess.run(
            [kubectl, "delete", "job", name, "-n", kcfg.namespace, "--ignore-not-found"],
            capture_output=True,
            text=True,
            check=False,
        )
        proc = subprocess.run(
            [kubectl, "apply", "-f", "-"], input=local.decode(), capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise TrainingLaunchError(f"kubectl apply of {manifest} failed: {(proc.stdout + proc.stderr)[-2000:]}")
        _logger.info(
            "kubernetes: applied job %s (%d nodes x %d processes) from %s",
            name,
            job.cfg.distributed.nnodes,
            job.cfg.distributed.nproc_per_node,
            manifest,
        )
    else:
        _logger.warning(
            "kubernetes: no kubectl here; start the %d-node job with its manifest %s "
            "(`kubectl apply -f kubernetes.yaml`); this run waits for %s",
            job.cfg.distributed.nnodes,
            manifest,
            model_json,
        )
    start = time.monotonic()
    polls = 0
    while not storage.exists(model_json):
        markers = storage.ls(failed, "rank-*.json") if storage.exists(failed) else []
        if markers:
            first = storage.read_json(markers[0])
            raise TrainingLaunchError(
                f"kubernetes job {name}: rank {first.get('rank')} failed on {first.get('host')}: {first.get('error')}"
                f" ({len(markers)} rank(s) failed; markers in {failed}); fix the cause and re-run (delete the markers "
                "first when you start the job yourself): training resumes from the newest checkpoint"
            )
        if kubectl and _job_failed(kubectl, name, kcfg.namespace):
            # A pod that died before Python ran (image pull, OOM kill, eviction) leaves no marker.
            raise TrainingLaunchError(
                f"kubernetes job {name} failed without a rank's report (image pull, out of memory, eviction?): "
                f"kubectl -n {kcfg.namespace} describe job {name}; kubectl -n {kcfg.namespace} logs job/{name}"
            )
        waited = time.monotonic() - start
        if waited > kcfg.timeout_h * 3600:
            raise TrainingLaunchError(
                f"kubernetes job {name}: no model in {job.stage_uri} after {kcfg.timeout_h} h; check the pods "
                f"(kubectl -n {kcfg.namespace} get pods -l app.kubernetes.io/instance={name}) or raise "
                "training.distributed.kubernetes.timeout_h"
            )
        polls += 1
        if polls % 20 == 1:
            _logger.info("kubernetes: waiting for job %s (%.0f min so far)", name, waited / 60)
        time.sleep(kcfg.poll_s)
    return _collect(job, storage, tracker)


def _job_failed(kubectl: str, name: str, namespace: str) -> bool:
    """Whether the Job reports a failed pod (``status.failed``); unknown (kubectl failed) counts as not failed."""
    proc = subprocess.run(
        [kubectl, "get", "job", name, "-n", namespace, "-o", "jsonpath={.status.failed}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0 and proc.stdout.strip() not in ("", "0")


def plot_gates(history: list[dict[str, float]]):
    """``tanh(alpha)`` of each gated layer over training steps: attention and MLP gates side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    steps = [r["step"] for r in history]
    for ax, kind in zip(axes, ("attn", "dense"), strict=True):
        keys = sorted(
            (k for k in (history[0] if history else {}) if k.startswith(f"gate/{kind}/")),
            key=lambda k: int(k.rsplit("/", 1)[1]),
        )
        for k in keys:
            ax.plot(steps, [r[k] for r in history], label=f"layer {k.rsplit('/', 1)[1]}")
        ax.set_title(f"tanh(alpha_{kind})")
        ax.set_xlabel("step")
        ax.axhline(0, color="grey", lw=0.5)
    axes[0].set_ylabel("gate value")
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


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
    replay: tuple[Sequence[str], str] | None = None,
) -> str:
    """Train on the pairs in ``shard_uris`` (``text_features``: their captions' features, :func:`caption_features`)
    and, with ``training.replay``, the replayed pairs ``replay`` (their shards, their captions' features);
    writes ``model.pt`` (+ ``model.json``, ``gates.png``) into ``stage``."""
    if not shard_uris:
        raise DatasetError(
            f"no training shards in {download_uri or stage.uri}; fix: check the download stage's success rate "
            "and the manifest (retrieval found nothing, or every download failed)"
        )
    if cfg.replay > 0 and not (replay and replay[0]):
        raise DatasetError(
            f"training.replay={cfg.replay:g} but the replay sample's download has no shards; fix: check that "
            "download stage's success rate, or set training.replay to 0"
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
        replay_shards=list(replay[0]) if replay else [],
        replay_text_features=replay[1] if replay else "",
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
        counts={"pairs": summary["pairs"], "steps": summary["steps"], "replay_pairs": summary.get("replay_pairs", 0)},
        metrics={"final_loss": summary["final_loss"], "wall_s": summary["wall_s"]},
    )
