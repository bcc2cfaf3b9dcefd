"""The evaluate flow: one cached task per (model, dataset), readers agreeing, the probe, the CLI."""

import subprocess
import sys

import pytest

from react_core.data.datasets import read_vision_dataset
from react_core.storage import Storage, join
from tests.conftest import TINY_PRESET, tiny_config
from tests.integration.test_world_flow import _task_states

pytestmark = pytest.mark.integration

PROBE = {
    "evaluation.linear_probe.enabled": "true",
    "evaluation.linear_probe.shots": "[1]",
    "evaluation.linear_probe.val_per_class": 1,
    "evaluation.linear_probe.seeds": "[0,1]",
    "evaluation.linear_probe.steps": 20,
    "evaluation.num_workers": 2,
}


def as_image_folders(st: Storage, task_uri: str, out: str) -> None:
    """The same images laid out ImageNet-style: {out}/{split}/{class}/{image}."""
    for split in ("train", "test"):
        ds = read_vision_dataset(st, task_uri, split)
        for i, (image, target) in enumerate(zip(ds.images, ds.targets)):
            st.write_bytes(join(out, split, f"c{target[0]:02d}", f"{i}.jpg"), st.read_bytes(image))
    st.write_bytes(join(out, "classnames.txt"), "\n".join(ds.classnames).encode())
    st.write_bytes(join(out, "templates.json"), st.read_bytes(join(task_uri, "templates.json")))


def test_evaluate_flow_adds_datasets_incrementally_and_readers_agree(prefect_harness, tmp_path):
    from flows.evaluate import evaluate

    root = tmp_path / "root"
    first = evaluate(config=tiny_config(root, **PROBE, **{"evaluation.tasks": "[miniweb-fine]"}))
    assert list(first["table"]) == ["miniweb-fine"] and "customized" not in first["table"]["miniweb-fine"]
    st = Storage(str(root))
    world = st.ls(st.uri("miniweb"), "*")[0]
    as_image_folders(st, join(world, "tasks", "miniweb-fine"), str(tmp_path / "fine-folders"))

    tasks = f"[miniweb-fine, miniweb-coarse, {tmp_path / 'fine-folders'}]"
    second = evaluate(config=tiny_config(root, **PROBE, **{"evaluation.tasks": tasks}))
    states = _task_states(second["flow_run_id"], {"eval miniweb-fine (base)", "evaluation-report"})
    assert states["eval miniweb-fine (base)"] == "Cached"
    assert states["eval miniweb-coarse (base)"] == "Completed" and states["evaluation-report"] == "Completed"

    rows = st.read_json(f"{second['evaluate']}/metrics.json")
    acc = {r["dataset"]: r["value"] for r in rows if r["protocol"] == "zero-shot" and r["metric"] == "accuracy"}
    assert acc["miniweb-fine"] == pytest.approx(acc["fine-folders"])  # same images, two layouts
    probe = [r for r in rows if r["protocol"] == "linear-probe-1-shot"]
    assert {r["dataset"] for r in probe} == {"miniweb-fine", "miniweb-coarse", "fine-folders"}
    assert all(0 <= r["value"] <= 1 and r["seeds"] == 2 for r in probe)
    assert st.read_bytes(f"{second['evaluate']}/deltas.png")[:4] == b"\x89PNG"

    cli = subprocess.run(
        [sys.executable, "-m", "react_cli.main", "evaluate", "-c", str(TINY_PRESET), "-s", f"storage.root={root}",
         *[f"-s{k}={v}" for k, v in PROBE.items()], "-s", f"evaluation.tasks={tasks}", "-q"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert f"| miniweb-coarse | zero-shot | accuracy | {acc['miniweb-coarse']:.4f} |" in cli.stdout
    assert "metrics.json" in cli.stdout


def test_dataloader_workers_exit_cleanly_after_a_flow_ran_in_this_process(prefect_harness, tmp_path):
    """Our loaders fork their workers from a process that ran a flow (a task, a test session): every batch
    arrives and every worker exits 0. (Prefect before 3.9.1 left its services' exit hooks in forked children,
    which then exited 1 and made PyTorch raise "DataLoader worker exited unexpectedly"; pyproject.toml asks
    for a Prefect without that.)"""
    import torch
    from prefect import flow

    from react_core.data.datasets import loader, open_dataset
    from tests.unit.test_eval_datasets import write_text_index

    @flow
    def noop() -> int:
        return 1

    assert noop() == 1
    st = Storage(str(tmp_path))
    write_text_index(st, st.uri("toy"))
    batches = iter(loader(open_dataset(st, st.uri("toy")), 8, 2, 2, torch.device("cpu")))
    labels = [y for _, y in batches]
    assert sum(len(y) for y in labels) == 6
    workers = batches._workers  # joined when the iterator is exhausted
    assert len(workers) == 2 and [w.exitcode for w in workers] == [0, 0]
