"""A tracking server that goes away mid-run: the run stops within a minute with one ``error:`` line naming the
server and the fix, exit 2, no traceback; once the server is back, the next run resumes from the kept stages."""

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import REPO, TINY_PRESET, start_mlflow_server

pytestmark = pytest.mark.slow


def _demo(root, url, *sets: str) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect"), "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "react_cli.main", "demo", "-c", str(TINY_PRESET), "-s", f"storage.root={root}/r",
           "-s", f"tracking.tracking_uri={url}"] + [a for s in sets for a in ("-s", s)]  # fmt: skip
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_tracking_server_killed_mid_run_is_one_line_and_the_next_run_resumes(tmp_path):
    server, url = start_mlflow_server(tmp_path / "mlflow")
    run = _demo(tmp_path, url, "training.epochs=200")
    lines: list[str] = []
    for line in run.stdout:  # until training has started (it logs to the server every few steps)
        lines.append(line)
        if "customize (gated-image):" in line:
            break
    else:
        pytest.fail("the run ended before training:\n" + "".join(lines[-50:]))
    os.killpg(server.pid, signal.SIGKILL)  # the server's host went away: nothing answers on its port
    server.wait()
    killed = time.monotonic()
    reader = threading.Thread(target=lambda: lines.extend(run.stdout), daemon=True)
    reader.start()
    rc = run.wait(timeout=600)  # a guard against a hang; the time it took is reported below
    stopped_after = time.monotonic() - killed
    reader.join(10)
    out = "".join(lines)
    print(f"the run stopped {stopped_after:.0f} s after the tracking server was killed")
    assert rc == 2, out[-4000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and f"the MLflow tracking server {url} stopped answering" in errors[0], out[-4000:]
    assert "Traceback" not in out, out[-6000:]
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("_SUCCESS")}

    # The server is started again on its store: the next run goes on from the stages finished before the outage
    # (none is made again) and records to the server.
    server, url = start_mlflow_server(tmp_path / "mlflow", port=int(url.rsplit(":", 1)[1]))
    try:
        again = _demo(tmp_path, url, "training.epochs=200")
        out2 = again.communicate(timeout=900)[0]
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    assert again.returncode == 0, out2[-4000:]
    assert kept and all(p.stat().st_mtime_ns == t for p, t in kept.items()), "a finished stage was made again"
    with sqlite3.connect(tmp_path / "mlflow" / "mlflow.db") as db:  # the cut-off parent was ended at the next start
        statuses = [status for (status,) in db.execute("SELECT status FROM runs")]
    assert statuses and "RUNNING" not in statuses, statuses
