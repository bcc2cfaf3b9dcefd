"""A run killed by a signal cannot end its MLflow runs: the next start marks them KILLED and says it resumes."""

import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_runs_left_running_by_a_killed_process_are_marked_killed_at_the_next_start(tmp_path, caplog):
    from mlflow.tracking import MlflowClient

    from react_core.config_loading import load_config
    from react_core.parent_run import end_run, start_run
    from react_core.tracking import MLflowTracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    killed = f"""
import os, signal
from react_core.tracking import MLflowTracker
t = MLflowTracker({uri!r}, "killed-test")
with t.run("customize") as parent:
    with t.run("train", parent_run_id=parent.run_id):
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a lost node would
"""
    out = subprocess.run([sys.executable, "-c", killed], capture_output=True, text=True, cwd=REPO, check=False)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    tracker = MLflowTracker(uri, "killed-test")
    client = MlflowClient(uri)
    left = client.search_runs([tracker.experiment_id])
    assert len(left) == 2 and {r.info.status for r in left} == {"RUNNING"}

    with tracker.run("still-working") as live, caplog.at_level(logging.WARNING):
        run_id = start_run(load_config(), "customize", tracker)
        assert client.get_run(live.run_id).info.status == "RUNNING"  # this process is alive: its run is left alone
    assert {client.get_run(r.info.run_id).info.status for r in left} == {"KILLED"}
    assert "resuming after 2 killed run(s)" in caplog.text
    assert client.get_run(run_id).info.status == "RUNNING"  # a parent stays open until the pipeline ends it
    end_run(tracker, run_id, "FAILED")
    assert client.get_run(run_id).info.status == "FAILED"
