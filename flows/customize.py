"""The ``customize`` flow: REACT end to end for one target task."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import Preset, embed_knowledge_base, evaluate_models, miniweb_and_base, run_config, tracked
from react_core.config import ConfigOverrides
from react_core.models import model_file
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
        out["index"] = indexed = t.index(config.storage, config.index, config.retrieval.k, embedded, config.tracking,
                                         parent)  # fmt: skip
        out["retrieve"] = retrieved = t.retrieve(
            config.storage, config.model, checkpoint, config.retrieval, embedded, indexed, miniweb_uri,
            config.tracking, parent_run_id=parent, evaluation=config.evaluation,
        )  # fmt: skip
        out["download"] = downloaded = t.download(
            config.storage, config.download, retrieved, miniweb_uri, config.tracking, parent
        )
        replayed = None
        if config.training.replay > 0:  # a random share of the knowledge base, trained on beside the retrieval
            out["replay"] = t.replay(config.storage, config.training.replay, config.training.seed, embedded, retrieved,
                                     config.tracking, parent)  # fmt: skip
            out["replay_download"] = replayed = t.download.with_options(task_run_name="download replay")(
                config.storage, config.download, out["replay"], miniweb_uri, config.tracking, parent
            )
        out["train"] = trained = t.train(
            config.storage, config.model, checkpoint, config.training, config.tracking, downloaded,
            parent_run_id=parent, replay_uri=replayed,
        )  # fmt: skip
        out["evaluate"] = evaluated = evaluate_models(
            config.storage, config.model, {"base": checkpoint, "customized": model_file(trained)}, config.evaluation,
            config.tracking, miniweb_uri, parent_run_id=parent,
        )  # fmt: skip
        out["table"] = t.report(config.storage, evaluated)
        out["registered"] = register_model(config, out)
        publish(config, out)
    return out
