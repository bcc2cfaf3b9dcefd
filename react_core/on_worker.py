"""What a process a worker started for a flow run sets up when react_core is first imported (before torch is).

Its temporary files go into a folder of its own, removed when the process ends.

torch makes its compile cache (``torchinductor_{user}``) in $TMPDIR when ``torch._dynamo`` is *imported*, img2dataset's
spawned processes leave what they made there, and a worker runs flow after flow: left alone, every run added to the
worker's $TMPDIR. A process a worker started for a flow run (Prefect sets ``PREFECT__FLOW_RUN_ID`` in its
environment) points ``tempfile`` and $TMPDIR at ``{TMPDIR}/react-run-{flow run id}-*`` when react_core is first
imported, and removes it at exit. Processes it starts inherit the folder (``REACT_RUN_TMPDIR``).

And wandb is never imported: timm (open_clip's) imports it when it is installed, img2dataset always, and neither
uses it here; importing it makes two temporary folders that spawned processes never remove. ``import wandb`` finds
the empty module of ``knowledge/no_wandb`` (first on ``sys.path``, which spawned processes inherit)."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

from react_core.knowledge.img2dataset_env import NO_WANDB

MARK = "REACT_RUN_TMPDIR"


def use_private_tmpdir(run_id: str) -> str:
    """Point this process's temporary files (and its children's) at a new folder removed when it exits."""
    path = tempfile.mkdtemp(prefix=f"react-run-{run_id}-", dir=tempfile.gettempdir())
    tempfile.tempdir = os.environ["TMPDIR"] = os.environ[MARK] = path
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # not in a forked child that inherited the hook
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    return path


def on_worker() -> None:
    """At import: a worker's flow-run process gets its private folder; its own children keep their parent's."""
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not run_id:
        return
    if not os.environ.get(MARK):
        use_private_tmpdir(run_id)
    if NO_WANDB not in sys.path:
        sys.path.insert(0, NO_WANDB)
