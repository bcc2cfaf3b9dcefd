"""Tasks that build the mini-web world: generate the corpus and tasks, pretrain the tiny base CLIP."""

from __future__ import annotations

from prefect import task

from react_core.config import MiniWebConfig, ModelConfig, ReactConfig, StorageConfig, TrackingConfig
from react_core.miniweb.generate import generate
from react_core.tracking import make_tracker
from react_core.training.pretrain import pretrain_base
from tasks.common import TASK_OPTIONS, storage_of


@task(name="generate-miniweb", **TASK_OPTIONS)
def generate_miniweb(storage: StorageConfig, miniweb: MiniWebConfig) -> str:
    """Generate the mini-web (corpus, knowledge base, target tasks); returns its stage URI."""
    return generate(miniweb, storage_of(storage))


@task(name="pretrain-base", **TASK_OPTIONS)
def pretrain_base_model(
    storage: StorageConfig,
    model: ModelConfig,
    tracking: TrackingConfig,
    miniweb_uri: str,
    parent_run_id: str | None = None,
) -> str:
    """Pretrain the tiny base CLIP on the mini-web; returns the stage URI (model.pt inside)."""
    st = storage_of(storage)
    tracker = make_tracker(tracking, st)
    with tracker.run("pretrain-base", parent_run_id=parent_run_id) as t:
        t.log_params({"model": model.model_dump(mode="json")})
        return pretrain_base(model, st, miniweb_uri, tracker=t, progress=False)


@task(name="start-tracking", cache_policy=None, persist_result=False)
def start_tracking(config: ReactConfig, flow_name: str, flow_run_id: str | None) -> str | None:
    """Open the pipeline's parent MLflow run (tagged with the Prefect flow-run id); returns its id."""
    tracker = make_tracker(config.tracking, storage_of(config.storage))
    tags = {"prefect.flow_name": flow_name, "prefect.flow_run_id": flow_run_id or ""}
    with tracker.run(flow_name, tags=tags) as t:
        t.log_params(config.model_dump(mode="json"))
        return t.run_id


@task(name="base-report", cache_policy=None, persist_result=False)
def base_report(storage: StorageConfig, base_uri: str) -> dict:
    """The base model's zero-shot accuracies and training facts, read from its stage marker."""
    return storage_of(storage).stage_manifest(base_uri)["metrics"]
