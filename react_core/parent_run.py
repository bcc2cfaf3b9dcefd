"""The pipeline's parent tracking run: opened before the first stage (its params: the whole config), ended with the
run's outcome, tagged with every stage and the run that produced it, and given the evaluation's headline numbers as
its metrics, so the page a user opens shows the result whether the stages ran now or came from a cache."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from react_core.config import ReactConfig
from react_core.storage import Storage, StorageError, join
from react_core.tracking import NullTracker, Tracker, metric_key

_logger = logging.getLogger(__name__)


def run_title(config: ReactConfig, flow_name: str, subject: str | None = None, flow_run_name: str | None = None) -> str:
    """The parent run's name, what tells runs apart in MLflow's list: the flow, what it ran for (the target tasks;
    an evaluation: the customized model it evaluated, else the base), and the Prefect flow run's name
    (``customize miniweb-fine · adorable-lemur``)."""
    if subject is None:
        subject = config.retrieval.label if flow_name in ("customize", "ablate") else config.model.name
    return f"{flow_name} {subject}" + (f" · {flow_run_name}" if flow_run_name else "")


def start_run(
    config: ReactConfig,
    flow_name: str,
    tracker: Tracker | None,
    tags: Mapping[str, str] | None = None,
    title: str | None = None,
) -> str | None:
    """Open the pipeline's parent tracking run named ``title`` (default :func:`run_title`), tagged ``react.flow``
    with ``flow_name`` (its params: the whole config), and leave it RUNNING until :func:`end_run`; returns its id
    (None untracked). Runs an earlier, killed process left RUNNING are marked KILLED first; the stages it finished
    are reused."""
    tracker = tracker or NullTracker()
    if killed := tracker.mark_abandoned():
        _logger.warning(
            "resuming after %d killed run(s): finished stages are reused, unfinished ones continue", len(killed)
        )
    all_tags = {"react.flow": flow_name, **dict(tags or {})}
    return tracker.open_run(title or run_title(config, flow_name), all_tags, config.model_dump(mode="json"))


def datasets_used(storage: Storage, stages: Mapping[str, Any]) -> list[dict[str, str]]:
    """The data a run read, as MLflow dataset inputs (by URI and digest; nothing copied), from its stages' markers:
    the knowledge base (the embed stage's shards; digest: their contents' fingerprint), the retrieved pairs (the
    retrieve stage's manifest; digest: its version) and each evaluation set (where the base model's eval stage read
    it; digest: that stage's version). Stages that are gone are left out."""
    found: list[dict[str, str]] = []

    def manifest(uri: Any) -> dict[str, Any] | None:
        if not isinstance(uri, str) or "://" not in uri:
            return None
        try:
            return storage.stage_manifest(uri)
        except StorageError:
            return None

    if m := manifest(stages.get("embed")):
        shards = m["inputs"].get("shards")
        source = shards if isinstance(shards, str) else m["config"].get("source") or stages["embed"]
        digest = str(m["inputs"].get("contents") or m["version"])
        found.append({"name": "knowledge-base", "uri": source, "digest": digest, "context": "knowledge-base"})
    if m := manifest(stages.get("retrieve")):
        uri = join(stages["retrieve"], "manifest.parquet")
        found.append({"name": "retrieved pairs", "uri": uri, "digest": m["version"], "context": "training"})
    if m := manifest(stages.get("evaluate")):
        for key, uri in sorted(m["inputs"].items()):
            if key.startswith("base/") and (e := manifest(uri)) and e["config"].get("location"):
                config = e["config"]
                found.append(
                    {
                        "name": config["dataset"],
                        "uri": config["location"],
                        "digest": e["version"],
                        "context": "evaluation",
                    }
                )
    return found


def end_run(
    tracker: Tracker | None,
    run_id: str | None,
    status: str = "FINISHED",
    stages: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    datasets: list[dict[str, str]] | None = None,
    model_id: str | None = None,
) -> None:
    """End the parent run with the pipeline's outcome (``FINISHED``, ``FAILED``, ``KILLED``). ``stages``: what the
    pipeline returned; each stage URI in it becomes a tag ``react.stage.{name}`` with, beside it,
    ``react.stage.{name}.run``: the run that produced the stage (this run's child, or an earlier run's when the
    stage was reused), so a run whose stages all came from a cache still says where everything is. ``metrics``
    (:func:`headline_metrics`) are logged on it: the page a user opens shows the result, cached or not; so are the
    ``datasets`` it read (:func:`datasets_used`) and the logged model it registered (``model_id``)."""
    if tracker is None or run_id is None:
        return
    tags: dict[str, str] = {}
    for name, value in (stages or {}).items():
        if isinstance(value, str) and "://" in value:
            tags[f"react.stage.{name}"] = value
            producer = tracker.stage_producer(value.rsplit("/model.pt", 1)[0])
            if producer:
                tags[f"react.stage.{name}.run"] = producer
    if datasets:
        tracker.log_datasets(run_id, datasets)
    if model_id:
        tracker.link_model(run_id, model_id)
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
