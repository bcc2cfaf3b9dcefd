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

from prefect import get_run_logger
from prefect.cache_policies import CachePolicy
from prefect.exceptions import MissingContextError
from prefect.task_runners import TaskRunner

import react_core
from react_core import pipeline
from react_core.config import ConfigError, KnowledgeBaseConfig, StorageConfig, TrackingConfig
from react_core.executor import identity
from react_core.secrets import reveal
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
class StageIdentity(CachePolicy):
    """The cache key of a stage's task run (:func:`tasks.stage.stage`): the stage's own identity, as the library
    derives it (:func:`react_core.executor.identity`: the URI its declaration gives these inputs), and react_core's
    source (a change inside the library, a new generator or a fixed loss, is never served stale).

    One source of truth: Prefect serves a cached result exactly when the stage it names is the stage these inputs
    make, so a replaced knowledge-base shard (in the embed stage's identity, through its contents) is never served
    stale, and inputs outside the identity (which shards this run embedded, the MLflow parent run) never miss the
    cache. A record whose stage is gone (deleted, damaged) is not served: the task runs and rebuilds the stage at the
    same URI (a cache hit never runs the task, so it is checked here).
    """

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        st = storage_of(inputs["storage"])
        try:
            stage = identity(getattr(pipeline, inputs["entry"]), st, **inputs["inputs"])
        except Exception as exc:  # noqa: BLE001 - the task, run uncached, raises it with its own message
            _logger.debug("no cache key for %s: %s", inputs["entry"], exc)
            return None
        key = hashlib.sha256(f"{stage.uri}|{_library_hash()}".encode()).hexdigest()[:32]
        try:
            recorded = task_ctx.result_store.exists(key)
        except Exception as exc:  # noqa: BLE001 - an unreadable store is Prefect's to handle, as without us
            _logger.debug("cache record %s unreadable: %s", key, exc)
            return key
        if recorded and not stage.done:
            _run_logger().warning(
                "%s: the cached result names %s, which is gone (deleted or incomplete); running it again",
                task_ctx.task.name,
                stage.uri,
            )
            return None
        return key


def _run_logger() -> Any:
    """The task run's logger (its lines reach the Prefect UI), or this module's outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return _logger


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
    "cache_policy": StageIdentity(),
    "persist_result": True,
    "retries": 2,
    "retry_delay_seconds": 5,
    "retry_condition_fn": retry_transient,
}


def storage_of(config: StorageConfig) -> Storage:
    return Storage(config.root, config.options)


def result_storage_of(config: StorageConfig) -> Any:
    """Where Prefect keeps task results and cache records: ``{storage.root}/prefect-results``, beside the stages
    they name, so every worker that reaches the storage shares one cache (the default, ``$PREFECT_HOME/storage``,
    is per host: a second worker ran every task again). Never saved as a block: the storage options may hold
    credentials."""
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    uri = storage_of(config).uri("prefect-results")
    if uri.startswith("file://"):
        return LocalFileSystem(basepath=uri[len("file://") :])
    return RemoteFileSystem(basepath=uri, settings=reveal(config.options or {}))


def tracker_of(config: TrackingConfig | None, storage: Storage) -> Tracker | None:
    """The tracker a task hands to react_core (None: this stage is not tracked)."""
    return make_tracker(config, storage) if config is not None else None


def embed_task_runner(kb: KnowledgeBaseConfig) -> TaskRunner:
    """Where the embedding tasks run when ``kb.dask_address`` names a Dask cluster: its workers, through
    prefect-dask. (Without one, the flow calls them one at a time in its own thread.)"""
    if not kb.dask_address:
        raise ConfigError("knowledge_base.dask_address is not set; fix: set it to the Dask scheduler's address")
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise ConfigError(
            f"knowledge_base.dask_address={kb.dask_address} needs prefect-dask; "
            "fix: pip install 'react-customize[dask]'"
        ) from exc
    return DaskTaskRunner(address=kb.dask_address)
