"""The ablate flow on the tiny mini-web: a grid of variants x seeds on one knowledge base, cached per cell."""

import json

import pytest

from tests.conftest import tiny_config
from tests.integration.test_world_flow import _task_states

pytestmark = pytest.mark.integration

GRID = {
    "seeds": [0, 1],
    "base": {"training.epochs": 2},
    "axes": {
        "tuning": {"field": "training.mode", "values": ["gated-image", "full"]},
        "size": {"field": "training.subset", "values": [0.5], "with": {"training.steps": 4}},
        "search": {"field": "retrieval.modes", "values": [["t2t"]]},
        "control": {"values": [{"label": "random", "retrieval.random_control": True}]},
    },
}


def test_ablate_flow_writes_the_tables_and_reruns_only_new_cells(prefect_harness, tmp_path):
    from mlflow.tracking import MlflowClient

    from flows.ablate import ablate
    from react_core.storage import Storage

    cfg = tiny_config(tmp_path / "root")
    st = Storage(cfg.storage.root)
    first = ablate(config=cfg, grid=GRID)
    summary = json.loads(st.read_bytes(f"{first['ablation']}/ablation.json"))
    cells = {c["id"]: c for c in summary["cells"]}
    assert set(cells) == {"reference", "tuning=full", "size=0.5", "search=t2t", "control=random"}
    assert summary["axes"]["tuning"] == ["reference", "tuning=full"]  # gated-image is the reference recipe
    for c in cells.values():
        assert c["seeds"] == [0, 1] and set(c["mean"]) == {"miniweb-fine", "miniweb-coarse", "miniweb-generic",
                                                             "miniweb-captions"}  # fmt: skip
        assert all(0 <= r["metrics"]["miniweb-fine"] <= 1 for r in c["per_seed"])
    assert (
        cells["size=0.5"]["cost"]["steps"] == 4
        and cells["size=0.5"]["cost"]["pairs"] < cells["reference"]["cost"]["pairs"]
    )
    assert cells["tuning=full"]["cost"]["trainable_params"] > cells["reference"]["cost"]["trainable_params"]
    assert cells["control=random"]["cost"]["retrieved"] == cells["reference"]["cost"]["retrieved"]
    # the seeds differ (the spread is a real one) and the table shows it
    ref = cells["reference"]["per_seed"]
    assert ref[0]["metrics"] != ref[1]["metrics"]
    text = st.read_bytes(f"{first['ablation']}/ablation.md").decode()
    for axis in GRID["axes"]:
        assert f"## {axis}" in text and st.exists(f"{first['ablation']}/{axis}.png")
    # cells that share a retrieval share its download: reference, t2t and the random control made three
    assert len(st.ls(st.uri("download"), "*")) == 3 and len(st.ls(st.uri("retrieve"), "*")) == 3
    assert len(st.ls(st.uri("train"), "*")) == 10  # five cells x two seeds
    client = MlflowClient(f"sqlite:///{tmp_path}/root/mlflow.db")
    parent = client.get_run(first["mlflow_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")  # fmt: skip
    (run,) = [c for c in children if c.info.run_name == "ablation"]
    logged = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        f"ablation/{a.path.rsplit('/', 1)[-1]}" for a in client.list_artifacts(run.info.run_id, "ablation")}  # fmt: skip
    assert {"ablation.json", "ablation.md", "ablation/tuning.png", "ablation/size.png"} <= logged
    assert run.data.metrics["ablation/tuning_full/miniweb-fine"] == pytest.approx(
        cells["tuning=full"]["mean"]["miniweb-fine"]
    )

    # a new axis: only its cells train; the others come from the cache
    rivals = {"field": "training.mode", "values": ["real-prompt", "real-linear", "cache-head"]}
    more = {**GRID, "axes": {**GRID["axes"], "k": {"field": "training.gated_layers", "values": [1]}, "rivals": rivals}}
    second = ablate(config=cfg, grid=more)
    states = _task_states(second["flow_run_id"], {"train k=1 seed 0", "train reference seed 0"})
    assert states["train k=1 seed 0"] == "Completed" and states["train k=1 seed 1"] == "Completed"
    assert all(states[f"train {c} seed {s}"] == "Cached" for c in cells for s in (0, 1)), states
    assert len(st.ls(st.uri("train"), "*")) == 12  # the rivals train nothing
    again = json.loads(st.read_bytes(f"{second['ablation']}/ablation.json"))
    got = {c["id"]: c for c in again["cells"]}
    assert set(got) == set(cells) | {"k=1", "rivals=real-prompt", "rivals=real-linear", "rivals=cache-head"}

    # the cheap rivals: the base model with a head on the target task, every other dataset exactly the base
    base = again["base"]
    for mode in ("real-prompt", "real-linear", "cache-head"):
        rival = got[f"rivals={mode}"]
        for d in ("miniweb-coarse", "miniweb-generic", "miniweb-captions"):
            assert rival["mean"][d] == base[d], (mode, d)
    linear, cache, prompt = got["rivals=real-linear"], got["rivals=cache-head"], got["rivals=real-prompt"]
    assert linear["cost"]["trainable_params"] == 32 * 4  # (D, C) of react-micro-vit's 4 fine classes
    assert cache["cost"]["trainable_params"] == prompt["cost"]["trainable_params"] == 0
    assert prompt["cost"]["data_bytes"] == 0 and prompt["cost"]["pairs"] == 0
    assert cache["cost"]["data_bytes"] == cells["reference"]["cost"]["data_bytes"] > 0
    inputs = st.stage_manifest(second["ablation"])["inputs"]
    for mode, kind in (("real-prompt", "prompts"), ("real-linear", "linear"), ("cache-head", "cache")):
        target = st.read_json(f"{inputs[f'rivals={mode}/0/miniweb-fine']}/result.json")
        assert target["head"] == kind  # the head scored the target task ...
        assert inputs[f"rivals={mode}/0/miniweb-coarse"] == inputs["base/miniweb-coarse"]  # ... and nothing else
    assert len(st.ls(st.uri("head"), "*")) == 4  # the prompts and the cache once (no seed in them), linear per seed
    assert "## rivals" in st.read_bytes(f"{second['ablation']}/ablation.md").decode()
