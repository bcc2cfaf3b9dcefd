"""Tracking against a real MLflow tracking server (started here on 127.0.0.1)."""

import pytest

from react_core.pipeline import base_stage
from react_core.storage import Storage
from react_core.tracking import make_tracker
from react_core.training.pretrain import pretrain_base
from tests.conftest import start_mlflow_server, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    proc, url = start_mlflow_server(root)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_pretraining_logs_to_a_tracking_server(mlflow_server, tiny_world):
    from mlflow.tracking import MlflowClient

    cfg, storage, uri = tiny_world
    cfg = tiny_config(
        cfg.storage.root.removeprefix("file://"),
        **{"tracking.tracking_uri": mlflow_server, "tracking.experiment": "slow-test", "model.pretrain.seed": 11},
    )
    tracker = make_tracker(cfg.tracking, Storage(cfg.storage.root))
    with tracker.run("pretrain-base", tags={"prefect.flow_run_id": "abc"}) as t:
        t.log_params({"model": cfg.model.model_dump(mode="json")})
        pretrain_base(cfg.model, storage, base_stage(storage, cfg.model, uri), uri, tracker=t, progress=False)
        t.log_dict({"hello": 1}, "report.json")
        run_id = t.run_id
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.data.tags["prefect.flow_run_id"] == "abc"
    assert run.data.params["model.name"] == "react-micro-vit"
    assert "pretrain/loss" in run.data.metrics and "zeroshot/miniweb-fine/top1" in run.data.metrics
    assert len(client.get_metric_history(run_id, "pretrain/loss")) >= 1
    assert [a.path for a in client.list_artifacts(run_id)] == ["report.json"]
