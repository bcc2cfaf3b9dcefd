"""The trainer's guarantees: exact resume, N processes = one process, checkpoints kept and skipped."""

import logging
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from react_core.config import AugmentConfig, DistributedConfig, StorageConfig, TrainingConfig
from react_core.knowledge.download import downloaded_shards
from react_core.models import load_state_dict, model_file
from react_core.pipeline import run_text_features
from react_core.storage import Storage, join
from react_core.tracking import MemoryTracker
from react_core.training import checkpoints
from react_core.training.customize import TrainingLaunchError, launch, write_kubernetes_job
from react_core.training.trainer import TrainJob, train

pytestmark = pytest.mark.integration


def _job(chain, name: str, **training) -> TrainJob:
    st, cfg = chain["storage"], chain["config"]
    base = model_file(chain["base"])
    shards = downloaded_shards(st, chain["download"])
    recipe = {"gated_layers": 2, "batch_size": 16, "lr": 5e-3, "warmup_steps": 2, "epochs": 2, "precision": "fp32",
              "num_workers": 0, "loss": "unicl", "augment": AugmentConfig(crop_scale=(0.5, 1.0)), **training}  # fmt: skip
    return TrainJob(
        model_name=cfg.model.name,
        base_checkpoint=base,
        training=TrainingConfig(**recipe).model_dump(mode="json"),
        storage_root=st.root,
        storage_options={},
        shards=shards,
        text_features=run_text_features(st, model=cfg.model, checkpoint=base, download_uri=chain["download"]),
        stage_uri=st.uri("trainer-test", name),
    )


class _Crash(Exception):
    pass


def _crash_at(step_to_crash: int):
    def on_step(step: int) -> None:
        if step == step_to_crash:
            raise _Crash(step)

    return on_step


