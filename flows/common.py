"""What the flows share: the run's config (a preset with the fields a run names), its parent tracking run, and the
one-line user errors of a deployment run. The order of the stages is the library's (react_core.plans); a flow maps
it onto Prefect tasks (tasks.stage.PrefectRunner)."""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger, runtime
from prefect.context import FlowRunContext

from react_core.config import (
    ReactConfig,
    deployment_run,
)
from react_core.environment import lock_drift
from react_core.errors import ReactError
from react_core.overrides import ConfigOverrides, apply_overrides
from react_core.preflight import check_deployed
from react_core.tracking import unreachable_server
from tasks.common import result_storage_of
from tasks.world import end_tracking, start_tracking

# The presets a deployment names (deployments/*.yaml, beside the code on every worker); a Literal, so the
# Prefect form offers them as a list.
PRESETS = Path(__file__).resolve().parents[1] / "deployments"
Preset = Literal[tuple(sorted(p.stem for p in PRESETS.glob("*.yaml")))]  # type: ignore[valid-type]


def run_config(preset: str, config: ConfigOverrides | None) -> ReactConfig:
    """The tree a flow run uses: its preset with the fields ``config`` names changed. Prefect merges a run's
    parameters into the deployment's one level deep only, so a run that names ``training.epochs`` sends a
    ``config`` holding just that; applied here, the preset keeps every other value.

    Called first by every flow. A deployment run (a worker runs it from a temporary copy of the code) refuses a
    relative ``storage.root`` without $REACT_STORAGE_ROOT and a tracking store that would live in that copy, says
    in one line when the worker's packages are not the code's lock, and logs a user error (ReactError) as one
    ``error:`` line. Every run keeps its task results, its own result and its failure under the storage root."""
    deployed = runtime.deployment.id is not None
    if deployed:
        one_line_user_errors()
        if drift := lock_drift():
            get_run_logger().warning(drift)
    with deployment_run() if deployed else contextlib.nullcontext():
        cfg = apply_overrides(PRESETS / f"{preset}.yaml", config)
    if deployed:
        check_deployed(cfg)
    # Task results, cache records, and the flow's own result or failure under the storage root, shared by every
    # worker (tasks.common). Prefect takes a flow's result storage from its decorator only, fixed at import; a
    # run's storage is known here, so the run's result store is pointed there before the first task (tasks
    # inherit it) and before anything can fail (the engine records a failure through the same store).
    ctx = FlowRunContext.get()
    if ctx is not None:
        ctx.result_store = ctx.result_store.model_copy(update={"result_storage": result_storage_of(cfg.storage)})
    return cfg


class _OneLineUserErrors(logging.Filter):
    """On a deployment run's log handlers (the API's, which feed the Prefect UI, and the console's): a user
    error (ReactError, whose message names the field or file and the fix) is one ``error:`` line, without its
    traceback, and only once (the failed task and then the flow each log it)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: deque[tuple[str, str]] = deque(maxlen=64)

    def filter(self, record: logging.LogRecord) -> bool:
        key = getattr(record, "react_error", None)  # rewritten by another handler's filter: shown there once
        exc = record.exc_info[1] if record.exc_info else None
        if key is None and isinstance(exc, ReactError):
            key = (type(exc).__name__, str(exc))
            if key in self.seen:
                return False
            record.msg, record.args = "error: %s", (" ".join(str(exc).split()),)
            record.exc_info, record.exc_text, record.react_error = None, None, key
        elif key is not None and key in self.seen:
            return False
        if key is not None:
            self.seen.append(key)
        return True


def one_line_user_errors() -> None:
    """Put :class:`_OneLineUserErrors` on every handler a flow or task run's record reaches (once per process)."""
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect", ""):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _OneLineUserErrors) for f in handler.filters):
                handler.addFilter(_OneLineUserErrors())


@contextlib.contextmanager
def tracked(config: ReactConfig, flow_name: str, subject: str | None = None) -> Iterator[dict[str, Any]]:
    """The flow's parent MLflow run, named after the flow, ``subject`` (what it runs for; default: the target
    tasks or the model) and the flow run's name, open while the flow runs and ended with its outcome: FINISHED, or
    FAILED when the flow raises (KILLED on an interrupt). Yields the flow's result dict (``mlflow_run_id``,
    ``flow_run_id``), which the flow fills with its stage URIs: they become the parent run's tags."""
    out: dict[str, Any] = {"flow_run_id": runtime.flow_run.id}
    out["mlflow_run_id"] = start_tracking(config, flow_name, runtime.flow_run.id, runtime.flow_run.name, subject)
    try:
        yield out
    except BaseException as exc:
        status = "FAILED" if isinstance(exc, Exception) else "KILLED"
        if unreachable_server(exc) is None:  # a server that went away cannot record it: the next start ends it KILLED
            end_tracking(config, out["mlflow_run_id"], status, _uris(out), out.get("table"), _model_id(out))
        raise
    end_tracking(config, out["mlflow_run_id"], "FINISHED", _uris(out), out.get("table"), _model_id(out))


def _model_id(out: dict[str, Any]) -> str | None:
    return (out.get("registered") or {}).get("model_id")


def _uris(out: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in out.items() if isinstance(v, str)}
