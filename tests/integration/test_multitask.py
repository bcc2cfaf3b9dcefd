"""One customized model for several tasks: retrieval for all, shares, audit, roles, registration."""

import pytest

from react_core.knowledge.retrieve import read_manifest
from react_core.storage import Storage, join

pytestmark = pytest.mark.integration


def test_the_customize_flow_retrieves_for_two_tasks_and_reports_both_as_targets(prefect_harness, tmp_path):
    from mlflow.tracking import MlflowClient

    from flows.customize import customize
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path / "root", **{"retrieval.tasks": "[miniweb-fine, miniweb-coarse]"})
    out = customize(config=cfg)
    st = Storage(cfg.storage.root)
    manifest = read_manifest(st, out["retrieve"])
    counts = st.stage_manifest(out["retrieve"])["counts"]
    assert counts["pairs.miniweb-fine"] == counts["pairs.miniweb-coarse"] > 0  # equal shares
    assert manifest.groupby("task")["class_id"].agg(["min", "max"]).to_dict("index") == {
        "miniweb-fine": {"min": 0, "max": 3}, "miniweb-coarse": {"min": 4, "max": 7}}  # fmt: skip
    overlap = st.read_json(join(out["retrieve"], "overlap.json"))["summary"]
    assert overlap["datasets"] == ["miniweb-fine", "miniweb-coarse"]  # audited against both tasks' images
    assert set(st.read_json(join(out["retrieve"], "class_counts.json"))) >= {
        f"miniweb-coarse/{n}" for n in manifest.loc[manifest["task"] == "miniweb-coarse", "class_name"]}  # fmt: skip
    client = MlflowClient(f"sqlite:///{tmp_path}/root/mlflow.db")
    version = client.get_model_version_by_alias("react-miniweb-fine+miniweb-coarse-react-micro-vit", "candidate")
    mean = (out["table"]["miniweb-fine"]["customized"] + out["table"]["miniweb-coarse"]["customized"]) / 2
    assert float(version.tags["react.target_score"]) == pytest.approx(mean, abs=1e-4)
    from react_core.summary import dataset_roles

    assert {d: r for d, r in dataset_roles(cfg).items() if r == "target"} == {
        "miniweb-fine": "target", "miniweb-coarse": "target"}  # fmt: skip
