"""What a process a worker started for a flow run sets up when react_core is first imported (before torch is).

Its temporary files go into a folder of its own, removed when the process ends.

torch makes its compile cache (``torchinductor_{user}``) in $TMPDIR when ``torch._dynamo`` is *imported*, img2dataset's
spawned processes leave what they made there, and a worker runs flow after flow: left alone, every run added to the
worker's $TMPDIR. A process a worker started for a flow run (Prefect sets ``PREFECT__FLOW_RUN_ID`` in its
environment) points ``tempfile`` and $TMPDIR at ``{TMPDIR}/react-{flow run id[:8]}-*`` when react_core is first
imported, and removes it at exit. Processes it starts inherit the folder (``REACT_RUN_TMPDIR``).

And wandb is never imported: timm (open_clip's) imports it when it is installed, img2dataset always, and neither
uses it here; importing it makes two temporary folders that spawned processes never remove. ``import wandb`` finds
the empty module of ``knowledge/no_wandb`` (first on ``sys.path``, which spawned processes inherit).

And output can never end the run: its stdout and stderr are pipes to the worker, and a worker that dies (killed,
its host's OOM killer) closes them. rich, which prints Prefect's console logs, answers a broken pipe with
``SystemExit(1)`` (``Console.on_broken_pipe``, documented as the method to override): the run crashed at its next
log line while its training was fine. Here a closed pipe sends the rest of the output to /dev/null instead."""

from __future__ import annotations

import atexit
import errno
import logging
import os
import shutil
import sys
import tempfile

from react_core.knowledge.img2dataset_env import NO_WANDB

MARK = "REACT_RUN_TMPDIR"


def use_private_tmpdir(run_id: str) -> str:
    """Point this process's temporary files (and its children's) at a new folder removed when it exits."""
    # short: multiprocessing puts its sockets in here, and a Unix socket's path has at most 107 characters
    path = tempfile.mkdtemp(prefix=f"react-{run_id[:8]}-", dir=tempfile.gettempdir())
    tempfile.tempdir = os.environ["TMPDIR"] = os.environ[MARK] = path
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # not in a forked child that inherited the hook
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    return path


def _output_to_devnull() -> None:
    """stdout and stderr (the file descriptors, for this process and those it starts later) to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        try:
            os.dup2(devnull, fd)
        except OSError:
            pass
    os.close(devnull)


class _Tolerant:
    """A text stream whose writes survive its pipe closing: the first EPIPE sends the output to /dev/null."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def _call(self, name: str, *args):
        try:
            return getattr(self._stream, name)(*args)
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            _output_to_devnull()
            return getattr(self._stream, name)(*args) if name == "write" else None

    def write(self, text: str) -> int:
        return self._call("write", text)

    def flush(self) -> None:
        self._call("flush")

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def survive_closed_output() -> None:
    """Writes to a closed stdout/stderr never end this process: ``sys.stdout``/``sys.stderr`` tolerate EPIPE, and
    the rich consoles of the logging handlers already made (Prefect's) go quiet on a broken pipe, not exit."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _Tolerant):
            setattr(sys, name, _Tolerant(stream))
    for logger in [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values())]:
        for handler in getattr(logger, "handlers", []):
            console = getattr(handler, "console", None)
            if console is not None and hasattr(console, "on_broken_pipe"):

                def quiet(console=console) -> None:  # rich's hook, per console: its default raises SystemExit(1)
                    console.quiet = True
                    _output_to_devnull()

                console.on_broken_pipe = quiet


def on_worker() -> None:
    """At import: a worker's flow-run process gets its private folder; its own children keep their parent's."""
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not run_id:
        return
    if not os.environ.get(MARK):
        use_private_tmpdir(run_id)
    if NO_WANDB not in sys.path:
        sys.path.insert(0, NO_WANDB)
    survive_closed_output()
