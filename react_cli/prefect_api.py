"""The Prefect API a ``react`` command runs its flow against, started so that it never fails a run on a busy host.

Without ``PREFECT_API_URL`` Prefect starts a temporary ("ephemeral") server for the process on its first API
call: a uvicorn subprocess that migrates ``$PREFECT_HOME``'s sqlite database and registers block types, then
answers ``/health``. Two ``react`` processes on one ``PREFECT_HOME`` (two terminals, two schedules) did both at
once: one died in the migration (``alembic ... expected to match one row``, ``index ... already exists``) or in
block registration (``UNIQUE constraint failed: block_type.slug``), and on a loaded 2-core host the start alone
outran Prefect's default 20 s. Prefect has no lock around this, so we wrap it: the server is started here,
before the flow, under an exclusive lock file in ``PREFECT_HOME`` (held until it answers, i.e. until its
migration is done; a second process waits, then migrates nothing), with a start timeout that fits a busy host.
Prefect's own client then finds the server already running (``SubprocessASGIServer`` is one per process).
Each process still has its own server (one per process, as Prefect designs it): sharing one across processes
would need a server whose life outlasts the process that started it, which is what ``prefect server start`` is
for (README "Running with a team").
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from react_core.errors import ReactError
from react_core.storage import file_lock

# A loaded 2-core host took up to ~60 s to answer; Prefect's default (20 s) failed runs there.
STARTUP_TIMEOUT_S = 180


class PrefectApiError(ReactError, RuntimeError):
    """The Prefect API could not be started or reached; names the file or setting and the fix."""


def database_file() -> Path | None:
    """The sqlite file the ephemeral server uses (None for another database, e.g. Postgres)."""
    from prefect.settings import PREFECT_HOME, PREFECT_SERVER_DATABASE_CONNECTION_URL

    url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    if url is None:
        return Path(PREFECT_HOME.value()) / "prefect.db"
    url = url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)
    if url.startswith("sqlite") and ":///" in url:
        return Path(url.split(":///", 1)[1])
    return None


def check_database(path: Path) -> None:
    """A database file that sqlite cannot open as one (truncated, overwritten) is one line naming it."""
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc):
            return  # another process is writing it: not damage
        raise PrefectApiError(
            f"Prefect's database {path} is damaged (sqlite: {exc}); fix: move it aside (mv {path} {path}.damaged) "
            "and run again: Prefect makes a new one (its run history is lost; every finished stage is kept)"
        ) from None


def _libc_prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl() if sys.platform.startswith("linux") else None  # looked up here: nothing imports after fork


def _die_with_parent() -> None:
    """In the server's process before it runs: SIGTERM when the process that started it dies (Linux), so a CLI
    killed with SIGKILL (the OOM killer) leaves no server behind."""
    _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def server_log() -> Path:
    """Where the temporary server's own output goes (``$PREFECT_HOME/react-server.log``): its shutdown, which can
    interrupt a batch of events it was still writing, printed tracebacks ("Error flushing 1 events",
    ``CancelledError``) under a run that had succeeded. The run's own logs reach the terminal and the API as
    before; the file keeps the server's, for when it will not start."""
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()) / "react-server.log"


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())[:400]


def _open_log(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        if path.stat().st_size > 10 * 2**20:  # keep one old file, not an ever-growing one
            path.replace(path.with_suffix(".log.1"))
    return open(path, "ab")


def _own_session(server: Any) -> None:
    """Start Prefect's server subprocess in a session of its own, tied to our life.

    Why we wrap Prefect's ``_run_uvicorn_command``: Ctrl-C in a terminal signals the whole foreground process
    group, so the server died with the CLI's first SIGINT and the CLI then spent minutes retrying a dead API
    instead of recording the run as cancelled; and a CLI killed with SIGKILL left the server running for minutes.
    In its own session the server outlives the Ctrl-C long enough to record the outcome (it is stopped at exit,
    as Prefect stops it), and PR_SET_PDEATHSIG ends it when the CLI dies."""
    original = server._run_uvicorn_command

    def run() -> subprocess.Popen:
        real_popen = subprocess.Popen

        def popen(*args: Any, **kwargs: Any) -> subprocess.Popen:
            kwargs.setdefault("start_new_session", True)
            if _PRCTL is not None:
                kwargs.setdefault("preexec_fn", _die_with_parent)
            with _open_log(server_log()) as log:  # the child keeps its own copy of the descriptor
                kwargs.setdefault("stdout", log)
                kwargs.setdefault("stderr", subprocess.STDOUT)
                return real_popen(*args, **kwargs)

        subprocess.Popen = popen  # only for this call: Prefect's own Popen of the server
        try:
            return original()
        finally:
            subprocess.Popen = real_popen

    server._run_uvicorn_command = run


def ensure_api() -> str | None:
    """Start the ephemeral API server now, serialised across processes; returns its URL (None when
    ``PREFECT_API_URL`` names a server, which is then used as it is)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    if PREFECT_API_URL.value():
        return None
    db = database_file()
    if db is not None:
        check_database(db)
    from prefect.server.api.server import SubprocessASGIServer

    home = Path(PREFECT_HOME.value())
    home.mkdir(parents=True, exist_ok=True)
    timeout = max(STARTUP_TIMEOUT_S, int(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
    server = SubprocessASGIServer()
    _own_session(server)
    waiting = f"another react process is starting Prefect's server on {home}; waiting for it to finish migrating"
    with file_lock(str(home / ".react-server-start.lock"), waiting):
        try:
            server.start(timeout=timeout)
        except RuntimeError as exc:
            if db is not None:
                check_database(db)  # the usual reason a server that starts at all cannot answer
            first = " ".join(str(exc).split())[:300]
            raise PrefectApiError(
                f"Prefect's temporary server did not answer within {timeout} s ({first}; its log {server_log()} ends: "
                f"{_log_tail(server_log())}); fix: run again on a less "
                "busy host, raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or point PREFECT_API_URL at a "
                "running `prefect server start`"
            ) from None
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(timeout))
    return server.api_url


def cli_tags() -> tuple[str, str]:
    """The tags a ``react`` command's flow runs carry: which host and process runs them, so that the next start can
    tell a run whose process is gone (SIGKILL, the OOM killer, a reboot) from one still going."""
    return CLI_TAG, f"{CLI_TAG}:{socket.gethostname()}:{os.getpid()}"


CLI_TAG = "react-cli"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def crash_dead_runs() -> list[str]:
    """Mark Crashed the flow runs (and their unfinished task runs) that a ``react`` process on this host left
    Running or Pending when it died without a word (SIGKILL, the OOM killer): Prefect records a crash only when
    the process lives to say so. Returns the flow runs' names. Mirrors what the next run does for the MLflow
    parent (``Tracker.mark_abandoned``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    unfinished = [StateType.RUNNING, StateType.PENDING]
    host = socket.gethostname()
    crashed = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[CLI_TAG]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=unfinished)),
            )
        )
        for run in runs:
            owner = next((t for t in run.tags if t.startswith(f"{CLI_TAG}:{host}:")), None)
            if owner is None or not owner.rsplit(":", 1)[1].isdigit() or _pid_alive(int(owner.rsplit(":", 1)[1])):
                continue  # another host's, or its process is still running
            message = f"the react process {owner.rsplit(':', 1)[1]} on {host} that ran it is gone (killed)"
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
                task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=unfinished))),
            )
            for task_run in tasks:
                client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            crashed.append(run.name)
    return crashed
