"""Tasks around a run's stages: its parent tracking run (opened and ended), the registered version, the model a
registered name resolves to, what the Prefect UI shows (artifacts), the base model's report."""

from __future__ import annotations

import re
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from react_core import parent_run, promotion, registry, summary
from react_core.config import ReactConfig, StorageConfig
from react_core.storage import join
from tasks.common import storage_of, tracker_of

REGISTERED = "react.model.registered"  # the event a new version emits; prefect.yaml's evaluate triggers expect it


@task(name="register-model", cache_policy=None, persist_result=False)
def register_model(config: ReactConfig, result: dict, preset: str | None = None) -> dict | None:
    """The customized model as a new version of the MLflow registered model, aliases moved (react_core.promotion);
    a new version is announced as a ``react.model.registered`` event (:func:`registered_event`), which the
    ``evaluate`` deployment of ``preset`` follows (prefect.yaml ``triggers:``)."""
    st = storage_of(config.storage)
    reg = promotion.register(st, config, result, tracker_of(config.tracking, st))
    if reg and reg.get("new"):
        emit_event(**registered_event(reg, preset, result.get("flow_run_id")))
    return reg


def registered_event(reg: dict, preset: str | None, flow_run_id: Any = None) -> dict[str, Any]:
    """The event of a new registered version: the version as its resource (``react.model.uri`` is
    ``models:/NAME/VERSION``, what the evaluate flow takes as ``customized``; ``react.preset``, what a trigger
    matches), the flow run that registered it as a related resource, the promotion decision as its payload. No
    tracking URI: it may hold credentials, and the worker that evaluates has its own."""
    name, version = reg["name"], str(reg["version"])
    resource = {
        "prefect.resource.id": f"react.model-version.{name}.{version}",
        "prefect.resource.name": f"{name} version {version}",
        "react.model.name": name,
        "react.model.version": version,
        "react.model.uri": f"models:/{name}/{version}",
        "react.champion": str(bool(reg.get("champion"))).lower(),
    }
    if preset:
        resource["react.preset"] = preset
    related = []
    if flow_run_id:
        related.append({"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"})
    decision = reg.get("decision") or {}
    return {
        "event": REGISTERED,
        "resource": resource,
        "related": related,
        "payload": {"promotion": decision.get("reason"), "model_id": reg.get("model_id")},
    }


@task(name="resolve-model", cache_policy=None, persist_result=False)
def resolve_model(config: ReactConfig, customized: str | None) -> tuple[str | None, float | None, str | None]:
    """(checkpoint, lambda, head): a checkpoint URI as given (lambda and head None), or ``models:/{name}@{alias}``
    resolved through the MLflow registry to its checkpoint, the gate scale it was registered with and its head."""
    return registry.resolve_registered(
        customized, tracker_of(config.tracking, storage_of(config.storage)).model_registry
    )


def publish(config: ReactConfig, result: dict) -> None:
    """The run's results in the Prefect UI: the evaluation table, links to the model and the MLflow run, and the
    retrieval summary, as artifacts of the flow run (react_core.summary.run_summary reads them from the stages);
    then the table as the run's last log lines (what `prefect deployment run --watch` ends with). Called in the
    flow's body, not as a task: an artifact made in a task belongs to the task run, and the flow run's Artifacts
    tab would list it under no run."""
    st = storage_of(config.storage)
    found = summary.run_summary(st, result, tracker_of(config.tracking, st), summary.dataset_roles(config))
    if found["table"]:
        create_table_artifact(found["table"], key="evaluation", description="zero-shot: base vs customized")
    for name, target in found["links"].items():
        if "://" in target and target.split("://", 1)[0] in {"http", "https", "s3", "file"}:
            key = re.sub(r"[^a-z0-9-]+", "-", name.lower())  # Prefect: lowercase letters, digits, dashes
            create_link_artifact(target, link_text=target, key=key, description=name)
    lines = [f"- {name}: `{target}`" for name, target in found["links"].items()]
    if choice := result.get("choice"):  # training.choose: the candidate picked, and why
        lines.append(f"- chosen without labels: {choice['reason']} (the choose stage's proxies.png)")
    if reg := result.get("registered"):
        aliases = "candidate, champion" if reg.get("champion") else "candidate"
        lines.append(
            f"- registered model: `{reg['name']}` version {reg['version']}"
            + (f" ({aliases})" if reg.get("new") else "")
        )
        if reg.get("decision"):  # why champion moved or not: tracking.promote and tracking.thresholds
            lines.append(f"- promotion: {reg['decision']['reason']}")
    if uri := result.get("choice_report"):  # every candidate's proxies beside its true changes
        table = st.read_bytes(join(uri, "candidates.md")).decode()
        found["markdown"] += f"\n\n### Candidates of the label-free choice\n\n{table}"
    create_markdown_artifact("\n".join([*lines, "", found["markdown"]]), key="summary", description="REACT run")
    # The pointer a person watching the run ends with: the UI's logs, and `prefect deployment run ... --watch`
    # when the server streams logs out (PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED, as infra/compose.yaml sets it).
    deltas = ", ".join(
        f"{r['dataset']} ({r['role']}) {r['base']:.3f}"
        + ("" if r["customized"] is None else f" -> {r['customized']:.3f}")
        for r in found["table"]
    )
    pointer = "; ".join(f"{name}: {target}" for name, target in found["links"].items())
    pointer += f"; zero-shot {deltas} (artifact 'evaluation')" if deltas else ""
    logger = get_run_logger()
    logger.info("REACT result: %s", pointer)
    if found["table"]:
        logger.info("evaluation (zero-shot, base -> customized):\n%s", summary.table_text(found["table"]))


@task(name="end-tracking", cache_policy=None, persist_result=False)
def end_tracking(
    config: ReactConfig,
    parent_run_id: str | None,
    status: str,
    stages: dict | None = None,
    table: dict | None = None,
    model_id: str | None = None,
) -> None:
    """End the parent MLflow run with the flow's outcome, tagged with every stage and the run that produced it, the
    evaluation's headline numbers as its metrics (``table``: the flow's evaluation table), the datasets it read as
    its inputs and the registered model (``model_id``) as its output."""
    st = storage_of(config.storage)
    metrics = parent_run.headline_metrics(table, summary.dataset_roles(config))
    datasets = parent_run.datasets_used(st, stages or {})
    parent_run.end_run(tracker_of(config.tracking, st), parent_run_id, status, stages, metrics, datasets, model_id)


@task(name="start-tracking", cache_policy=None, persist_result=False)
def start_tracking(
    config: ReactConfig,
    flow_name: str,
    flow_run_id: str | None,
    flow_run_name: str | None = None,
    subject: str | None = None,
) -> str | None:
    """Open the pipeline's parent MLflow run, named after the flow, what it runs for and the flow run
    (:func:`react_core.parent_run.run_title`), tagged with the Prefect flow run; returns its id."""
    tags = {"prefect.flow_name": flow_name, "prefect.flow_run_id": flow_run_id or ""}
    title = parent_run.run_title(config, flow_name, subject, flow_run_name)
    return parent_run.start_run(config, flow_name, tracker_of(config.tracking, storage_of(config.storage)), tags, title)


@task(name="base-report", cache_policy=None, persist_result=False)
def base_report(storage: StorageConfig, base_uri: str) -> dict:
    """The base model's zero-shot accuracies and training facts, read from its stage marker."""
    return storage_of(storage).stage_manifest(base_uri)["metrics"]
