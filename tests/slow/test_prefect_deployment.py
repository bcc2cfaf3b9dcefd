"""The deployments as a team runs them: a real Prefect server and process worker on 127.0.0.1."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from react_core.config_loading import load_config
from react_core.models import load_state_dict
from react_core.storage import Storage
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
        # as infra/compose.yaml runs the server: `--watch` streams the runs' logs
        "PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED": "true",
        "PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED": "true",
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


@pytest.fixture
def mlflow_on_s3(s3_endpoint, tmp_path):
    """A real MLflow tracking server whose artifacts go to moto's S3 (served through the server, as a team runs
    it: clients need no S3 credentials for MLflow)."""
    port = free_port()
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow-server.db",
         "--artifacts-destination", "s3://react-test/mlflow-artifacts", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url + "/health", proc, "mlflow server")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _prefect(env, *args, timeout=300, cwd=REPO):
    return subprocess.run(
        [BIN / "prefect", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def _git(*args, cwd=REPO):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)


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


GPU_POOLS = {
    "react-gpu-docker": ("docker", "docker-gpu.json"),
    "react-gpu-kubernetes": ("kubernetes", "kubernetes-gpu.json"),
}


def _readme_pool_setup() -> list[list[str]]:
    """The work-pool commands of README "Running with a team" step 2, as printed (the automations line is left to
    the test of the automations: a second copy of them would act twice)."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("2. **Work pools**") :].split("```")[1]
    return [line.split()[1:] for line in block.splitlines() if line.strip().startswith("prefect work-pool")]


def _create_pools(env) -> None:
    """The work pools of README "Running with a team", with the commands it prints: the process pool, the GPU pools
    from their templates (a pool without a worker is only a queue: runs of the GPU deployments wait for a GPU
    worker) and the process pool's concurrency limit (one GPU host)."""
    commands = _readme_pool_setup()
    assert ["work-pool", "set-concurrency-limit", "react-process", "1"] in commands, commands
    for args in commands:
        extra = ["--overwrite"] if args[1] == "create" else []  # the server is shared by this module's tests
        out = _prefect(env, *args, *extra)
        assert out.returncode == 0, out.stdout + out.stderr
    for name, (_, file) in GPU_POOLS.items():
        assert ["work-pool", "create", name, "--type", GPU_POOLS[name][0], "--base-job-template",
                f"infra/work-pools/{file}"] in commands, commands  # fmt: skip


def _run_deployment(env, name: str, config: dict, worker_log: Path) -> tuple[str, str]:
    """Run a deployment to its end; returns the flow run's id and what `--watch` printed."""
    out = _prefect(env, "deployment", "run", name, "--params", json.dumps({"config": config}), "--watch", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr + worker_log.read_text()[-4000:]
    assert "Completed" in out.stdout, out.stdout
    return re.search(r"UUID: ([0-9a-f-]{36})", out.stdout).group(1), out.stdout


def _schedules(env, deployment: str) -> list[bool]:
    """Whether each schedule of a deployment is active, as the server has it."""
    import asyncio

    from prefect.client.orchestration import PrefectClient

    async def go():
        async with PrefectClient(env["PREFECT_API_URL"]) as client:
            return [s.active for s in (await client.read_deployment_by_name(deployment)).schedules]

    return asyncio.run(go())


def _flow_run_logs(env, flow_run_id: str) -> str:
    import asyncio

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def go():
        async with PrefectClient(env["PREFECT_API_URL"]) as client:
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            return "\n".join(f"{log.name}: {log.message}" for log in logs)

    return asyncio.run(go())


def _flow_run_artifacts(env, flow_run_id: str) -> dict[str, tuple[str, str]]:
    """{key: (type, data)} of the artifacts of a flow run, read back through the server's API."""
    import asyncio

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def go():
        async with PrefectClient(env["PREFECT_API_URL"]) as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )
            return {a.key: (a.type, str(a.data)) for a in found if a.key}

    return asyncio.run(go())


def _flow_run_result(env, flow_run_id: str):
    """Where the server says a flow run's result is (the metadata of its persisted return value)."""
    import asyncio

    from prefect.client.orchestration import PrefectClient

    async def go():
        async with PrefectClient(env["PREFECT_API_URL"]) as client:
            data = (await client.read_flow_run(flow_run_id)).state.data
            return getattr(data, "metadata", data)

    return asyncio.run(go())


def _customize_runs(root: Path | str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(root if "://" in str(root) else f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([exp.experiment_id], filter_string="tags.`prefect.flow_name` = 'customize'")


def _flow_run(env, flow_run_id: str):
    import asyncio

    from prefect.client.orchestration import PrefectClient

    async def go():
        async with PrefectClient(env["PREFECT_API_URL"]) as client:
            return await client.read_flow_run(flow_run_id)

    return asyncio.run(go())


def _deployment_runs(env, deployment: str) -> list:
    """The flow runs of a deployment, as the server has them."""
    import asyncio

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def go():
        async with PrefectClient(env["PREFECT_API_URL"]) as client:
            dep = await client.read_deployment_by_name(deployment)
            return await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))

    return asyncio.run(go())


def _start_worker(env, home: Path, folder: Path, log_path: Path, team: dict | None = None) -> subprocess.Popen:
    """A process worker as on another host: its own PREFECT_HOME and working directory, and the environment README
    "Running with a team" gives a worker (``team``: the shared root, the S3 endpoint, the MLflow server)."""
    folder.mkdir()
    return subprocess.Popen(
        [BIN / "prefect", "worker", "start", "--pool", "react-process", "--type", "process"],
        env={**env, "PREFECT_HOME": str(home), **(team or {})},
        cwd=folder,
        stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT,
    )


def _stop(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGINT)  # the worker stops on SIGINT, not SIGTERM
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()


def _task_states(env, flow_run_id: str) -> dict[str, str]:
    import asyncio

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def go():
        async with PrefectClient(env["PREFECT_API_URL"]) as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return {r.name: r.state.name for r in runs}

    return asyncio.run(go())


def test_deployed_from_one_checkout_run_by_workers_elsewhere_sharing_results_on_s3(
    prefect_server, s3_endpoint, mlflow_on_s3, tmp_path
):
    """README "Running with a team" as printed. Deploy from a checkout that is then deleted (the deploying machine);
    a process worker with its own PREFECT_HOME and working directory (another host) and the README's worker
    environment (REACT_STORAGE_ROOT on moto's S3, the MLflow server) clones the deployed commit and runs the README's
    example (`{"config": {"training": {"epochs": 1}}}`: the tiny preset's relative root goes under the shared
    root, not into the run's temporary copy). A second worker (another PREFECT_HOME, another folder) runs the same
    parameters from the shared cache: all Cached. A user error is one line in the run's state and logs, and its
    record is under the shared root. The deployed commit's lock differs from the worker's packages: said once."""
    env = prefect_server
    origin, deployer, host = tmp_path / "origin.git", tmp_path / "deployer", tmp_path / "worker-host"
    _git("clone", "--quiet", "--bare", str(REPO), str(origin))
    _git("clone", "--quiet", str(origin), str(deployer))
    lock = deployer / "requirements.lock.txt"  # a commit whose lock moved one pin the workers have not installed
    lock.write_text(re.sub(r"^pyyaml==\S+", "pyyaml==0.0.1", lock.read_text(), count=1, flags=re.MULTILINE))
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-am", "move a pin", cwd=deployer)
    _git("push", "--quiet", "origin", "HEAD", cwd=deployer)
    _create_pools(env)
    out = _prefect(env, "--no-prompt", "deploy", "--all", cwd=deployer)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("customize/demo", "customize/tiny", "customize/imagenet", "evaluate/demo", "evaluate/imagenet",
                 "evaluate/tiny", "prepare-world/demo"):  # fmt: skip
        assert name in out.stdout, out.stdout
    assert _schedules(env, "evaluate/demo") == [True] and _schedules(env, "evaluate/imagenet") == [False]
    shutil.rmtree(deployer)  # nothing of the deploying machine's disk is left for the worker

    tracking = mlflow_on_s3
    team = {"REACT_STORAGE_ROOT": "s3://react-test/team", "AWS_ENDPOINT_URL": s3_endpoint,
            "MLFLOW_TRACKING_URI": tracking}  # fmt: skip
    # the worker host's $TMPDIR, to see what runs leave there; short, as /tmp is (multiprocessing makes Unix sockets
    # in it, whose paths have at most 107 characters)
    worker_tmp = Path(tempfile.mkdtemp(prefix="w", dir="/tmp"))
    log_path = tmp_path / "worker.log"
    worker = _start_worker(env, tmp_path / "worker-prefect-home", host, log_path, {**team, "TMPDIR": str(worker_tmp)})
    root = tmp_path / "artifacts"
    imagenet = imagenet_on_the_miniweb(root)
    imagenet["tracking"]["tracking_uri"] = f"sqlite:///{root}/mlflow.db"  # its own registry, not the team's
    readme = {"training": {"epochs": 1}}  # README step 4, as printed
    try:
        tiny_run_id, tiny_watch = _run_deployment(env, "customize/tiny", readme, log_path)
        # The version it registered emitted react.model.registered; evaluate/tiny's trigger (an automation made by
        # `deploy`) scheduled an evaluation of that version, which this worker runs (after the run before it: the
        # pool's limit is 1).
        triggered = _wait_for("the evaluation the registration triggered", lambda: _deployment_runs(env, "evaluate/tiny"),
                              120, 1)  # fmt: skip
        _run_deployment(env, "customize/imagenet", imagenet, log_path)
        final = {"Completed", "Failed", "Crashed", "Cancelled"}
        _wait_for(
            "the triggered evaluation ending", lambda: _flow_run(env, triggered[0].id).state.name in final, 600, 2
        )
        # A user error (README "Your own task": a misspelt task), on the warm worker.
        out = _prefect(env, "deployment", "run", "customize/tiny", "--params",
                       json.dumps({"config": {"retrieval": {"task": "miniweb-finee"}}}), "--watch", timeout=600)  # fmt: skip
        assert out.returncode != 0 and "Failed" in out.stdout, out.stdout + out.stderr
        typo_id = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout).group(1)
    finally:
        _stop(worker)
    left_on_worker = sorted(p.name for p in worker_tmp.iterdir())
    shutil.rmtree(worker_tmp)
    other = _start_worker(env, tmp_path / "other-prefect-home", tmp_path / "other-host", log_path, team)
    try:
        # Two runs scheduled at once for this one host (README step 2's limit of 1): the same parameters again, and
        # a run that fails after its parent MLflow run opened (retrieval finds too few pairs per class).
        failing = {**readme, "retrieval": {"min_per_class": 100000}}
        submitted = []
        for params in (readme, failing):
            out = _prefect(env, "deployment", "run", "customize/tiny", "--params", json.dumps({"config": params}))
            assert out.returncode == 0, out.stdout + out.stderr
            submitted.append(re.search(r"UUID: ([0-9a-f-]{36})", out.stdout).group(1))
        again, failed_id = submitted
        final = {"Completed", "Failed", "Crashed", "Cancelled"}
        for run_id in submitted:
            _wait_for(
                "a submitted run ending", lambda run_id=run_id: _flow_run(env, run_id).state.name in final, 600, 1
            )
    finally:
        _stop(other)
    first, second = sorted((_flow_run(env, i) for i in submitted), key=lambda r: r.start_time)
    assert second.start_time >= first.end_time, (first.start_time, first.end_time, second.start_time)
    print(f"two runs submitted at once: the second started {(second.start_time - first.end_time).total_seconds():.1f} s "
          f"after the first ended ({(first.end_time - first.start_time).total_seconds():.1f} s)")  # fmt: skip
    assert [_flow_run(env, i).state.name for i in submitted] == ["Completed", "Failed"]
    stages = {n: s for n, s in _task_states(env, again).items() if not n.startswith(("preflight", "start-", "end-",
              "embed-plan", "publish", "register", "report", "evaluation-table"))}  # fmt: skip
    assert stages and set(stages.values()) == {"Cached"}, stages
    shared = "s3://react-test/team/react-artifacts-tiny"
    stored = Storage(shared, {"endpoint_url": s3_endpoint})
    assert stored.ls(f"{shared}/train", "*") and not list(host.rglob("*")), list(host.rglob("*"))[:5]
    assert left_on_worker == [], left_on_worker  # the runs' temporary files went with them

    # The user error: one line in the run's state, one error: line in its logs, no traceback; its record is
    # under the shared root, where the other worker and the server read it.
    typo = _flow_run(env, typo_id)
    assert typo.state.name == "Failed" and "\n" not in typo.state.message, typo.state.message
    assert "unknown target task 'miniweb-finee'" in typo.state.message, typo.state.message
    typo_logs = _flow_run_logs(env, typo_id)
    errors = [line for line in typo_logs.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "unknown target task 'miniweb-finee'" in errors[0], typo_logs[-3000:]
    assert "Traceback" not in typo_logs, typo_logs[-3000:]
    record = _flow_run_result(env, typo_id)
    assert record.storage_key.startswith(f"{shared}/prefect-results/") and stored.exists(record.storage_key), record
    print(f"user error: {(typo.end_time - typo.start_time).total_seconds():.1f} s from start to Failed")

    assert len(list((root / "evaluate").glob("*/_SUCCESS"))) == 1
    tiny_run = next(
        r for r in _customize_runs(tracking, "react-tiny") if r.data.tags["prefect.flow_run_id"] == tiny_run_id
    )
    # The team's MLflow server: the parent ended with the flow, the model registered, artifacts on S3.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    assert tiny_run.info.status == "FINISHED" and tiny_run.data.tags["react.stage.train.run"]
    version = client.get_model_version_by_alias("react-miniweb-fine-react-micro-vit", "candidate")
    assert version.tags["react.train_stage"].startswith(f"{shared}/train/")
    # The first version is champion only on evidence: a gain on its target, at most 0.02 lost elsewhere (one epoch
    # here may not earn it).
    aliases = {a: str(v) for a, v in client.get_registered_model("react-miniweb-fine-react-micro-vit").aliases.items()}
    deltas = {
        d: float(version.tags[f"{d}/accuracy/delta"]) for d in ("miniweb-fine", "miniweb-generic", "miniweb-coarse")
    }
    earned = deltas["miniweb-fine"] > 0 and min(deltas["miniweb-generic"], deltas["miniweb-coarse"]) >= -0.02
    assert aliases == ({"candidate": str(version.version)} | ({"champion": str(version.version)} if earned else {}))
    # The evaluation that followed the registration: one run, of that version, completed on the worker, its MLflow
    # parent named after the version it evaluated.
    (evaluation,) = _deployment_runs(env, "evaluate/tiny")  # once: the cached re-run registered nothing new
    uri = f"models:/react-miniweb-fine-react-micro-vit/{version.version}"
    assert evaluation.parameters["customized"] == uri and evaluation.state.name == "Completed", evaluation.state
    registered_by = _flow_run(env, tiny_run_id)
    print(f"triggered evaluation: created {(evaluation.created - registered_by.start_time).total_seconds():.1f} s after "
          f"the customize run started ({(registered_by.end_time - registered_by.start_time).total_seconds():.1f} s "
          f"long), ran {(evaluation.end_time - evaluation.start_time).total_seconds():.1f} s")  # fmt: skip
    (evaluated,) = client.search_runs(
        [client.get_experiment_by_name("react-tiny").experiment_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{evaluation.id}'",
    )
    assert evaluated.info.run_name.startswith(f"evaluate {uri} · ") and evaluated.info.status == "FINISHED"
    assert evaluated.data.metrics["target/accuracy/delta"] == pytest.approx(deltas["miniweb-fine"], abs=1e-4)
    # an MLflow model linked to the train run, its towers on the server's S3
    # (read through the logged model: a run's list_artifacts resolves logged models through MLflow's process-wide
    # tracking URI, which an earlier test of this session pointed at its own server)
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.source_run_id == version.run_id
    assert {"MLmodel", "clip_pyfunc.py"} <= {a.path for a in client.list_logged_model_artifacts(logged.model_id)}
    mlflow_store = Storage("s3://react-test/mlflow-artifacts", {"endpoint_url": s3_endpoint})
    stored_files = mlflow_store.fs.find(mlflow_store.path(mlflow_store.root))
    assert any(u.endswith("/artifacts/image_encoder.pt2") for u in stored_files)
    params = tiny_run.data.params
    tiny = load_config(REPO / "deployments" / "tiny.yaml")
    assert params["training.epochs"] == "1"  # the field the run named ...
    assert params["model.name"] == tiny.model.name == "react-micro-vit"  # ... and the preset's others
    assert params["training.gated_layers"] == str(tiny.training.gated_layers)
    assert params["retrieval.k"] == str(tiny.retrieval.k) and params["miniweb.kb_size"] == str(tiny.miniweb.kb_size)
    failed_run = next(
        r for r in _customize_runs(tracking, "react-tiny") if r.data.tags["prefect.flow_run_id"] == failed_id
    )
    assert failed_run.info.status == "FAILED" and failed_run.data.tags["react.stage.index"]  # got that far
    logs = _flow_run_logs(env, tiny_run_id)  # react_core's own lines reach the run's logs in the UI
    result = _flow_run_result(env, tiny_run_id)  # the flow's return value, stored beside the stages
    assert result.storage_key.startswith(f"{shared}/prefect-results/"), result
    assert stored.exists(result.storage_key)
    drift = [line for line in logs.splitlines() if "differs from requirements.lock.txt" in line]
    assert len(drift) == 1 and "pyyaml" in drift[0] and "(lock: 0.0.1)" in drift[0], drift
    watched = re.sub(r"\s+", "", tiny_watch)  # Rich wraps the streamed log lines at the console's width
    assert re.search(
        r"REACTresult:customizedmodel:s3://react-test/team/react-artifacts-tiny/train/\S+?/model\.pt;MLflowrun:http",
        watched,
    ), tiny_watch[-4000:]
    # the table is the run's last log lines: what --watch prints before the final state
    table_at = watched.rfind("evaluation(zero-shot,base->customized):datasetrolemetricbasecustomizeddelta")
    assert table_at > watched.rfind("REACTresult:") and "miniweb-finetargetaccuracy" in watched[table_at:], tiny_watch[
        -4000:
    ]
    assert f"REACT result: customized model: {shared}/train/" in logs
    artifacts = _flow_run_artifacts(env, tiny_run_id)  # what the Prefect UI shows on the run's Artifacts tab
    assert (artifacts["evaluation"][0], artifacts["summary"][0]) == ("table", "markdown"), artifacts
    # link artifacts are stored as markdown links: [text](target)
    assert {"customized-model", "mlflow-run", "registered-version"} <= set(artifacts), artifacts
    assert "/#/models/react-miniweb-fine-react-micro-vit/versions/" in artifacts["registered-version"][1]
    assert "react_core.knowledge.download: download:" in logs, logs[-3000:]
    # the long stages' progress, as lines in the run's logs (no terminal on a worker)
    assert re.search(r"react_core\.progress: customize \(gated-image\): 100%", logs), logs[-3000:]
    (imagenet_run,) = _customize_runs(root, "react-imagenet")
    assert imagenet_run.data.tags["prefect.flow_run_id"]
    assert imagenet["training"]["lr"] == 5e-4 and imagenet["training"]["mode"] == "gated-image"


def test_gpu_pools_made_from_the_templates_run_the_gpu_deployments_as_asked(prefect_server):
    """The GPU pools created on a real server from infra/work-pools/*.json; `deploy --all` puts the GPU
    deployments on them (the server validates their job variables against the pools' schemas); the workers' own
    code turns pool + deployment + a flow run into the container / Job they would start."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_docker.worker import DockerWorkerJobConfiguration
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    env = prefect_server
    _create_pools(env)
    out = _prefect(env, "--no-prompt", "deploy", "--all")
    assert out.returncode == 0, out.stdout + out.stderr
    configs = {
        "react-gpu-docker": DockerWorkerJobConfiguration,
        "react-gpu-kubernetes": KubernetesWorkerJobConfiguration,
    }

    async def go():
        async with get_client() as client:
            made = {}
            for pool_name, (_, file) in GPU_POOLS.items():
                pool = await client.read_work_pool(pool_name)
                assert pool.base_job_template == json.loads((REPO / "infra" / "work-pools" / file).read_text())
            for name in ("imagenet-docker", "imagenet-kubernetes", "imagenet-multinode"):
                dep = await client.read_deployment_by_name(f"customize/{name}")
                pool = await client.read_work_pool(dep.work_pool_name)
                run = await client.create_flow_run_from_deployment(dep.id)
                cfg = await configs[pool.name].from_template_and_values(
                    pool.base_job_template, dep.job_variables, client=client
                )
                flow = await client.read_flow(dep.flow_id)
                cfg.prepare_for_flow_run(run, deployment=dep, flow=flow)
                made[name] = cfg
            return made

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        made = asyncio.run(go())
    docker_cfg = made["imagenet-docker"]
    assert docker_cfg.image == "react-worker:cuda" and docker_cfg.command  # the worker's flow-run command
    assert docker_cfg.container_create_kwargs["device_requests"][0]["count"] == -1
    assert docker_cfg.container_create_kwargs["shm_size"] == "32g"
    for name, gpus, shm in (("imagenet-kubernetes", 8, "64Gi"), ("imagenet-multinode", 1, "16Gi")):
        manifest = made[name].job_manifest
        pod = manifest["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus, name
        assert pod["volumes"][0]["emptyDir"]["sizeLimit"] == shm, name
        env_names = {e["name"] for e in container["env"]}
        assert {"PREFECT__FLOW_RUN_ID", "PREFECT_LOGGING_EXTRA_LOGGERS"} <= env_names, env_names
    assert made["imagenet-multinode"].job_manifest["spec"]["template"]["spec"]["serviceAccountName"] == "react-trainer"


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc): a worker's flow-run processes run in sessions of their own."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _wait_for(what: str, check, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(interval)
    return found


def _states(env, flow_run_id: str) -> list[str]:
    import asyncio

    from prefect.client.orchestration import PrefectClient

    async def go():
        async with PrefectClient(env["PREFECT_API_URL"]) as client:
            return [s.name for s in sorted(await client.read_flow_run_states(flow_run_id), key=lambda s: s.timestamp)]

    return asyncio.run(go())


def test_a_run_whose_worker_host_died_is_scheduled_again_and_trains_what_an_uninterrupted_run_trains(
    prefect_server, tmp_path
):
    """README "Running with a team" step 2's automations on a real server: a worker and its flow-run process
    killed mid-training (as a host dies) leave the run silent; the server marks it Crashed after 90 s without a
    heartbeat and schedules it again; the second worker picks it up, its finished stages are cached, training
    resumes from the newest checkpoint, and the model equals the one an uninterrupted run trains."""
    import torch

    env = prefect_server
    origin, deployer = tmp_path / "origin.git", tmp_path / "deployer"
    _git("clone", "--quiet", "--bare", str(REPO), str(origin))
    _git("clone", "--quiet", str(origin), str(deployer))
    _create_pools(env)
    out = _prefect(env, "--no-prompt", "deploy", "--all", cwd=deployer)
    assert out.returncode == 0, out.stdout + out.stderr
    out = _prefect(env, "automation", "create", "--from-file", str(REPO / "infra" / "automations.yaml"))
    assert out.returncode == 0, out.stdout + out.stderr
    shared = tmp_path / "shared"
    team = {"REACT_STORAGE_ROOT": str(shared)}
    params = {"training": {"epochs": 30, "checkpoint_every": 10}}
    log_path = tmp_path / "workers.log"
    a = _start_worker(env, tmp_path / "a-home", tmp_path / "a-host", log_path, team)
    b = None
    try:
        out = _prefect(env, "deployment", "run", "customize/tiny", "--params", json.dumps({"config": params}))
        assert out.returncode == 0, out.stdout + out.stderr
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout).group(1)
        train = shared / "react-artifacts-tiny" / "train"
        _wait_for("a checkpoint of the train stage", lambda: list(train.glob("*/checkpoints/step-*.pt")), 600)
        b = _start_worker(env, tmp_path / "b-home", tmp_path / "b-host", log_path, team)
        for pid in [a.pid, *_descendants(a.pid)]:  # the host dies: the worker and the run's process with it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        a.wait(timeout=30)
        assert not list(train.glob("*/_SUCCESS")), "training finished before the kill: give it more epochs"
        final = {"Completed", "Failed", "Cancelled"}
        _wait_for("the run finishing on the other worker", lambda: _flow_run(env, run_id).state.name in final, 900, 2)
    finally:
        _stop(a)
        if b is not None:
            _stop(b)
    run = _flow_run(env, run_id)
    states = _states(env, run_id)
    assert run.state.name == "Completed" and run.run_count == 2, (run.state, run.run_count, states)
    assert states.index("Crashed") < states.index("AwaitingRetry") < states.index("Completed"), states
    (model,) = train.glob("*/model.pt")
    summary = json.loads((model.parent / "model.json").read_text())
    assert summary["resumed_from_step"] >= 10, summary

    # The same run, uninterrupted, in one process (the CLI, on its own root).
    ref = tmp_path / "reference"
    cli = {k: v for k, v in env.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path / "cli-home")}
    out = subprocess.run(
        [sys.executable, "-m", "react_cli.main", "demo", "-q", "-c", str(REPO / "deployments" / "tiny.yaml"),
         "-s", f"storage.root={ref}", "-s", "training.epochs=30", "-s", "training.checkpoint_every=10"],
        cwd=REPO, env=cli, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    (whole,) = (ref / "train").glob("*/model.pt")  # another root: its stages have versions of their own
    # Equal up to float summation order (bit-identical in one run; within 4e-4, the loss within 1e-6, in another:
    # the worker's and the CLI's processes can reduce in another order); a run resumed from scratch would differ
    # by far more.
    x, y = load_state_dict(str(model)), load_state_dict(str(whole))
    assert x.keys() == y.keys() and all(torch.allclose(x[k], y[k], atol=2e-3) for k in x)
    assert summary["final_loss"] == pytest.approx(json.loads((whole.parent / "model.json").read_text())["final_loss"],
                                                  abs=1e-4)  # fmt: skip
