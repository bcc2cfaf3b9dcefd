"""The ``customize`` flow: REACT end to end for one target task."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import (
    Preset,
    embed_knowledge_base,
    evaluate_models,
    miniweb_and_base,
    retrieve_and_train,
    run_config,
    tracked,
)
from react_core.models import model_file
from react_core.overrides import ConfigOverrides
from tasks import customize as t
from tasks.world import publish, register_model


@flow(name="customize", persist_result=True)
def customize(preset: Preset = "demo", config: ConfigOverrides | None = None) -> dict[str, Any]:
    """Embed the knowledge base, index it, retrieve for the task's class names, download, train, evaluate.

    ``preset``: a preset of deployments/; ``config``: the fields to change in it (a full tree changes them all).
    """
    config = run_config(preset, config)
    t.preflight(config)
    with tracked(config, "customize") as out:
        parent = out["mlflow_run_id"]
        out["miniweb"], out["base"] = miniweb_uri, checkpoint = miniweb_and_base(config, parent)
        out["embed"] = embedded = embed_knowledge_base(config, checkpoint, miniweb_uri, parent)
        retrieve_and_train(config, checkpoint, miniweb_uri, embedded, parent, out=out)
        trained = out["train"]
        out["evaluate"] = evaluated = evaluate_models(
            config.storage, config.model, {"base": checkpoint, "customized": model_file(trained)}, config.evaluation,
            config.tracking, miniweb_uri, parent_run_id=parent,
        )  # fmt: skip
        out["table"] = t.report(config.storage, evaluated)
        out["registered"] = register_model(config, out)
        publish(config, out)
    return out
