"""Ctrl-C stops a run: the terminal's SIGINT to the whole process group ends `react demo` with exit 130, records the
Prefect flow run and the MLflow parent as ended (not Running), and leaves no process behind; SIGKILL of the CLI
(the OOM killer) leaves no Prefect server behind, and the next react command marks the dead run Crashed."""

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import REPO, TINY_PRESET

pytestmark = pytest.mark.integration


def _start(tmp_path, *sets: str) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "react_cli.main", "demo", "-c", str(TINY_PRESET), "-s", f"storage.root={tmp_path}/r"]
    cmd += [a for s in sets for a in ("-s", s)]
    # A terminal's foreground job: a process group of its own, SIGINT at its default (not ignored as in a
    # non-interactive shell's background job).
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 - CI may ignore SIGINT
    )


def _wait_for(proc: subprocess.Popen, needle: str, lines: list[str]) -> None:
    """Read the run's output until ``needle`` appears (or the run ends)."""
    for line in proc.stdout:
        lines.append(line)
        if needle in line:
            return
    raise AssertionError("the run ended before " + needle + ":\n" + "".join(lines[-50:]))


def _group_alive(pgid: int) -> list[str]:
    out = subprocess.run(["pgrep", "-g", str(pgid), "-a"], capture_output=True, text=True, check=False)
    return out.stdout.strip().splitlines()


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def test_ctrl_c_mid_training_exits_130_records_the_end_and_leaves_no_process(tmp_path):
    proc = _start(tmp_path, "training.epochs=200")
    lines: list[str] = []
    _wait_for(proc, "customize (gated-image):", lines)  # training has started
    server = [p for p in _children_of(proc.pid) if "uvicorn" in " ".join(_running([p]))]
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    rc = proc.wait(timeout=120)  # a guard against a hang, not a speed goal
    reader.join(10)
    out = "".join(lines)
    assert rc == 130, out[-3000:]
    assert "interrupted: the run stopped" in out
    deadline = time.monotonic() + 30
    while _group_alive(proc.pid) and time.monotonic() < deadline:  # children get a moment to exit
        time.sleep(0.5)
    assert not _group_alive(proc.pid), _group_alive(proc.pid)
    assert server and not _running(server)  # Prefect's server, in a session of its own, was stopped too
    # Prefect's and MLflow's records: ended, not Running
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        states = [s for (s,) in db.execute("SELECT state_type FROM flow_run")]
    assert states and all(s in ("CANCELLED", "CRASHED", "FAILED") for s in states), states
    with sqlite3.connect(tmp_path / "r" / "mlflow.db") as db:
        parents = [
            s for (s,) in db.execute("SELECT status FROM runs WHERE name = 'customize' OR name LIKE '%customize%'")
        ]
    assert parents and all(s in ("KILLED", "FAILED") for s in parents), parents


def test_sigkill_of_the_cli_leaves_no_process_behind_and_the_next_start_marks_its_run_crashed(tmp_path):
    proc = _start(tmp_path, "training.epochs=200")
    lines: list[str] = []
    _wait_for(proc, "customize (gated-image):", lines)
    children = _children_of(proc.pid)
    assert children
    proc.kill()  # SIGKILL: no handler runs, as with the OOM killer
    proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while _running(children) and time.monotonic() < deadline:  # PR_SET_PDEATHSIG: SIGTERM as the CLI dies
        time.sleep(0.5)
    alive = _running(children)
    assert not alive, alive
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        left = [s for (s,) in db.execute("SELECT state_type FROM flow_run")]
    assert left == ["RUNNING"]  # nobody lived to record the end

    # The next react command on this PREFECT_HOME finds the run Running with its process gone: Crashed.
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    nxt = subprocess.run([sys.executable, "-c", NEXT_COMMAND], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600, check=False)  # fmt: skip
    assert nxt.returncode == 0 and "result 42" in nxt.stdout, nxt.stderr[-3000:]
    assert "marked Crashed" in nxt.stderr, nxt.stderr[-3000:]
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        flows = dict(db.execute("SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id"))
        tasks = [s for (s,) in db.execute("SELECT state_type FROM task_run")]
    assert flows == {"customize": "CRASHED", "next": "COMPLETED"}, flows
    assert "RUNNING" not in tasks and "CRASHED" in tasks, tasks


# What every react command does around its flow (react_cli.main._run_flow), with a flow of its own.
NEXT_COMMAND = (
    "from react_cli.main import _env_defaults, _run_flow; _env_defaults()\n"
    "from prefect import flow\n"
    "print('result', _run_flow(flow(name='next')(lambda: 42)))\n"
)


def _running(pids: list[int]) -> list[str]:
    """The command lines of those of ``pids`` still running (a zombie waiting for init to reap it is not)."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{pid}/cmdline") as f:
                out.append(f.read().replace("\0", " "))
        except FileNotFoundError:
            continue
    return out