def test_resume_after_a_crash_gives_the_uninterrupted_weights(tiny_chain, caplog):
    st = tiny_chain["storage"]
    whole = _job(tiny_chain, "whole", checkpoint_every=3, keep_checkpoints=2)
    summary = train(whole, progress=False)
    assert summary["steps"] >= 8 and summary["resumed_from_step"] == 0

    broken = _job(tiny_chain, "broken", checkpoint_every=3, keep_checkpoints=2)
    with pytest.raises(_Crash):
        train(broken, on_step=_crash_at(5), progress=False)  # mid-epoch, two steps after the checkpoint at 3
    assert [u.rsplit("/", 1)[1] for u in checkpoints.list_checkpoints(st, broken.stage_uri)] == ["step-000000003.pt"]
    # A newer checkpoint cut short (a copy that died half-way) must be skipped, not trusted.
    good = st.read_bytes(checkpoints.checkpoint_uri(broken.stage_uri, 3))
    st.write_bytes(checkpoints.checkpoint_uri(broken.stage_uri, 4), good[: len(good) // 2])
    with caplog.at_level(logging.WARNING, logger="react_core.training.checkpoints"):
        resumed = train(broken, progress=False)
    assert "skipping checkpoint" in caplog.text and "step-000000004.pt" in caplog.text
    assert resumed["resumed_from_step"] == 3 and resumed["steps"] == summary["steps"]
    assert len(checkpoints.list_checkpoints(st, broken.stage_uri)) == 2  # keep_checkpoints

    a = load_state_dict(join(whole.stage_uri, "model.pt"))
    b = load_state_dict(join(broken.stage_uri, "model.pt"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    gated = [k for k in a if "gated_attn_block" in k]
    base = load_state_dict(whole.base_checkpoint)
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in gated if k.endswith("alpha_attn"))
    assert all(torch.equal(base[k], a[k]) for k in base if k != "logit_scale"), "a frozen weight changed"


def test_two_gloo_processes_train_the_weights_of_one_process(tiny_chain, caplog):
    """torchrun with 2 CPU processes (DDP, gloo) against one process with the same global batch; storage options
    with a credential reach the workers through their environment, not the command line or job.json."""
    st = tiny_chain["storage"]
    single = _job(tiny_chain, "single", epochs=1)
    train(single, progress=False)
    double = _job(tiny_chain, "ddp", epochs=1, distributed=DistributedConfig(nproc_per_node=2))
    secret = "torchrun-secret-4f1c"
    with_secret = Storage(st.root, StorageConfig(root=st.root, options={"token": secret}).options)
    double.storage_options = dict(with_secret.options)
    tracker = MemoryTracker()
    with caplog.at_level(logging.INFO, logger="react_core.training.customize"):
        summary = launch(double, with_secret, tracker, progress=False)
    assert summary["processes"] == 2 and summary["global_batch"] == 16
    assert "launching:" in caplog.text and secret not in caplog.text
    assert secret not in st.read_bytes(join(double.stage_uri, "job.json")).decode()
    assert any(k == "train/loss" for k, _, _ in tracker.metrics), "rank 0's metrics reach the tracker"
    a = load_state_dict(join(single.stage_uri, "model.pt"))
    b = load_state_dict(join(double.stage_uri, "model.pt"))
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    print(f"two processes vs one: largest weight difference {worst:.2e}")
    # Same batches, same loss: only the order of float additions differs (gather, all-reduce).
    assert worst < 1e-5, f"largest weight difference {worst:.2e}"  # measured: 3.7e-07 after 6 steps
    moved = max(float((a[k] - load_state_dict(single.base_checkpoint).get(k, torch.zeros_like(a[k]))).abs().max())
                for k in a if "gated_attn_block" in k and "alpha" in k)  # fmt: skip
    assert moved > 10 * worst, "training moved the gates far more than the two runs differ"


def _run_pods(st, job: TrainJob) -> list[subprocess.CompletedProcess]:
    """The Indexed Job of ``kubernetes.yaml`` with its pods as local processes: each runs the container's command
    with the container's environment (the completion index resolved); only the rendezvous host is 127.0.0.1,
    since pod 0's DNS name exists only inside a cluster."""
    job_uri = st.write_bytes(join(job.stage_uri, "job.json"), job.to_json().encode())
    _, k8s_job = yaml.safe_load_all(st.read_bytes(write_kubernetes_job(job, job_uri, st)))
    spec = k8s_job["spec"]
    container = spec["template"]["spec"]["containers"][0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for index in range(spec["completions"]):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for e in container["env"]:
            env[e["name"]] = e["value"] if "value" in e else str(index)
        env["PET_RDZV_ENDPOINT"] = f"127.0.0.1:{port}"
        cmd = [sys.executable, *container["command"][1:]]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate()[0] for p in procs]  # communicate, not wait: a full pipe would block the child
    return [subprocess.CompletedProcess(p.args, p.returncode, out) for p, out in zip(procs, outputs, strict=True)]


def test_kubernetes_indexed_job_trains_what_one_process_trains(tiny_chain):
    """launcher: kubernetes. The rendered job's pods (2 nodes x 1 process, gloo), started from the manifest's own
    command and environment, train the single process's weights; the stage then takes their model."""
    st = tiny_chain["storage"]
    single = _job(tiny_chain, "k8s-single", epochs=1)
    train(single, progress=False)
    dcfg = DistributedConfig(nnodes=2, nproc_per_node=1, launcher="kubernetes", kubernetes={"apply": False})
    k8s = _job(tiny_chain, "k8s", epochs=1, distributed=dcfg)
    done = _run_pods(st, k8s)
    assert [p.returncode for p in done] == [0, 0], done[0].stdout[-3000:] + done[1].stdout[-3000:]
    tracker = MemoryTracker()
    summary = launch(k8s, st, tracker, progress=False)  # the model is there: collected without waiting
    assert summary["processes"] == 2 and summary["global_batch"] == 16
    assert any(k == "train/loss" for k, _, _ in tracker.metrics)
    a = load_state_dict(join(single.stage_uri, "model.pt"))
    b = load_state_dict(join(k8s.stage_uri, "model.pt"))
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, f"largest weight difference {worst:.2e}"


def test_a_failing_pod_fails_the_stage_with_its_error(tiny_chain):
    st = tiny_chain["storage"]
    dcfg = DistributedConfig(nnodes=2, nproc_per_node=1, launcher="kubernetes", kubernetes={"apply": False})
    broken = _job(tiny_chain, "k8s-broken", epochs=1, batch_size=15, distributed=dcfg)  # 15 pairs over 2 ranks
    done = _run_pods(st, broken)
    assert all(p.returncode != 0 for p in done)
    with pytest.raises(TrainingLaunchError, match=r"rank [01] failed on .*batch_size=15 is not divisible"):
        launch(broken, st, MemoryTracker(), progress=False)
    assert not st.exists(join(broken.stage_uri, "model.json"))


def test_locked_text_trains_the_image_tower_and_keeps_the_text_tower(tiny_chain):
    job = _job(tiny_chain, "locked", mode="locked-text", lr=1e-4, epochs=1, loss="clip")
    summary = train(job, progress=False)
    assert summary["gated_layers"] == [] and summary["trainable_params"] > 0
    base = load_state_dict(job.base_checkpoint)
    tuned = load_state_dict(join(job.stage_uri, "model.pt"))
    assert tuned.keys() == base.keys()  # no gated blocks in this mode
    text_keys = [k for k in base if not k.startswith("visual.") and k != "logit_scale"]
    assert text_keys and all(torch.equal(base[k], tuned[k]) for k in text_keys), "the text tower changed"
    assert any(not torch.equal(base[k], tuned[k]) for k in base if k.startswith("visual.")), "nothing trained"


@pytest.mark.parametrize(
    ("mode", "image", "text", "gated"),
    [("full", True, True, False), ("locked-image", False, True, False), ("gated-image+text", False, True, True)],
)
def test_tuning_strategies_train_exactly_their_towers(tiny_chain, mode, image, text, gated):
    """The paper's Table 7 rows: what each mode trains changes and nothing else does; the saved model holds it."""
    job = _job(tiny_chain, mode.replace("+", "-"), mode=mode, lr=1e-3, epochs=1, loss="clip")
    summary = train(job, progress=False)
    base = load_state_dict(job.base_checkpoint)
    tuned = load_state_dict(join(job.stage_uri, "model.pt"))
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    text_keys = {k for k in base if not k.startswith("visual.") and k != "logit_scale"}
    image_keys = {k for k in base if k.startswith("visual.")}
    assert bool(changed & text_keys) == text and bool(changed & image_keys) == image, sorted(changed)[:8]
    if text:  # every text weight that gets a gradient moved (the token embedding: only the rows used)
        assert {k for k in text_keys if "token_embedding" not in k} <= changed
    assert bool(summary["gated_layers"]) == gated and (set(tuned) - set(base) != set()) == gated
    n_text = sum(base[k].numel() for k in text_keys)
    n_image = sum(base[k].numel() for k in image_keys) if image else 0
    assert summary["trainable_params"] == n_text + n_image + summary["gated_params"] + 1  # + logit_scale


def test_a_subset_at_fixed_steps_trains_on_its_share_for_those_steps(tiny_chain):
    """training.subset + training.steps: the paper's retrieval-size curve (fewer pairs, the same steps)."""
    whole = train(_job(tiny_chain, "all-pairs", epochs=1, steps=6), progress=False)
    half = train(_job(tiny_chain, "half-pairs", epochs=1, steps=6, subset=0.5), progress=False)
    assert whole["steps"] == half["steps"] == 6
    assert 0.3 * whole["pairs"] < half["pairs"] < 0.7 * whole["pairs"]


@pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++")), reason="torch.compile on CPU needs a C++ compiler"
)
def test_compiled_training_matches_eager(tiny_chain):
    """training.compile: torch.compile of the image tower (inductor, CPU) gives the eager run's weights."""
    eager = _job(tiny_chain, "eager", epochs=1, augment=AugmentConfig(enabled=False))
    compiled = _job(tiny_chain, "compiled", epochs=1, augment=AugmentConfig(enabled=False), compile=True)
    train(eager, progress=False)
    train(compiled, progress=False)
    a = load_state_dict(join(eager.stage_uri, "model.pt"))
    b = load_state_dict(join(compiled.stage_uri, "model.pt"))
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-4, f"compiled and eager weights differ by {worst:.2e}"


def test_gate_scale_zero_evaluates_as_the_base_and_is_a_stage_of_its_own(tiny_chain):
    """evaluation.gate_scale (lambda): 0 gives the base model's zero-shot result exactly; each lambda is its own
    eval stage, and lambda 1 is the stage evaluated before lambda existed."""
    from react_core.pipeline import run_evaluate_dataset

    st, cfg, world = tiny_chain["storage"], tiny_chain["config"], tiny_chain["world"]
    job = _job(tiny_chain, "lambda", epochs=1, lr=5e-2)
    train(job, progress=False)
    tuned = join(job.stage_uri, "model.pt")

    def zero_shot(ckpt, scale=1.0):
        uri = run_evaluate_dataset(
            st,
            model=cfg.model,
            checkpoint=ckpt,
            evaluation=cfg.evaluation,
            dataset="miniweb-fine",
            miniweb_uri=world,
            gate_scale=scale,
        )
        return uri, st.read_json(join(uri, "result.json"))

    base_uri, base = zero_shot(model_file(tiny_chain["base"]))
    one_uri, one = zero_shot(tuned)
    zero_uri, zero = zero_shot(tuned, 0.0)
    half_uri, _ = zero_shot(tuned, 0.5)
    assert zero["zero_shot"] == base["zero_shot"] and zero["gate_scale"] == 0.0
    alphas = [float(v) for k, v in load_state_dict(tuned).items() if k.endswith(("alpha_attn", "alpha_dense"))]
    assert alphas and all(a != 0 for a in alphas), "closed gates: lambda would change nothing, proving nothing"
    assert len({base_uri, one_uri, zero_uri, half_uri}) == 4 and "gate_scale" not in one
    assert zero_shot(tuned)[0] == one_uri
