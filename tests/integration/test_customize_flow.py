"""The customize flow end to end on the tiny mini-web, under Prefect's test API."""

import asyncio
import json

import pytest

from tests.conftest import tiny_config
from tests.integration.test_world_flow import _task_states

pytestmark = pytest.mark.integration

DATASETS = ("miniweb-fine", "miniweb-coarse", "miniweb-generic", "miniweb-captions")
EVALS = [f"eval {d} ({m})" for d in DATASETS for m in ("base", "customized")]
STAGES = ["generate-miniweb", "pretrain-base", "embed", "index", "retrieve", "download", "train", *EVALS,
          "evaluation-report"]  # fmt: skip


def _artifacts(flow_run_id) -> dict:
    """The artifacts of a flow run, by key, read back through the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def go():
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )
            return {a.key: a for a in found}

    return asyncio.run(go())


def _flow_run_name(flow_run_id) -> str:
    from prefect.client.orchestration import get_client

    async def go():
        async with get_client() as client:
            return (await client.read_flow_run(flow_run_id)).name

    return asyncio.run(go())


def test_customize_flow_runs_caches_and_reruns_only_what_changed(prefect_harness, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from flows.customize import customize

    # MLflow publishes a sample only after a whole interval within the run: the tiny training lasts seconds
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    cfg = tiny_config(tmp_path / "root")
    first = customize(config=cfg)
    assert set(first["table"]) == set(DATASETS)  # the generic probe is evaluated by default
    for row in first["table"].values():
        assert 0 <= row["base"] <= 1 and 0 <= row["customized"] <= 1
        assert row["delta"] == pytest.approx(row["customized"] - row["base"])
    client = MlflowClient(f"sqlite:///{tmp_path}/root/mlflow.db")
    parent = client.get_run(first["mlflow_run_id"])
    # named after the flow, the task and the flow run (Prefect's name): runs told apart in MLflow's list
    assert parent.info.run_name == f"customize miniweb-fine · {_flow_run_name(first['flow_run_id'])}"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    # Every stage records itself the same way (react_core.executor), each dataset's evaluation included.
    names = {c.info.run_name for c in children}
    shard_runs = {n for n in names if n.startswith("embed shards ")}  # each group of shards, where it ran
    assert shard_runs and names - shard_runs == {
        "miniweb", "pretrain-base", "embed", "index", "retrieve", "download", "train", "evaluate", "export",
        *(f"eval {d}" for d in DATASETS)}  # fmt: skip
    runs = {c.info.run_name: c for c in children}
    # the machine's use sampled while training ran (CPU and memory here; GPU too where NVML answers); the shard
    # groups' runs sample too, but a tiny group can end before MLflow's first sample
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        runs["train"].data.metrics
    )
    assert sum(runs[n].data.metrics["embed-shards/embedded"] for n in shard_runs) == runs["embed"].data.metrics[
        "embed/embedded"]  # fmt: skip
    evals = [c for c in children if c.info.run_name == "eval miniweb-fine"]
    assert len(evals) == 2 and {c.data.params["weights"] for c in evals} == {
        first["base"],
        f"{first['train']}/model.pt",
    }
    by_weights = {c.data.params["weights"]: c.data.metrics["eval/miniweb-fine/accuracy"] for c in evals}
    assert by_weights[first["base"]] == pytest.approx(first["table"]["miniweb-fine"]["base"])
    assert by_weights[f"{first['train']}/model.pt"] == pytest.approx(first["table"]["miniweb-fine"]["customized"])
    (features,) = client.search_runs([parent.info.experiment_id], "attributes.run_name = 'text-features'")
    assert features.data.tags["mlflow.parentRunId"] == runs["train"].info.run_id  # made for the training, in its run
    assert runs["miniweb"].data.metrics["miniweb/kb.pairs"] > 0 and features.data.metrics["text-features/captions"] > 0
    assert runs["embed"].data.metrics["embed/embedded"] > 0 and runs["embed"].data.metrics["embed/skipped"] == 0
    assert (
        runs["embed"].data.metrics["embed/workers"] == 1
        and runs["embed"].data.metrics["embed/pairs_per_s_per_worker"] > 0
    )
    assert runs["index"].data.metrics[f"index/image.recall_at_{cfg.retrieval.k}"] >= 0.95
    assert runs["export"].data.metrics["export/min_cosine"] >= 1 - 1e-4  # the served towers are the model's
    assert runs["download"].data.metrics["download/successes"] > 0
    assert {a.path for a in client.list_artifacts(runs["download"].info.run_id)} == {"download_summary.json"}
    retrieve_run = next(c for c in children if c.info.run_name == "retrieve")
    assert {a.path for a in client.list_artifacts(retrieve_run.info.run_id)} == {
        "class_counts.json",
        "class_counts.png",
        "overlap.json",
        "retrieved_samples.png",
    }
    assert retrieve_run.data.metrics["retrieve/pairs"] > 0
    assert retrieve_run.data.metrics["retrieve/overlap.checked"] >= retrieve_run.data.metrics["retrieve/pairs"]
    evaluate = next(c for c in children if c.info.run_name == "evaluate")
    assert "zero-shot/miniweb-fine/accuracy/delta" in evaluate.data.metrics
    assert evaluate.data.metrics["zero-shot/miniweb-fine/accuracy/base"] == first["table"]["miniweb-fine"]["base"]
    artifacts = {a.path for a in client.list_artifacts(evaluate.info.run_id)}
    assert artifacts == {"evaluation_table.json", "metrics.json", "deltas.png"}

    # The results in the Prefect UI: the table, the model's link, the retrieval summary.
    artifacts = _artifacts(first["flow_run_id"])
    assert {"evaluation", "summary", "customized-model"} <= set(artifacts), artifacts
    assert all(a.task_run_id is None for a in artifacts.values())  # the flow run's own, not a task run's
    table = artifacts["evaluation"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert {r["dataset"]: r["customized"] for r in table} == pytest.approx(
        {d: r["customized"] for d, r in first["table"].items()}, abs=1e-4
    )
    # Target first, then what the base knew, then the rest; the summary says what the gain cost.
    assert [(r["dataset"], r["role"], r["metric"]) for r in table] == [
        ("miniweb-fine", "target", "accuracy"), ("miniweb-generic", "generic", "accuracy"),
        ("miniweb-captions", "retrieval", "i2t_r1"), ("miniweb-coarse", "other", "accuracy")]  # fmt: skip
    d = {k: r["delta"] for k, r in first["table"].items()}
    assert (f"**Gain and its price** (zero-shot, customized - base): target miniweb-fine {d['miniweb-fine']:+.3f}; "
            f"generic miniweb-generic {d['miniweb-generic']:+.3f}; retrieval miniweb-captions "
            f"{d['miniweb-captions']:+.3f}; other miniweb-coarse {d['miniweb-coarse']:+.3f}."
            ) in artifacts["summary"].data  # fmt: skip
    assert "**Retrieval** for `miniweb-fine`" in artifacts["summary"].data
    assert f"({first['train']}/model.pt)" in artifacts["customized-model"].data  # a markdown link

    # The customized model is a registered version (MLflow's registry), candidate and, being the first, champion
    # when the evidence holds: a target gain, at most 0.02 lost on the generic probe and on the other task.
    name = "react-miniweb-fine-react-micro-vit"  # the tiny preset's react-{task}-{model}
    candidate = client.get_model_version_by_alias(name, "candidate")
    t = first["table"]
    earned = (
        t["miniweb-fine"]["delta"] > 0 and min(t["miniweb-generic"]["delta"], t["miniweb-coarse"]["delta"]) >= -0.02
    )
    aliases = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    assert aliases == {"candidate": "1", **({"champion": "1"} if earned else {})}, candidate.tags
    assert candidate.tags["react.promotion.champion"] == str(earned)
    assert candidate.tags["react.promotion.reason"] in artifacts["summary"].data  # the decision, in the summary
    assert candidate.run_id == runs["train"].info.run_id and candidate.tags["react.train_stage"] == first["train"]
    assert float(candidate.tags["miniweb-fine/accuracy/customized"]) == pytest.approx(
        first["table"]["miniweb-fine"]["customized"], abs=1e-4
    )
    # ... an MLflow model (react_core.serving) linked to the train run, the towers inside it
    assert candidate.source.startswith("models:/m-") and candidate.tags["react.export_stage"] == first["export"]
    logged = client.get_logged_model(candidate.source.removeprefix("models:/"))
    assert logged.source_run_id == runs["train"].info.run_id
    assert {"MLmodel", "clip_pyfunc.py", "artifacts"} <= {
        a.path for a in client.list_logged_model_artifacts(logged.model_id)}  # fmt: skip

    # The parent run lasts as long as the flow and says where every stage is and which run made it.
    assert parent.info.status == "FINISHED" and parent.info.end_time - parent.info.start_time > 5_000
    assert parent.data.tags["react.stage.train"] == first["train"]
    assert parent.data.tags["react.stage.train.run"] == runs["train"].info.run_id
    # ... and shows the result: the headline table as its metrics, and the target's and generic probe's change.
    headline = {f"zero-shot/{d}/{r['metric']}/{c}": r[c] for d, r in first["table"].items()
                for c in ("base", "customized", "delta")}  # fmt: skip
    assert {k: v for k, v in parent.data.metrics.items() if k.startswith("zero-shot/")} == pytest.approx(headline)
    assert parent.data.metrics["target/accuracy/delta"] == pytest.approx(first["table"]["miniweb-fine"]["delta"])
    assert parent.data.metrics["generic/accuracy/delta"] == pytest.approx(first["table"]["miniweb-generic"]["delta"])

    second = customize(config=cfg)
    assert second["table"] == first["table"]
    states = _task_states(second["flow_run_id"], set(STAGES))
    assert all(states[s] == "Cached" for s in STAGES), states
    cached_parent = client.get_run(second["mlflow_run_id"])  # nothing ran: not empty, it points at the producers

    def inputs_and_model(run) -> tuple[dict, list]:
        found = {(i.dataset.name, next(t.value for t in i.tags if t.key == "mlflow.data.context")): i.dataset
                 for i in run.inputs.dataset_inputs}  # fmt: skip
        return found, [m.model_id for m in run.outputs.model_outputs]

    # The parent shows what the run read, by reference (URI and digest) and the model it registered.
    datasets, models = inputs_and_model(client.get_run(first["mlflow_run_id"]))
    assert set(datasets) == {("knowledge-base", "knowledge-base"), ("retrieved pairs", "training")} | {
        (d, "evaluation") for d in DATASETS}  # fmt: skip
    assert (
        json.loads(datasets[("retrieved pairs", "training")].source)["uri"] == f"{first['retrieve']}/manifest.parquet"
    )
    assert datasets[("retrieved pairs", "training")].digest == first["retrieve"].rsplit("/", 1)[-1]
    assert models == [candidate.source.removeprefix("models:/")]
    assert inputs_and_model(cached_parent) == (datasets, models)  # a cached re-run: the same page
    assert cached_parent.info.status == "FINISHED" and cached_parent.data.params["training.lr"] == str(cfg.training.lr)
    assert cached_parent.data.tags["react.stage.train.run"] == runs["train"].info.run_id
    assert cached_parent.data.tags["react.stage.evaluate.run"] == evaluate.info.run_id
    assert cached_parent.data.metrics == pytest.approx(parent.data.metrics)  # the same result, not an empty page

    third = customize(config=tiny_config(tmp_path / "root", **{"training.lr": 0.002}))
    states = _task_states(third["flow_run_id"], set(STAGES))
    assert all(states[s] == "Cached" for s in STAGES[:6]), states
    assert all(states[f"eval {d} (base)"] == "Cached" for d in DATASETS), states
    assert states["train"] == "Completed" and states["evaluation-report"] == "Completed"
    assert states["eval miniweb-fine (customized)"] == "Completed"
    assert third["train"] != first["train"] and third["retrieve"] == first["retrieve"]
    assert len(client.search_model_versions(f"name = '{name}'")) == 2  # the cached second run added none
    assert str(client.get_model_version_by_alias(name, "candidate").version) == "2"
    t3 = third["table"]
    earned3 = (
        t3["miniweb-fine"]["delta"] > 0 and min(t3["miniweb-generic"]["delta"], t3["miniweb-coarse"]["delta"]) >= -0.02
    )
    better = not earned or t3["miniweb-fine"]["customized"] > t["miniweb-fine"]["customized"]
    champion = "2" if earned3 and better else "1" if earned else None
    held = client.get_registered_model(name).aliases.get("champion")
    assert (None if held is None else str(held)) == champion, client.get_model_version(name, "2").tags

    # A cache that cannot return what is not there: the customized model deleted, the retrieve stage's marker
    # gone, the index truncated. Only those tasks run again (rebuilding at the same URIs); the rest is cached.
    from react_core.storage import Storage, join

    st = Storage(cfg.storage.root)
    st.rm(join(first["train"], "model.pt"))
    st.rm(join(first["retrieve"], "_SUCCESS"))
    index_file = join(first["index"], "image.index")
    st.write_bytes(index_file, st.read_bytes(index_file)[:100])
    fourth = customize(config=cfg)
    states = _task_states(fourth["flow_run_id"], set(STAGES))
    assert {s for s in STAGES if states[s] != "Cached"} == {"index", "retrieve", "train"}, states
    assert fourth["train"] == first["train"] and st.exists(join(first["train"], "model.pt"))
    assert st.stage_manifest(first["retrieve"])["counts"] == st.stage_manifest(third["retrieve"])["counts"]
    assert fourth["table"] == first["table"]

    # The evaluate flow (the nightly deployment) evaluates a registered version by its alias (the champion's, when
    # one earned it).
    from flows.evaluate import evaluate

    alias = "champion" if champion else "candidate"
    held = client.get_model_version_by_alias(name, alias)
    night = evaluate(config=cfg, customized=f"models:/{name}@{alias}")
    assert night["table"]["miniweb-fine"]["customized"] == pytest.approx(
        float(held.tags["miniweb-fine/accuracy/customized"]), abs=1e-4
    )
    # ... visible as a customize run is: its table and summary on the flow run, its parent named after what it
    # evaluated and showing the result, also when every stage was cached (the second night)
    shown = _artifacts(night["flow_run_id"])
    assert {"evaluation", "summary"} <= set(shown) and all(a.task_run_id is None for a in shown.values())
    assert f"models:/{name}@{alias}" in client.get_run(night["mlflow_run_id"]).info.run_name
    cached_night = evaluate(config=cfg, customized=f"models:/{name}@{alias}")
    metrics = client.get_run(cached_night["mlflow_run_id"]).data.metrics
    assert metrics["target/accuracy/delta"] == pytest.approx(night["table"]["miniweb-fine"]["delta"])
    assert metrics == pytest.approx(client.get_run(night["mlflow_run_id"]).data.metrics)
    with pytest.raises(Exception, match="no version of registered model 'react-nothing' has the alias 'champion'"):
        evaluate(config=cfg, customized="models:/react-nothing@champion")

    # A lambda is part of the registered version: the same model at lambda 0.5 is a new version, and evaluating
    # that version by its alias evaluates it at 0.5 without being told.
    halved = customize(config=tiny_config(tmp_path / "root", **{"evaluation.gate_scale": 0.5}))
    assert halved["train"] == first["train"] and halved["registered"]["new"]
    scaled = client.get_model_version_by_alias(name, "candidate")
    assert scaled.tags["react.gate_scale"] == "0.5" and scaled.tags["react.train_stage"] == first["train"]
    again = evaluate(config=cfg, customized=f"models:/{name}@candidate")
    assert again["table"]["miniweb-fine"]["customized"] == pytest.approx(
        float(scaled.tags["miniweb-fine/accuracy/customized"]), abs=1e-4
    )
    assert again["table"]["miniweb-fine"]["customized"] == pytest.approx(
        halved["table"]["miniweb-fine"]["customized"], abs=1e-6
    )
    assert "customized: gate scale (lambda) 0.5" in st.read_bytes(join(again["evaluate"], "table.md")).decode()

    # A flow that fails ends its parent run FAILED (it was FINISHED 0.1 s after starting, whatever happened).
    with pytest.raises(Exception, match="min_per_class"):
        customize(config=tiny_config(tmp_path / "root", **{"retrieval.min_per_class": 100000}))
    failed = client.search_runs([parent.info.experiment_id], "attributes.status = 'FAILED'")
    # this one and the stage that failed (its run names the stage); the bad alias above failed at preflight, before
    # its flow opened a run
    assert sorted(r.data.tags.get("react.flow", r.info.run_name) for r in failed) == ["customize", "retrieve"]
    failed = [r for r in failed if r.data.tags.get("react.flow") == "customize"]
    assert failed[0].data.tags["react.stage.index"] == first["index"]  # what it got to is recorded
