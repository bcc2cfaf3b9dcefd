"""The pipeline's parent tracking run: opened before the first stage (its params: the whole config), ended with the
run's outcome, tagged with every stage and the run that produced it, and given the evaluation's headline numbers as
its metrics, so the page a user opens shows the result whether the stages ran now or came from a cache."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from react_core.config import ReactConfig
from react_core.tracking import NullTracker, Tracker, metric_key

_logger = logging.getLogger(__name__)


def start_run(
    config: ReactConfig, flow_name: str, tracker: Tracker | None, tags: Mapping[str, str] | None = None
) -> str | None:
    """Open the pipeline's parent tracking run (its params: the whole config) and leave it RUNNING until
    :func:`end_run`; returns its id (None untracked). Runs an earlier, killed process left RUNNING are marked
    KILLED first; the stages it finished are reused."""
    tracker = tracker or NullTracker()
    if killed := tracker.mark_abandoned():
        _logger.warning(
            "resuming after %d killed run(s): finished stages are reused, unfinished ones continue", len(killed)
        )
    return tracker.open_run(flow_name, tags, config.model_dump(mode="json"))


def end_run(
    tracker: Tracker | None,
    run_id: str | None,
    status: str = "FINISHED",
    stages: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
) -> None:
    """End the parent run with the pipeline's outcome (``FINISHED``, ``FAILED``, ``KILLED``). ``stages``: what the
    pipeline returned; each stage URI in it becomes a tag ``react.stage.{name}`` with, beside it,
    ``react.stage.{name}.run``: the run that produced the stage (this run's child, or an earlier run's when the
    stage was reused), so a run whose stages all came from a cache still says where everything is. ``metrics``
    (:func:`headline_metrics`) are logged on it: the page a user opens shows the result, cached or not."""
    if tracker is None or run_id is None:
        return
    tags: dict[str, str] = {}
    for name, value in (stages or {}).items():
        if isinstance(value, str) and "://" in value:
            tags[f"react.stage.{name}"] = value
            producer = tracker.stage_producer(value.rsplit("/model.pt", 1)[0])
            if producer:
                tags[f"react.stage.{name}.run"] = producer
    tracker.end_run(run_id, status, tags, metrics)


def headline_metrics(table: Mapping[str, Mapping[str, Any]] | None, roles: Mapping[str, str]) -> dict[str, float]:
    """The evaluation's headline table as a parent run's metrics, named as the evaluate run names them
    (:func:`metric_key`): ``zero-shot/{dataset}/{metric}/{base,customized,delta}``, and
    ``{role}/{metric}/delta`` for a role that one dataset holds alone (``target/accuracy/delta``,
    ``generic/accuracy/delta``). A base-only evaluation has no customized or delta columns."""
    out: dict[str, float] = {}
    by_role: dict[str, list[Mapping[str, Any]]] = {}
    for dataset, row in sorted((table or {}).items()):
        for col in ("base", "customized", "delta"):
            if row.get(col) is not None:
                out[metric_key("zero-shot", dataset, str(row["metric"]), col)] = float(row[col])
        by_role.setdefault(roles.get(dataset, "other"), []).append(row)
    for role, rows in by_role.items():
        if len(rows) == 1 and rows[0].get("delta") is not None:
            out[metric_key(role, str(rows[0]["metric"]), "delta")] = float(rows[0]["delta"])
    return out
