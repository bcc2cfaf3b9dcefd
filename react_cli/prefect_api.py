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

import os
import signal
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
                f"Prefect's temporary server did not answer within {timeout} s ({first}); fix: run again on a less "
                "busy host, raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or point PREFECT_API_URL at a "
                "running `prefect server start`"
            ) from None
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(timeout))
    return server.api_url
