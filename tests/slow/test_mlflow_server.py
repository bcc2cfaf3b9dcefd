"""Tracking against a real MLflow tracking server (started here on 127.0.0.1)."""

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from react_core.pipeline import base_stage
from react_core.storage import Storage
from react_core.tracking import make_tracker
from react_core.training.pretrain import pretrain_base
from tests.conftest import free_port, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:  # poll the health endpoint: the server is usable once it answers
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {proc.stderr.read().decode()[-2000:]}")
            if time.time() > deadline:
                proc.kill()
                pytest.fail("mlflow server did not become healthy in 120 s")
            time.sleep(0.5)
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
