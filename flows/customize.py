"""The ``customize`` flow: REACT end to end for one target task."""

from __future__ import annotations

from typing import Any

from prefect import flow, runtime

from flows.common import Preset, embed_knowledge_base, evaluate_models, miniweb_and_base, run_config
from react_core.config import ConfigOverrides
from react_core.models import model_file
from tasks import customize as t
from tasks.world import start_tracking


@flow(name="customize")
def customize(preset: Preset = "demo", config: ConfigOverrides | None = None) -> dict[str, Any]:
    """Embed the knowledge base, index it, retrieve for the task's class names, download, train, evaluate.

    ``preset``: a preset of deployments/; ``config``: the fields to change in it (a full tree changes them all).
    """
    config = run_config(preset, config)
    t.preflight(config)
    parent = start_tracking(config, "customize", runtime.flow_run.id)
    miniweb_uri, checkpoint = miniweb_and_base(config, parent)
    embedded = embed_knowledge_base(config, checkpoint, miniweb_uri, parent)
    indexed = t.index(config.storage, config.index, config.retrieval.k, embedded, config.tracking, parent)
    retrieved = t.retrieve(
        config.storage, config.model, checkpoint, config.retrieval, embedded, indexed, miniweb_uri,
        config.tracking, parent_run_id=parent, evaluation=config.evaluation,
    )  # fmt: skip
    downloaded = t.download(config.storage, config.download, retrieved, miniweb_uri, config.tracking, parent)
    trained = t.train(
        config.storage, config.model, checkpoint, config.training, config.tracking, downloaded, parent_run_id=parent
    )
    evaluated = evaluate_models(
        config.storage, config.model, {"base": checkpoint, "customized": model_file(trained)}, config.evaluation,
        config.tracking, miniweb_uri, parent_run_id=parent,
    )  # fmt: skip
    return {
        "miniweb": miniweb_uri,
        "base": checkpoint,
        "embed": embedded,
        "index": indexed,
        "retrieve": retrieved,
        "download": downloaded,
        "train": trained,
        "evaluate": evaluated,
        "table": t.report(config.storage, evaluated),
        "mlflow_run_id": parent,
        "flow_run_id": runtime.flow_run.id,
    }
