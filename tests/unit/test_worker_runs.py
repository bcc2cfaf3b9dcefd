"""What a deployment run on a worker needs that a CLI run does not: a root that outlives the run's copy of the
code, one-line user errors in its logs, a clean temporary folder, a word when the worker's packages drift."""

import logging
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.common import _OneLineUserErrors
from react_core.config import ConfigError, deployment_run
from react_core.config_loading import load_config
from react_core.environment import lock_drift
from react_core.knowledge.img2dataset_env import NO_WANDB, without_wandb
from react_core.overrides import apply_overrides
from react_core.preflight import check_deployed

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "deployments" / "tiny.yaml"


def test_a_relative_root_goes_under_react_storage_root(monkeypatch, tmp_path):
    monkeypatch.setenv("REACT_STORAGE_ROOT", "s3://team-bucket/react/")
    assert load_config(TINY).storage.root == "s3://team-bucket/react/react-artifacts-tiny"
    monkeypatch.setenv("REACT_STORAGE_ROOT", str(tmp_path))
    assert load_config(TINY).storage.root == str(tmp_path / "react-artifacts-tiny")
    assert load_config(TINY, [f"storage.root={tmp_path}/own"]).storage.root == str(tmp_path / "own")  # absolute: kept
    with pytest.raises(ConfigError, match=r"storage.root: '\.\./up' leaves REACT_STORAGE_ROOT"):
        load_config(TINY, ["storage.root=../up"])


def test_a_deployment_run_refuses_a_relative_root_without_react_storage_root(monkeypatch, tmp_path):
    monkeypatch.delenv("REACT_STORAGE_ROOT", raising=False)
    assert load_config(TINY).storage.root == str(Path.cwd() / "react-artifacts-tiny")  # the CLI: the working folder
    with deployment_run():
        with pytest.raises(ConfigError) as err:
            apply_overrides(TINY, {"training": {"epochs": 1}})  # the README's example, as printed
        # an override that names an absolute root is what the run uses: the preset's relative one is never checked
        assert apply_overrides(TINY, {"storage": {"root": str(tmp_path)}}).storage.root == str(tmp_path)
    (line,) = str(err.value).splitlines()
    assert "storage.root: './react-artifacts-tiny' is relative" in line and "fix: set REACT_STORAGE_ROOT" in line


