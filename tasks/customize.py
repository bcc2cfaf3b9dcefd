"""The tasks that are not one stage each (those are tasks.stage): the checks before any stage, and one group of the
embed stage's shards (mapped onto a Dask cluster's workers)."""

from __future__ import annotations

from prefect import get_run_logger, runtime, task

from react_core import pipeline
from react_core import preflight as checks
from react_core.config import (
    KnowledgeBaseConfig,
    ModelConfig,
    ReactConfig,
    StorageConfig,
    TrackingConfig,
)
from tasks.common import TASK_OPTIONS, storage_of, tracker_of


@task(name="preflight", cache_policy=None, persist_result=False)
def preflight(config: ReactConfig, flow_name: str = "customize", customized: str | None = None) -> None:
    """What can be checked before any stage runs (react_core.preflight), for the customize or evaluate flow (and
    the evaluate flow's ``customized`` model: a registered version's weights and architecture)."""
    if flow_name == "evaluate":
        checks.check_evaluate(config, storage_of(config.storage), customized)
    else:
        checks.check_customize(config, storage_of(config.storage))


def _shards_run_name() -> str:
    indices = runtime.task_run.parameters["indices"]
    return f"embed shards {indices[0]}..{indices[-1]}"


# Not cached by Prefect: the shard files' markers are the cache (a re-run skips finished shards), and the
# task may run on a Dask worker whose result storage the flow's process cannot read.
@task(
    name="embed-shards",
    task_run_name=_shards_run_name,
    cache_policy=None,
    persist_result=False,
    retries=TASK_OPTIONS["retries"],
    retry_delay_seconds=TASK_OPTIONS["retry_delay_seconds"],
    retry_condition_fn=TASK_OPTIONS["retry_condition_fn"],
)
def embed_shards(
    storage: StorageConfig,
    model: ModelConfig,
    knowledge_base: KnowledgeBaseConfig,
    checkpoint: str | None,
    miniweb_uri: str | None,
    indices: list[int],
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
) -> dict[str, int]:
    st = storage_of(storage)
    counts = pipeline.run_embed_shards(
        st,
        model=model,
        knowledge_base=knowledge_base,
        checkpoint=checkpoint,
        miniweb_uri=miniweb_uri,
        indices=indices,
        tracker=tracker_of(tracking, st),
        parent_run_id=parent_run_id,
    )
    get_run_logger().info("embedded shards %d..%d: %s", indices[0], indices[-1], counts)
    return counts
