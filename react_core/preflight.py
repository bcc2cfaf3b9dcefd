"""Checks made before any stage runs, so that a bad config fails in seconds rather than after hours of work.

Each raises the project's own error (:class:`react_core.errors.ReactError`) naming the field or file and the
fix; the ``react`` command prints it as one line, and the flows run the same checks as their first task.
"""

from __future__ import annotations

from react_core.config import ConfigError, EvaluationConfig, ModelConfig, ReactConfig, TrainingConfig
from react_core.data import DatasetError
from react_core.evaluation.suite import dataset_uri
from react_core.knowledge.embed import knowledge_base_shards
from react_core.models import check_activation, model_config
from react_core.registry import MINIWEB_TASKS, check_task
from react_core.storage import Storage


def check_model(model: ModelConfig, training: TrainingConfig) -> None:
    """Checks that need the model architecture (its image tower, its layers, its activation for the weights)."""
    check_activation(model.name, None if model.pretrained == "miniweb" else model.pretrained)
    vision = model_config(model.name).get("vision_cfg", {})
    layers = vision.get("layers")
    if vision.get("timm_model_name") or not isinstance(layers, int):
        tower = f"timm {vision['timm_model_name']}" if vision.get("timm_model_name") else "ResNet"
        raise ConfigError(
            f"model.name={model.name} has a {tower} image tower; REACT's gated blocks and trainer need an "
            "open_clip vision transformer; fix: use a ViT-* model"
        )
    if isinstance(layers, int) and training.mode == "gated-image" and training.gated_layers > layers:
        raise ConfigError(
            f"training.gated_layers={training.gated_layers} but {model.name} has {layers} image blocks; "
            f"fix: set training.gated_layers to 1..{layers}"
        )


def check_evaluation_data(storage: Storage, evaluation: EvaluationConfig, uses_miniweb: bool) -> None:
    """Every evaluation dataset has a location that exists (the mini-web's tasks are made by the pipeline)."""
    for name in evaluation.tasks:
        if name in MINIWEB_TASKS and uses_miniweb and name not in evaluation.locations:
            continue
        uri = dataset_uri(evaluation, name, None)
        if not storage.exists(uri):
            field = f"evaluation.locations.{name}" if name in evaluation.locations else "evaluation.data_root"
            raise DatasetError(
                f"evaluation dataset {name!r}: {uri} does not exist; fix: put the dataset there or point {field} at it"
            )


def check_customize(config: ReactConfig, storage: Storage) -> None:
    """Everything the customize flow can check before its first stage: the architecture, the target task, the
    knowledge base, the evaluation data and the storage root."""
    check_model(config.model, config.training)
    check_task(storage, config.retrieval.task)
    if config.knowledge_base.source != "miniweb":
        knowledge_base_shards(storage, config.knowledge_base.source, None)
    check_evaluation_data(storage, config.evaluation, config.uses_miniweb)
    storage.check_writable()


def check_evaluate(config: ReactConfig, storage: Storage) -> None:
    """What the evaluate flow can check before it starts: the evaluation data and the storage root."""
    check_evaluation_data(storage, config.evaluation, config.uses_miniweb)
    storage.check_writable()
