"""Runs left RUNNING by a process that is gone, found and ended.

A process killed by a signal (SIGKILL, the OOM killer, a lost node) cannot end its runs: they stay RUNNING
forever. Every run we open carries the host and process that opened it (:func:`owner_tags`); at the next start,
those of this host whose process no longer exists are ended KILLED. Runs of other hosts are left alone: their
processes cannot be checked from here.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

_logger = logging.getLogger(__name__)


def owner_tags() -> dict[str, str]:
    """The tags that say which process runs a run."""
    return {"react.host": socket.gethostname(), "react.pid": str(os.getpid())}


def end_abandoned(client: Any, experiment_id: str) -> list[str]:
    """End as KILLED the experiment's runs that a gone process of this host left RUNNING; returns their ids."""
    host, ended = socket.gethostname(), []
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
    for r in running:
        pid = r.data.tags.get("react.pid", "")
        if r.data.tags.get("react.host") != host or not pid.isdigit() or alive(int(pid)):
            continue
        client.set_terminated(r.info.run_id, status="KILLED")
        ended.append(r.info.run_id)
    if ended:
        _logger.warning(
            "marked %d run(s) KILLED, left RUNNING by a process that is gone: %s", len(ended), ", ".join(ended)
        )
    return ended


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True
