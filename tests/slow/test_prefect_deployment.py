"""The deployments as a team runs them: a real Prefect server and process worker on 127.0.0.1."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port, tiny_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _wait_healthy(url: str, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}")
        if time.time() > deadline:
            pytest.fail(f"{what} not healthy after {timeout} s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
        # prefect.yaml's pull step is set_working_directory: {{ $PWD }}, resolved at deploy time; a
        # subprocess's cwd= does not update PWD, so say it here rather than trust the caller's shell.
        "PWD": str(REPO),
    }
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    _wait_healthy(f"http://127.0.0.1:{port}/api/health", proc, "prefect server")
    yield env
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _prefect(env, *args, timeout=300):
    return subprocess.run(
        [BIN / "prefect", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_deploy_all_and_run_tiny_on_a_process_worker(prefect_server, tmp_path):
    from mlflow.tracking import MlflowClient

    env = prefect_server
    out = _prefect(env, "work-pool", "create", "react-process", "--type", "process")
    assert out.returncode == 0, out.stdout + out.stderr
    out = _prefect(env, "--no-prompt", "deploy", "--all")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "customize/demo" in out.stdout and "customize/tiny" in out.stdout

    worker_log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [BIN / "prefect", "worker", "start", "--pool", "react-process", "--type", "process"],
        env=env,
        cwd=REPO,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    try:
        root = tmp_path / "artifacts"
        config = tiny_config(root).model_dump(mode="json")
        out = _prefect(
            env,
            "deployment",
            "run",
            "customize/tiny",
            "--params",
            json.dumps({"config": config}),
            "--watch",
            timeout=600,
        )
        assert out.returncode == 0, out.stdout + out.stderr + (tmp_path / "worker.log").read_text()[-4000:]
        assert "Completed" in out.stdout
    finally:
        worker.send_signal(signal.SIGINT)  # the worker stops on SIGINT, not SIGTERM
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        worker_log.close()

    assert any((root / "evaluate").glob("*/_SUCCESS")), "the flow ran but wrote no evaluation"
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("react-tiny")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`prefect.flow_name` = 'customize'")
    assert len(runs) == 1 and runs[0].data.tags["prefect.flow_run_id"]
