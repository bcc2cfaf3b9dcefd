"""Shared fixtures: offline environment, a tiny generated world, local servers on free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# Before anything imports prefect, mlflow or img2dataset: they read these settings at import.
_HOME = tempfile.mkdtemp(prefix="react-tests-")
os.environ.setdefault("PREFECT_HOME", os.path.join(_HOME, "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import pytest

from react_core.config import ReactConfig
from react_core.config_loading import load_config
from react_core.storage import Storage

REPO = Path(__file__).resolve().parents[1]
TINY_PRESET = REPO / "deployments" / "tiny.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Poll ``url`` until it answers 200 (a server is usable once it does); fail naming ``what`` when ``proc`` exits
    or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            if proc.poll() is not None:
                err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                pytest.fail(f"{what} exited: {err}")
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"{what} did not answer {url} in {timeout:.0f} s")
            time.sleep(0.5)


def start_mlflow_server(
    root: Path, port: int | None = None, artifacts: str | None = None, env: dict | None = None
) -> tuple[subprocess.Popen, str]:
    """A real MLflow tracking server on 127.0.0.1 (``port`` or a free one; its store under ``root``, artifacts
    under ``root`` or at ``artifacts``, served through the server), in a process group of its own (``os.killpg``
    stops it and its worker), answering /health: (process, URL)."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
           "--artifacts-destination", artifacts or str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, **(env or {})})  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc, "mlflow server")
    return proc, url


def tiny_config(root: str | Path, **overrides) -> ReactConfig:
    """The tiny preset with its storage root moved to ``root`` (plus dotted overrides)."""
    extra = [f"{k}={v}" for k, v in overrides.items()]
    return load_config(TINY_PRESET, [f"storage.root={root}", *extra])


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> tuple[ReactConfig, Storage, str]:
    """A tiny mini-web generated once per session: (config, storage, stage URI)."""
    from react_core.pipeline import run_miniweb

    root = tmp_path_factory.mktemp("world")
    cfg = tiny_config(root)
    storage = Storage(cfg.storage.root)
    return cfg, storage, run_miniweb(storage, miniweb=cfg.miniweb, processes=1)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API: moto's server on 127.0.0.1 (a free port), with a bucket 'react-test'."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="react-test")
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's test harness (a temporary ephemeral API) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say, per tier, what ran and what was skipped or deselected (CI's log shows what it did not run)."""
    tiers: dict[str, dict[str, int]] = {}
    for status in ("passed", "failed", "skipped", "error"):
        for rep in terminalreporter.stats.get(status, []):
            if getattr(rep, "when", "call") != "call" and status in ("passed", "failed"):
                continue
            keywords = getattr(rep, "keywords", {})
            tier = next((m for m in ("slow", "integration") if m in keywords), "unit")
            tiers.setdefault(tier, {}).setdefault(status, 0)
            tiers[tier][status] += 1
    deselected = len(terminalreporter.stats.get("deselected", []))
    terminalreporter.section("tiers")
    for tier in ("unit", "integration", "slow"):
        got = tiers.get(tier, {})
        line = ", ".join(f"{n} {s}" for s, n in sorted(got.items())) or "none run"
        terminalreporter.write_line(f"{tier:12s} {line}")
    if deselected:
        terminalreporter.write_line(f"deselected   {deselected} (not run: see -m in the command line)")


@pytest.fixture(scope="session")
def tiny_chain(tiny_world, tmp_path_factory):
    """The library chain on the tiny world, up to downloaded pairs for the fine task.

    Returns a dict of URIs: base (pretrained stage), embed, index, retrieve, download, and the storage.
    """
    from react_core.config import DownloadConfig, IndexConfig, RetrievalConfig
    from react_core.data.datasets import read_vision_dataset
    from react_core.knowledge.download import download
    from react_core.knowledge.embed import embed_knowledge_base
    from react_core.knowledge.index import build_indices
    from react_core.knowledge.retrieve import retrieve
    from react_core.miniweb.serve import MiniWebServer
    from react_core.models import create_model, model_file
    from react_core.pipeline import run_pretrain_base
    from react_core.registry import TaskSpec
    from react_core.storage import join

    cfg, storage, world = tiny_world
    st = Storage(str(tmp_path_factory.mktemp("chain")))
    base = run_pretrain_base(st, model=cfg.model, miniweb_uri=world)
    model, tok = create_model(cfg.model.name, model_file(base), storage=st)
    shards = storage.ls(join(world, "kb", "shards"), "*.tar")
    emb = embed_knowledge_base(model, tok, storage, shards, st.stage("embed", {}), progress=False)
    idx = build_indices(st, emb, st.stage("index", {}), IndexConfig(index_key="Flat", recall_queries=20), k=30)
    task_data = read_vision_dataset(storage, join(world, "tasks", "miniweb-fine"), "test")
    task = TaskSpec("miniweb-fine", task_data.classnames, task_data.templates)
    ret = retrieve(model, tok, st, emb, idx, task, RetrievalConfig(k=30), st.stage("retrieve", {}))
    with MiniWebServer(storage, world) as server:
        dl = download(st, ret, st.stage("download", {}), DownloadConfig(processes_count=1), server.base_url)
    return {"storage": st, "world": world, "base": base, "embed": emb, "index": idx, "retrieve": ret,
            "download": dl, "config": cfg}  # fmt: skip
