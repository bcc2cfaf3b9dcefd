"""What every REACT task shares: the cache policy, transient-only retries and the storage/tracker builders."""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

import react_core
from react_core.config import ConfigError, KnowledgeBaseConfig, StorageConfig, TrackingConfig
from react_core.storage import Storage
from react_core.tracking import Tracker, make_tracker

_logger = logging.getLogger(__name__)


def source_hash(root: Path) -> str:
    """Hash of every .py/.json file under ``root`` (names and contents)."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".json") and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _library_hash() -> str:
    return source_hash(Path(react_core.__file__).parent)


@dataclass
class LibraryCode(CachePolicy):
    """Cache key part: react_core's source. TASK_SOURCE hashes only the task's own (one-line) body, so
    without this a change inside the library (a new generator, a fixed loss) would be served stale."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        return _library_hash()


# Cache across runs on the task's inputs (configs and URIs hash as JSON; storage roots are absolute
# after validation), its source and the library's; the MLflow parent run id changes every run and
# must not bust the cache.
CACHE = INPUTS + TASK_SOURCE + LibraryCode() - "parent_run_id"

_TRANSIENT = (ConnectionError, TimeoutError, socket.timeout)
_TRANSIENT_ERRNO = {errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EPIPE, errno.EAGAIN}


def is_transient(exc: BaseException) -> bool:
    """Network hiccups and timeouts are worth a retry; bad inputs (config, data, model) are not."""
    if isinstance(exc, _TRANSIENT):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNO:
        return True
    name = type(exc).__name__
    return name in {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ClientConnectorError"}


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn`` for Prefect tasks: retry only transient failures."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as e:  # noqa: BLE001 - a result that cannot be read is not worth retrying
        _logger.debug("could not read failed state: %s", e)
        return False
    return isinstance(exc, BaseException) and is_transient(exc)


TASK_OPTIONS: dict[str, Any] = {
    "cache_policy": CACHE,
    "persist_result": True,
    "retries": 2,
    "retry_delay_seconds": 5,
    "retry_condition_fn": retry_transient,
}


def storage_of(config: StorageConfig) -> Storage:
    return Storage(config.root, config.options)


def tracker_of(config: TrackingConfig | None, storage: Storage) -> Tracker | None:
    """The tracker a task hands to react_core (None: this stage is not tracked)."""
    return make_tracker(config, storage) if config is not None else None


def embed_task_runner(kb: KnowledgeBaseConfig) -> TaskRunner:
    """Where the embedding tasks run: the workers of an existing Dask cluster (``kb.dask_address``) through
    prefect-dask, or the flow's process one task at a time (each task's DataLoader workers use the cores)."""
    if not kb.dask_address:
        return ThreadPoolTaskRunner(max_workers=1)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise ConfigError(
            f"knowledge_base.dask_address={kb.dask_address} needs prefect-dask; "
            "fix: pip install 'react-customize[dask]'"
        ) from exc
    return DaskTaskRunner(address=kb.dask_address)
