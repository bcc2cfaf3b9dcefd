"""What every REACT task shares: the cache policy, transient-only retries and the storage/tracker builders."""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.task_runners import TaskRunner

import react_core
from react_core.config import ConfigError, KnowledgeBaseConfig, StorageConfig, TrackingConfig
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
class LibraryCode(CachePolicy):
    """Cache key part: react_core's source. TASK_SOURCE hashes only the task's own (one-line) body, so
    without this a change inside the library (a new generator, a fixed loss) would be served stale."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        return _library_hash()


@dataclass
class StagesStillThere(CachePolicy):
    """A cached result is used only while the stages it names are still complete.

    Why a policy and not a validation inside the task: a cache hit never runs the task. Prefect kept returning
    the URI of a stage whose files had been deleted (``customized model: .../model.pt`` for a file that did not
    exist; later stages failing on every run). So the key is computed by ``inner`` as before, then the record
    under it is read and every stage URI in it checked (``Storage.gone``: ``_SUCCESS`` present, files exist); if
    one is gone the policy returns no key, and the task runs (rebuilding the stage at the same URI, since the
    URI is a function of the same inputs), after which the old record is true again and is used next time.
    """

    inner: CachePolicy = field(default_factory=lambda: INPUTS)

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:  # fmt: skip
        key = self.inner.compute_key(task_ctx=task_ctx, inputs=inputs, flow_parameters=flow_parameters, **kwargs)
        storage_cfg = next((v for v in inputs.values() if isinstance(v, StorageConfig)), None)
        if key is None or storage_cfg is None:
            return key
        store = task_ctx.result_store
        try:
            if not store.exists(key):
                return key
            value = store.read(key).result
        except Exception as exc:  # noqa: BLE001 - an unreadable record is Prefect's to handle, as without us
            _logger.debug("cache record %s unreadable: %s", key, exc)
            return key
        gone = storage_of(storage_cfg).gone(value)
        if gone:
            get_run_logger().warning(
                "%s: the cached result names %s, which is gone (deleted or incomplete); running it again",
                task_ctx.task.name, gone[0],
            )  # fmt: skip
            return None
        return key

    def __sub__(self, other: str) -> CachePolicy:
        return replace(self, inner=self.inner - other)


# Cache across runs on the task's inputs (configs and URIs hash as JSON; storage roots are absolute
# after validation), its source and the library's, while the stages it returned are still there; the
# MLflow parent run id changes every run and must not bust the cache.
CACHE = StagesStillThere(inner=INPUTS + TASK_SOURCE + LibraryCode() - "parent_run_id")

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
