"""The prepare-world flow under Prefect (ephemeral test API), tracked in MLflow (sqlite under the root)."""

import asyncio
import re

import pytest

from react_core.storage import Storage
from tests.conftest import tiny_config

pytestmark = pytest.mark.integration


def _task_states(flow_run_id, expected: set[str], timeout: float = 60.0):
    """Final state names of a flow run's task runs, by task name.

    The server records task runs and their states from events, asynchronously: right after a flow
    returns, a task run may be missing or still read 'Pending'. Poll (with a deadline) until every
    expected task has a run in a final state.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def go():
        deadline = asyncio.get_running_loop().time() + timeout
        async with get_client() as client:
            while True:
                runs = await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
                )
                # Prefect names runs "{task}-{short key}"; runs named by a task_run_name template keep their name.
                grouped: dict[str, list] = {}
                for r in runs:
                    grouped.setdefault(re.sub(r"-[0-9a-z]{1,3}$", "", r.name), []).append(r.state)
                every = [s for group in grouped.values() for s in group]
                if expected <= set(grouped) and all(s is not None and s.is_final() for s in every):
                    return {k: ",".join(sorted({s.name for s in group})) for k, group in grouped.items()}
                if asyncio.get_running_loop().time() > deadline:
                    return {r.name.rsplit("-", 1)[0]: r.state.name if r.state else None for r in runs}
                await asyncio.sleep(0.2)  # poll interval of a condition wait, not a synchronising sleep

    return asyncio.run(go())


def test_prepare_world_flow_tracks_and_caches(prefect_harness, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from flows.world import prepare_world

    cfg = tiny_config(tmp_path / "root")
    first = prepare_world(config=cfg)
    assert first["miniweb"].startswith(f"file://{tmp_path}/root/miniweb/")
    assert first["base"].startswith(f"file://{tmp_path}/root/base/")
    assert {"miniweb-fine.top1", "miniweb-coarse.top1", "wall_s"} <= set(first["report"])
    st = Storage(cfg.storage.root)
    assert st.stage_manifest(first["base"])["inputs"] == {"miniweb": first["miniweb"]}

    client = MlflowClient(f"sqlite:///{tmp_path}/root/mlflow.db")
    parent = client.get_run(first["mlflow_run_id"])
    assert parent.data.tags["prefect.flow_run_id"] == str(first["flow_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    runs = {c.info.run_name: c for c in children}  # each stage records itself (react_core.executor)
    assert sorted(runs) == ["miniweb", "pretrain-base"]
    assert "zeroshot/miniweb-fine/top1" in runs["pretrain-base"].data.metrics
    assert runs["miniweb"].data.tags["react.stage_uri"] == first["miniweb"]
    assert parent.data.params["miniweb.kb_size"] == str(cfg.miniweb.kb_size)
    mlflow.set_tracking_uri(None)

    second = prepare_world(config=cfg)
    assert (second["miniweb"], second["base"]) == (first["miniweb"], first["base"])
    states = _task_states(second["flow_run_id"], {"generate-miniweb", "pretrain-base"})
    assert states["generate-miniweb"] == "Cached" and states["pretrain-base"] == "Cached"
    # a different pretraining config re-runs pretraining but not the world
    third = prepare_world(config=tiny_config(tmp_path / "root", **{"model.pretrain.seed": 3}))
    assert third["miniweb"] == first["miniweb"] and third["base"] != first["base"]
    states = _task_states(third["flow_run_id"], {"generate-miniweb", "pretrain-base"})
    assert states["generate-miniweb"] == "Cached" and states["pretrain-base"] == "Completed"
