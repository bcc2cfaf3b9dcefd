"""The customize run as a plan of the library (react_core.plans): one call in a plain Python process, no Prefect, and
the same stages the customize flow runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

PLAIN = """
import json, sys
from react_core.config_loading import load_config
from react_core.plans import customize

result = customize(load_config(json.loads(sys.argv[1])))
assert not [m for m in sys.modules if m == "prefect" or m.startswith("prefect.")], "prefect was imported"
print(json.dumps({k: v for k, v in result.items() if k in ("train", "evaluate", "embed", "export", "table", "registered")}))
"""


def test_the_customize_plan_runs_in_a_plain_process_and_the_flow_reuses_every_stage(prefect_harness, tmp_path):
    from mlflow.tracking import MlflowClient

    from flows.customize import customize
    from tests.integration.test_world_flow import _task_states

    cfg = tiny_config(tmp_path / "root")
    done = subprocess.run([sys.executable, "-c", PLAIN, json.dumps(cfg.model_dump(mode="json"))], check=False, cwd=REPO,
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    assert plain["table"]["miniweb-fine"]["customized"] >= 0 and plain["registered"]["version"] == "1"
    client = MlflowClient(f"sqlite:///{tmp_path}/root/mlflow.db")
    (parent,) = client.search_runs(
        client.get_experiment_by_name(cfg.tracking.experiment).experiment_id, "tags.`react.flow` = 'customize'"
    )
    assert parent.info.status == "FINISHED" and parent.data.tags["react.stage.train"] == plain["train"]
    assert parent.info.run_name == "customize miniweb-fine"  # no Prefect flow run: the flow and the task
    assert parent.data.metrics["target/accuracy/delta"] == pytest.approx(plain["table"]["miniweb-fine"]["delta"])

    from react_core.storage import Storage

    st = Storage(cfg.storage.root)
    finished = {k: st.stage_manifest(plain[k])["finished_at"] for k in ("train", "evaluate", "embed", "export")}
    flowed = customize(config=cfg)  # the same plan through Prefect: every stage is the plain run's, none rebuilt
    assert [flowed[k] for k in finished] == [plain[k] for k in finished]
    assert flowed["table"] == plain["table"]
    assert {k: st.stage_manifest(plain[k])["finished_at"] for k in finished} == finished
    states = _task_states(flowed["flow_run_id"], {"train", "embed", "evaluation-report"})
    assert states["train"] == "Completed"  # not a Prefect cache hit (no record yet): the finished stage, reused
    assert flowed["registered"]["version"] == "1" and flowed["registered"]["new"] is False
