"""Checks made before any stage runs, so that a bad config fails in seconds rather than after hours of work.

Each raises the project's own error (:class:`react_core.errors.ReactError`) naming the field or file and the
fix; the ``react`` command prints it as one line, and the flows run the same checks as their first task.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from react_core.ablation import REFERENCE, Grid, GridError
from react_core.config import (
    RIVAL_MODES,
    ConfigError,
    EvaluationConfig,
    ModelConfig,
    ReactConfig,
    TrackingConfig,
    TrainingConfig,
)
from react_core.data import DatasetError
from react_core.errors import ReactError
from react_core.evaluation.suite import dataset_uri
from react_core.knowledge.embed import knowledge_base_shards
from react_core.models import ModelLoadError, check_activation, model_config
from react_core.models.gated import GATED_MODES
from react_core.registry import (
    MINIWEB_CAPTIONS,
    MINIWEB_DATASETS,
    check_comparable,
    check_task,
    registered_name,
    registered_tags,
    resolve_registered,
)
from react_core.storage import Storage, normalize_uri


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
    if isinstance(layers, int) and training.mode in GATED_MODES and training.gated_layers > layers:
        raise ConfigError(
            f"training.gated_layers={training.gated_layers} but {model.name} has {layers} image blocks; "
            f"fix: set training.gated_layers to 1..{layers}"
        )


def check_evaluation_data(storage: Storage, evaluation: EvaluationConfig, uses_miniweb: bool) -> None:
    """Every evaluation dataset has a location that exists (the mini-web's tasks are made by the pipeline)."""
    for name in evaluation.tasks:
        if name in (*MINIWEB_DATASETS, MINIWEB_CAPTIONS) and uses_miniweb and name not in evaluation.locations:
            continue
        uri = dataset_uri(evaluation, name, None)
        if not storage.exists(uri):
            field = f"evaluation.locations.{name}" if name in evaluation.locations else "evaluation.data_root"
            raise DatasetError(
                f"evaluation dataset {name!r}: {uri} does not exist; fix: put the dataset there or point {field} at it"
            )


class TrackingUnreachableError(ReactError, ConnectionError):
    """The MLflow tracking server cannot be reached; names the URI and the fix."""


def check_tracking(tracking: TrackingConfig) -> None:
    """An MLflow tracking server (http/https) answers its health check, before hours of work that would then
    fail to record anything."""
    uri = tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking.enabled or not uri or not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as r:
            if r.status == 200:
                return
            problem = f"HTTP {r.status}"
    except (urllib.error.URLError, OSError) as exc:
        problem = " ".join(str(getattr(exc, "reason", exc)).split())
    field = "tracking.tracking_uri" if tracking.tracking_uri else "MLFLOW_TRACKING_URI"
    raise TrackingUnreachableError(
        f"MLflow tracking server {uri} is not reachable ({problem}); fix: start it, or point {field} at one "
        "(tracking.enabled: false to run untracked)"
    )


def check_miniweb_tasks(config: ReactConfig) -> None:
    """miniweb-extra (retrieved for or evaluated) exists only in a world made with miniweb.extra_classes > 0."""
    named = [*config.retrieval.target_tasks, *config.evaluation.tasks]
    if "miniweb-extra" in named and not config.miniweb.extra_classes and config.uses_miniweb:
        field = "retrieval.tasks" if "miniweb-extra" in config.retrieval.target_tasks else "evaluation.tasks"
        raise ConfigError(
            f"{field} names miniweb-extra, but miniweb.extra_classes is 0 (the mini-web has no third task); fix: set "
            "miniweb.extra_classes (e.g. 12), or remove miniweb-extra"
        )


def check_deployed(config: ReactConfig) -> None:
    """A deployment run works in a temporary copy of the code: its MLflow store must not be a file there (the
    default with a storage root that is not a local folder: ``./react-mlflow.db``, in the copy)."""
    t = config.tracking
    if t.enabled and not t.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI") and "://" in config.storage.root:
        raise ConfigError(
            f"tracking: the storage root {config.storage.root} cannot hold MLflow's sqlite store, and this deployment "
            "run's working folder is a temporary copy of the code, deleted when it ends (runs and registered models "
            f"would go with it); fix: set MLFLOW_TRACKING_URI in the worker's environment to your MLflow server (or "
            "tracking.tracking_uri), or tracking.enabled: false"
        )


def check_customize(config: ReactConfig, storage: Storage) -> None:
    """Everything the customize flow can check before its first stage: the architecture, the target task, the
    knowledge base, the evaluation data, the storage root and the tracking server."""
    check_model(config.model, config.training)
    if config.training.mode in RIVAL_MODES:
        raise ConfigError(
            f"training.mode={config.training.mode} is a cheap rival (a head on the base model, not a customized "
            "model to register); fix: compare it with `react ablate` (a grid axis of training.mode values), or use "
            "a tuning mode here (gated-image, locked-text, ...)"
        )
    for candidate in config.training.choose.candidates:  # the models training.choose picks from
        check_model(config.model, config.training.candidate(candidate))
    if config.training.choose.candidates and len(config.retrieval.target_tasks) > 1:
        raise ConfigError(
            f"training.choose scores the candidates on one target task's held-out pairs, but retrieval.tasks lists "
            f"{len(config.retrieval.target_tasks)}; fix: one task (retrieval.task), or no training.choose.candidates"
        )
    for name in config.retrieval.target_tasks:
        check_task(storage, name)
    if config.tracking.enabled and config.tracking.registered_model:
        registered_name(config, storage)  # the name MLflow will be given at the end, checked at the start
    check_miniweb_tasks(config)
    if config.knowledge_base.source != "miniweb":
        shards = knowledge_base_shards(storage, config.knowledge_base.source, None)
        if config.knowledge_base.require_index:
            check_shard_indices(storage, shards)
    check_evaluation_data(storage, config.evaluation, config.uses_miniweb)
    storage.check_writable()
    check_tracking(config.tracking)
    if config.tracking.enabled and config.tracking.registered_model and (registry := _registry(config, storage)):
        name = registered_name(config, storage)[1]
        check_comparable(registry.alias_tags(name, "champion"), name, config.model.name)


def _registry(config: ReactConfig, storage: Storage):  # a ModelRegistry or None (imported lazily: mlflow)
    """The model registry a check reads; None when its sqlite store does not exist yet (a first run:
    nothing is registered, and a check must not create the store, which prints MLflow's migration lines)."""
    from react_core.tracking import default_tracking_uri, make_tracker

    uri = config.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(storage)[0]
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///") :]):
        return None
    return make_tracker(config.tracking, storage).model_registry


def check_registered(config: ReactConfig, storage: Storage, customized: str) -> None:
    """A ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` to evaluate: the version exists, the version's weights are still where it says (a
    local file of another folder too: a run whose root was deleted), and they are of the architecture this
    evaluation builds (``model.name``)."""
    model_registry = _registry(config, storage)
    checkpoint, _, head = resolve_registered(customized, model_registry)  # a version nobody holds: one line there
    theirs = (registered_tags(customized, model_registry) or {}).get("react.model")  # resolved: a registry
    if theirs and theirs != config.model.name:
        raise ModelLoadError(
            f"{customized} is a {theirs} model and model.name is {config.model.name}; fix: evaluate it with "
            f"-s model.name={theirs} (and that model's base weights), or name a version of {config.model.name}"
        )
    if checkpoint is None:
        return
    for what, uri in (("weights", checkpoint), ("head", head and head.rstrip("/") + "/head.pt")):
        if uri is None or "://" not in uri and not uri.startswith("/"):  # none, or a pretrained tag (openai)
            continue
        if uri.startswith(storage.root):
            there = storage.exists(uri)
        elif uri.startswith("file://"):  # another folder (a root since deleted): the local disk, not the root's fs
            there = os.path.exists(uri[len("file://") :])
        else:  # another object store: the evaluation reads it with its own credentials
            there = True
        if not there:
            raise ModelLoadError(
                f"{customized} names {what} that are gone ({uri}); fix: run the customize flow that made them "
                "again (it rebuilds them at that place), or point the alias at a version whose files exist"
            )
    if checkpoint.startswith(storage.root):
        check_checkpoint(storage, checkpoint)  # damaged since its stage wrote it


def check_shard_indices(storage: Storage, shards: list[str]) -> None:
    """Every shard has its index (``{shard}_stats.json``), found by one listing per folder."""
    present = set()
    for folder in sorted({u.rsplit("/", 1)[0] for u in shards}):
        present.update(storage.ls(folder, "*_stats.json"))
    missing = [u for u in shards if u[: -len(".tar")] + "_stats.json" not in present]
    if missing:
        listed = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DatasetError(
            f"{len(missing)} knowledge-base shard(s) have no index ({listed}; each needs its {{shard}}_stats.json), "
            "and knowledge_base.require_index is true; fix: restore the _stats.json files (img2dataset writes "
            "them), or set knowledge_base.require_index=false to embed them unchecked"
        )


def check_checkpoint(storage: Storage, checkpoint: str) -> None:
    """A checkpoint given by URI or path exists, and, when a stage of this root wrote it, is still what that stage
    wrote (size and content: :meth:`Storage.gone`)."""
    uri = checkpoint if "://" in checkpoint else normalize_uri(checkpoint)
    if uri.startswith(("file://", storage.root)) and not storage.exists(uri):
        raise ModelLoadError(f"checkpoint {checkpoint} does not exist; fix: give the model.pt of a train stage")
    if damaged := storage.gone(uri):
        raise ModelLoadError(
            f"checkpoint {checkpoint} cannot be trusted: {damaged[0]} is missing, or not the size or content its "
            "stage wrote (damaged); fix: run the customize flow again (react demo), which rebuilds that stage"
        )


def check_evaluate(config: ReactConfig, storage: Storage, customized: str | None = None) -> None:
    """What the evaluate flow can check before it starts: the customized checkpoint when it is given as a URI or
    path, the evaluation data, the storage root, the tracking."""
    if customized and not customized.startswith("models:/"):
        check_checkpoint(storage, customized)
    check_miniweb_tasks(config)
    check_evaluation_data(storage, config.evaluation, config.uses_miniweb)
    storage.check_writable()
    check_tracking(config.tracking)
    if customized and customized.startswith("models:/"):
        check_registered(config, storage, customized)


def check_ablation(grid: Grid, grid_file: str) -> None:
    """Every cell of an ablation grid against the architecture (gated layers it has, ...): the problems a cell
    would otherwise meet mid-flow, one line each naming the grid file, the axis and the value."""
    problems = []
    for cell in grid.cells:
        try:
            check_model(cell.config.model, cell.config.training)
        except ConfigError as exc:
            where = "base" if cell.axis == REFERENCE else f"axis '{cell.axis}', value {cell.label!r}"
            problems.append(f"{grid_file}: {where}: {exc}")
    if problems:
        raise GridError("\n".join(problems))
