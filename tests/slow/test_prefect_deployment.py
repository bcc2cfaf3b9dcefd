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

from react_core.config import load_config
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


def imagenet_on_the_miniweb(root: Path) -> dict:
    """The customize/imagenet preset with its data and scale overridden to the tiny mini-web.

    ViT-B/32's OpenAI weights, LAION on S3 and a 4096 batch cannot run here; what stays is what the
    deployment says about the method (gated-image, the paper's lr and weight decay) and where it tracks.
    """
    tiny = tiny_config(root).model_dump(mode="json")
    kept = {"training": ("mode", "lr", "weight_decay"), "tracking": ("experiment",)}
    for section, fields in kept.items():
        for field in fields:
            tiny[section].pop(field)
    return load_config(REPO / "deployments" / "imagenet.yaml", tiny).model_dump(mode="json")


def _run_deployment(env, name: str, config: dict, worker_log: Path):
    out = _prefect(env, "deployment", "run", name, "--params", json.dumps({"config": config}), "--watch", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr + worker_log.read_text()[-4000:]
    assert "Completed" in out.stdout, out.stdout


def _customize_runs(root: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([exp.experiment_id], filter_string="tags.`prefect.flow_name` = 'customize'")


def test_deploy_all_and_run_demo_and_imagenet_on_a_process_worker(prefect_server, tmp_path):
    env = prefect_server
    out = _prefect(env, "work-pool", "create", "react-process", "--type", "process")
    assert out.returncode == 0, out.stdout + out.stderr
    out = _prefect(env, "--no-prompt", "deploy", "--all")
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("customize/demo", "customize/tiny", "customize/imagenet"):
        assert name in out.stdout, out.stdout

    log_path = tmp_path / "worker.log"
    worker_log = open(log_path, "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [BIN / "prefect", "worker", "start", "--pool", "react-process", "--type", "process"],
        env=env,
        cwd=REPO,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    root = tmp_path / "artifacts"
    imagenet = imagenet_on_the_miniweb(root)
    try:
        _run_deployment(env, "customize/demo", tiny_config(root).model_dump(mode="json"), log_path)
        # Same root: the world, base model and knowledge-base stages come from the first run's cache.
        _run_deployment(env, "customize/imagenet", imagenet, log_path)
    finally:
        worker.send_signal(signal.SIGINT)  # the worker stops on SIGINT, not SIGTERM
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        worker_log.close()

    assert len(list((root / "evaluate").glob("*/_SUCCESS"))) == 2, "one evaluation per run (different training)"
    for experiment in ("react-tiny", "react-imagenet"):
        runs = _customize_runs(root, experiment)
        assert len(runs) == 1 and runs[0].data.tags["prefect.flow_run_id"], experiment
    assert imagenet["training"]["lr"] == 5e-4 and imagenet["training"]["mode"] == "gated-image"