def test_a_deployment_run_needs_a_tracking_store_outside_its_copy(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    s3 = load_config(TINY, ["storage.root=s3://team-bucket/react"])
    with pytest.raises(ConfigError, match="fix: set MLFLOW_TRACKING_URI in the worker's environment"):
        check_deployed(s3)
    check_deployed(load_config(TINY, ["storage.root=/srv/react"]))  # sqlite under the root: kept
    check_deployed(load_config(TINY, ["storage.root=s3://b/r", "tracking.enabled=false"]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.team:5000")
    check_deployed(s3)


def _fail(exc):
    try:
        raise exc
    except (ConfigError, KeyError):
        return sys.exc_info()


def test_a_user_error_is_one_error_line_per_handler_and_a_bug_keeps_its_traceback():
    outs = [[], []]

    class Keep(logging.Handler):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def emit(self, record):
            self.out.append(self.format(record))

    logger = logging.getLogger("test.worker-runs")
    logger.propagate = False
    handlers = [Keep(o) for o in outs]
    for h in handlers:
        h.addFilter(_OneLineUserErrors())
        logger.addHandler(h)
    try:
        err = ConfigError("retrieval.task: 'miniweb-finee' is not a task; fix: did you mean 'miniweb-fine'?")
        logger.error("Task run failed with exception: %r", err, exc_info=_fail(err))  # the task's record ...
        logger.error("Encountered exception during execution: %r", err, exc_info=_fail(err))  # ... the flow's
        bug = KeyError("x")
        logger.error("Encountered exception during execution: %r", bug, exc_info=_fail(bug))
    finally:
        for h in handlers:
            logger.removeHandler(h)
    for out in outs:
        assert out[0] == "error: retrieval.task: 'miniweb-finee' is not a task; fix: did you mean 'miniweb-fine'?"
        assert len(out) == 2 and "Traceback" in out[1] and "KeyError" in out[1]


def test_lock_drift_names_what_moved_in_one_line(tmp_path):
    lock = tmp_path / "requirements.lock.txt"
    lock.write_text("# lock-platform: cp311\nprefect==3.9.1 \\\n    --hash=sha256:00\ntorch==2.14.1 \\\nnumpy==2.0.0\n")
    assert lock_drift(lock, {"prefect": "3.9.1", "torch": "2.14.1", "numpy": "2.0.0", "other": "1"}) is None
    line = lock_drift(lock, {"prefect": "3.8.0", "torch": "2.14.1"})
    assert "\n" not in line and "prefect 3.8.0 (lock: 3.9.1)" in line and "numpy (lock: 2.0.0) not installed" in line
    assert "fix: run `python3 bootstrap.py setup`" in line
    assert lock_drift(tmp_path / "absent.txt") is None
    assert lock_drift() is None  # this checkout's environment is its lock's


_A_FLOW_RUN = """
import multiprocessing, os, tempfile
import react_core  # first, as flows/ import it
import open_clip  # imports torch._dynamo, which makes its compile cache in $TMPDIR
def child(q):
    import react_core  # a spawned child imports it again: it keeps its parent's folder
    q.put(tempfile.gettempdir())
    open(os.path.join(tempfile.gettempdir(), "left-by-a-child"), "w").close()
if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,))
    p.start(); p.join()
    print(tempfile.gettempdir(), q.get(), sorted(os.listdir(tempfile.gettempdir())))
"""


def test_a_workers_flow_run_process_keeps_its_temporary_files_to_itself(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_A_FLOW_RUN)
    tmp = tmp_path / "worker-tmp"
    tmp.mkdir()
    # as a worker starts it: torch exports its cache dir once imported (this test process did), a worker did not
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "REACT_RUN_TMPDIR")}
    env |= {"TMPDIR": str(tmp), "PREFECT__FLOW_RUN_ID": "0b5e-run"}
    out = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ours, childs, files = out.stdout.split(" ", 2)
    assert Path(ours).parent == tmp and Path(ours).name.startswith("react-0b5e-run-") and childs == ours
    assert "torchinductor" in files and "left-by-a-child" in files, out.stdout + out.stderr[-2000:]  # written there
    assert list(tmp.iterdir()) == []  # ... and gone with the run's process
    del env["PREFECT__FLOW_RUN_ID"]  # not a worker's flow run (the CLI, a notebook): $TMPDIR as it is
    out = subprocess.run([sys.executable, "-c", "import react_core, tempfile; print(tempfile.gettempdir())"], env=env,
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert out.stdout.strip() == str(tmp)


def _wandb_file(q):
    import wandb

    q.put(getattr(wandb, "__file__", None))


def test_img2dataset_never_imports_wandb_here_or_in_its_spawned_processes():
    ctx = multiprocessing.get_context("spawn")  # as img2dataset starts its processes
    with without_wandb():
        q = ctx.Queue()
        p = ctx.Process(target=_wandb_file, args=(q,))
        p.start()
        child = q.get(timeout=120)
        p.join(timeout=60)
    assert child == os.path.join(NO_WANDB, "wandb", "__init__.py")
    assert NO_WANDB not in sys.path


_OUTPUT_GOES_AWAY = """
import logging, sys
from prefect.logging.handlers import PrefectConsoleHandler
logging.getLogger("run").addHandler(PrefectConsoleHandler(stream=sys.stderr))  # Prefect's console: rich
from react_core.on_worker import survive_closed_output
survive_closed_output()
print("started", flush=True)
sys.stdin.readline()  # the parent has closed its ends of our stdout and stderr: the worker died
for i in range(200):
    logging.getLogger("run").warning("progress %d", i)
    print("progress", i, flush=True)
open(sys.argv[1], "w").write("finished")
"""


def test_a_run_whose_worker_died_keeps_running_when_it_writes_output(tmp_path):
    done = tmp_path / "done"
    proc = subprocess.Popen([sys.executable, "-c", _OUTPUT_GOES_AWAY, str(done)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)  # fmt: skip
    assert proc.stdout.readline() == b"started\n"
    proc.stdout.close()
    proc.stderr.close()
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    assert proc.wait(timeout=120) == 0 and done.read_text() == "finished"


def test_the_automations_retry_a_silent_react_run_twice_and_every_pool_sends_heartbeats():
    import json

    import yaml
    from prefect.events.schemas.automations import AutomationCore, Posture

    autos = {a["name"]: AutomationCore.model_validate(a)
             for a in yaml.safe_load((REPO / "infra" / "automations.yaml").read_text())["automations"]}  # fmt: skip
    silent, retry = autos["react-crash-silent-runs"], autos["react-retry-crashed-runs"]
    assert silent.trigger.posture == Posture.Proactive and "prefect.flow-run.heartbeat" in silent.trigger.after
    assert silent.actions[0].type == "change-flow-run-state" and silent.actions[0].state.value == "CRASHED"
    assert retry.trigger.expect == {"prefect.flow-run.Crashed"}
    assert retry.trigger.match.model_dump()["prefect.run-count"] == ["1", "2"]  # twice, then a person looks
    assert retry.actions[0].state.value == "SCHEDULED" and retry.actions[0].force
    frequencies = [yaml.safe_load((REPO / "prefect.yaml").read_text())["definitions"]["work_pools"]["process"]
                   ["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]]  # fmt: skip
    for template in (REPO / "infra" / "work-pools").glob("*.json"):
        env = json.loads(template.read_text())["variables"]["properties"]["env"]["default"]
        frequencies.append(env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"])
    assert len(frequencies) == 3 and all(3 * int(f) <= silent.trigger.within.total_seconds() for f in frequencies)
