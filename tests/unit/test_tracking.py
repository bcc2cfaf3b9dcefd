"""Where runs are tracked, and the parent run's life as the pipeline sees it (MemoryTracker)."""

import pytest

from react_core.config import ConfigError, TrackingConfig
from react_core.config_loading import load_config
from react_core.executor import execute
from react_core.parent_run import end_run, start_run
from react_core.storage import Storage
from react_core.summary import dataset_roles
from react_core.tracking import MemoryTracker, make_tracker


def _never(run):
    raise AssertionError("a finished stage is not computed again")


def test_tracking_uri_comes_from_the_config_then_the_environment_then_the_storage_root(tmp_path, monkeypatch):
    st = Storage(str(tmp_path / "root"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert make_tracker(TrackingConfig(), st).tracking_uri == f"sqlite:///{tmp_path}/root/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env.db")
    assert make_tracker(TrackingConfig(), st).tracking_uri == f"sqlite:///{tmp_path}/env.db"
    given = f"sqlite:///{tmp_path}/given.db"
    assert make_tracker(TrackingConfig(tracking_uri=given), st).tracking_uri == given


def test_the_parent_run_stays_open_and_ends_tagged_with_each_stage_and_its_producer(tmp_path):
    st = Storage(str(tmp_path))
    stage = st.stage("index", {"a": 1})
    uri = stage.complete(counts={"rows": 3})
    tracker = MemoryTracker()
    execute(stage, _never, tracker=tracker, params={"k": 1})  # an earlier run made the stage
    parent = start_run(load_config(), "customize", tracker, {"prefect.flow_run_id": "f"})
    assert tracker.runs[-1]["status"] == "RUNNING" and tracker.params["training.lr"] == load_config().training.lr
    end_run(tracker, parent, "FAILED", {"index": uri, "table": {"x": 1}, "flow_run_id": "f"})
    assert tracker.runs[-1]["status"] == "FAILED"
    assert tracker.runs[-1]["tags"]["react.stage.index"] == uri
    assert tracker.runs[-1]["tags"]["react.stage.index.run"] == "run-1"
    assert "react.stage.flow_run_id" not in tracker.runs[-1]["tags"]


def test_a_second_root_in_one_process_tracks_into_its_own_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = make_tracker(TrackingConfig(), Storage(str(tmp_path / "a")))
    second = make_tracker(TrackingConfig(), Storage(str(tmp_path / "b")))
    assert (first.tracking_uri, second.tracking_uri) == (f"sqlite:///{tmp_path}/a/mlflow.db",
                                                        f"sqlite:///{tmp_path}/b/mlflow.db")  # fmt: skip


def test_a_customized_model_is_registered_once_as_candidate_and_champion_only_when_better(tmp_path):
    from react_core.promotion import register

    st = Storage(str(tmp_path))
    cfg = load_config(None, ["retrieval.task=miniweb-fine"])
    tracker = MemoryTracker()

    def trained(lr: float, fine: float) -> dict:
        stage = st.stage("train", {"lr": lr})
        st.write_json(stage.file("model.json"), {"gated_layers": 2})
        uri = stage.complete()
        execute(stage, _never, tracker=tracker, params={"lr": lr})
        table = {"miniweb-fine": {"metric": "accuracy", "base": 0.3, "customized": fine, "delta": fine - 0.3}}
        return {"train": uri, "table": table, "evaluate": st.uri("evaluate", "x")}

    first = register(st, cfg, trained(1e-3, 0.90), tracker)
    assert {k: first[k] for k in ("name", "version", "champion", "new")} == {
        "name": "react-miniweb-fine", "version": "1", "champion": True, "new": True}  # fmt: skip
    v1 = tracker.model_registry.models["react-miniweb-fine"]["versions"][0]
    assert v1["tags"]["miniweb-fine/accuracy/customized"] == "0.9000" and v1["run_id"] == "run-1"
    assert v1["files"]["model.json"]["checkpoint"].endswith("/model.pt") and "| miniweb-fine |" in v1["description"]
    assert register(st, cfg, trained(1e-3, 0.90), tracker)["new"] is False  # a cached re-run: no new version
    worse = register(st, cfg, trained(2e-3, 0.80), tracker)
    assert worse["version"] == "2" and not worse["champion"]
    assert tracker.model_registry.models["react-miniweb-fine"]["aliases"] == {"candidate": "2", "champion": "1"}
    better = register(st, cfg, trained(3e-3, 0.95), tracker)
    assert (
        tracker.model_registry.models["react-miniweb-fine"]["aliases"] == {"candidate": "3", "champion": "3"}
        and better["champion"]
    )
    v3_file = tracker.model_registry.models["react-miniweb-fine"]["versions"][2]["tags"]["react.model_file"]
    never = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"promote": "never"})})
    register(st, never, trained(4e-3, 0.99), tracker)
    assert tracker.model_registry.models["react-miniweb-fine"]["aliases"] == {"candidate": "4", "champion": "3"}

    # Another architecture cannot join these versions: refused, one line naming the champion's and the fix.
    other = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": "react-micro-vit"})})
    with pytest.raises(ConfigError, match=r"models:/react-miniweb-fine@champion is a react-tiny-vit model and this "
                                          r"run trains react-micro-vit.*fix: .*react-\{task\}-\{model\}"):  # fmt: skip
        register(st, other, trained(5e-3, 0.99), tracker)
    assert len(tracker.model_registry.models["react-miniweb-fine"]["versions"]) == 4
    own = other.model_copy(update={"tracking": other.tracking.model_copy(update={"registered_model": "react-{task}-{model}"})})  # fmt: skip
    assert register(st, own, trained(5e-3, 0.99), tracker)["name"] == "react-miniweb-fine-react-micro-vit"

    # A version resolves by its alias or its number (models:/NAME/VERSION, what a registration event names).
    from react_core.registry import resolve_registered

    by_alias = resolve_registered("models:/react-miniweb-fine@champion", tracker.model_registry)
    assert resolve_registered("models:/react-miniweb-fine/3", tracker.model_registry) == by_alias
    assert by_alias[0] == v3_file and by_alias[0] != v1["files"]["model.json"]["checkpoint"]
    for gone, says in (("models:/react-miniweb-fine/9", "is version 9"), ("models:/react-miniweb-fine@best",
                       "has the alias 'best'"), ("models:/react-miniweb-fine", "not a registered model's URI")):  # fmt: skip
        with pytest.raises(ConfigError, match=says):
            resolve_registered(gone, tracker.model_registry)


def test_the_first_version_is_champion_only_when_it_beats_the_base_on_its_target(tmp_path):
    from react_core.promotion import register

    st = Storage(str(tmp_path))
    cfg = load_config(None, ["retrieval.task=miniweb-fine"])
    tracker = MemoryTracker()
    for i, fine in enumerate((0.30, 0.25, 0.31)):  # the base: 0.30
        stage = st.stage("train", {"i": i})
        st.write_json(stage.file("model.json"), {"gated_layers": 2})
        uri = stage.complete()
        execute(stage, _never, tracker=tracker, params={"i": i})
        table = {"miniweb-fine": {"metric": "accuracy", "base": 0.3, "customized": fine, "delta": fine - 0.3}}
        out = register(st, cfg, {"train": uri, "table": table}, tracker)
        assert out["champion"] is (fine > 0.30), (fine, out)
    assert tracker.model_registry.models["react-miniweb-fine"]["aliases"] == {"candidate": "3", "champion": "3"}


def test_champion_moves_only_on_evidence_a_gain_within_the_allowed_losses_that_beats_the_champion(tmp_path):
    from react_core.promotion import register

    st = Storage(str(tmp_path))
    cfg = load_config(None, ["retrieval.task=miniweb-fine"])
    assert dataset_roles(cfg) == {"miniweb-fine": "target", "miniweb-coarse": "other", "miniweb-generic": "generic",
                                  "miniweb-captions": "retrieval"}  # fmt: skip
    tracker = MemoryTracker()

    def version(i: int, fine: float, generic: float, coarse: float, config=cfg) -> dict:
        stage = st.stage("train", {"i": i})
        st.write_json(stage.file("model.json"), {"gated_layers": 2})
        stage.complete()
        execute(stage, _never, tracker=tracker, params={"i": i})
        table = {name: {"metric": "accuracy", "base": 0.5, "customized": 0.5 + d, "delta": d}
                 for name, d in (("miniweb-fine", fine), ("miniweb-generic", generic), ("miniweb-coarse", coarse))}  # fmt: skip
        out = register(st, config, {"train": stage.uri, "table": table}, tracker)
        tags = tracker.model_registry.models["react-miniweb-fine"]["versions"][int(out["version"]) - 1]["tags"]
        assert tags["react.promotion.reason"] == out["decision"]["reason"] and "\n" not in out["decision"]["reason"]
        return out

    forgets = version(1, fine=0.30, generic=-0.03, coarse=0.0)  # a gain, but the base's knowledge paid for it
    assert not forgets["champion"] and "generic change -0.030 loses more than 0.020" in forgets["decision"]["reason"]
    hurts = version(2, fine=0.30, generic=0.0, coarse=-0.021)
    assert not hurts["champion"] and "other-task change -0.021 loses more than 0.020" in hurts["decision"]["reason"]
    no_gain = version(3, fine=0.0, generic=0.0, coarse=0.0)
    assert not no_gain["champion"] and "target gain +0.000 is not above +0.000" in no_gain["decision"]["reason"]
    first = version(4, fine=0.20, generic=-0.02, coarse=-0.01)  # losses within 0.02: champion
    assert first["champion"] and first["decision"]["generic_change"] == pytest.approx(-0.02)
    smaller = version(5, fine=0.10, generic=0.0, coarse=0.0)  # passes the thresholds, but the champion is better
    assert not smaller["champion"] and "does not beat the champion's 0.700" in smaller["decision"]["reason"]
    better = version(6, fine=0.25, generic=0.0, coarse=0.0)
    assert better["champion"] and "beats 0.700" in better["decision"]["reason"]
    strict = load_config(None, ["retrieval.task=miniweb-fine", "tracking.thresholds.min_gain=0.3"])
    assert not version(7, fine=0.29, generic=0.0, coarse=0.0, config=strict)["champion"]
    assert version(8, fine=0.31, generic=0.0, coarse=0.0, config=strict)["champion"]
    assert tracker.model_registry.models["react-miniweb-fine"]["aliases"] == {"candidate": "8", "champion": "8"}


def test_an_object_store_root_keeps_the_mlflow_store_in_the_working_folder_and_says_so(tmp_path, monkeypatch, caplog):
    from react_core.storage import Storage
    from react_core.tracking import default_tracking_uri

    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="react_core.tracking"):
        uri, artifacts = default_tracking_uri(Storage("memory://object-store-root"))
    assert uri == f"sqlite:///{tmp_path}/react-mlflow.db" and artifacts == "memory://object-store-root/mlartifacts"
    assert "sqlite cannot live there" in caplog.text and "tracking.tracking_uri" in caplog.text
    local, _ = default_tracking_uri(Storage(str(tmp_path / "root")))
    assert local == f"sqlite:///{tmp_path}/root/mlflow.db"


def test_a_tracking_server_that_is_gone_is_recognised_from_mlflow_s_own_error(monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from react_core.tracking import SERVER_REQUEST_DEFAULTS, unreachable_server
    from tests.conftest import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    url = f"http://user:s3cret@127.0.0.1:{free_port()}"  # nothing listens there; a password in the URI
    with pytest.raises(MlflowException) as caught:
        MlflowClient(url).get_experiment_by_name("x")
    said = unreachable_server(caught.value)
    assert said is not None and "127.0.0.1" in said and "s3cret" not in said
    try:  # wrapped, as a task failure or a stage's error carries it
        raise RuntimeError("stage failed") from caught.value
    except RuntimeError as wrapped:
        assert unreachable_server(wrapped) == said
    assert unreachable_server(MlflowException("RESOURCE_DOES_NOT_EXIST: no such run")) is None
    assert unreachable_server(ValueError("Connection refused")) is None  # not MLflow's
    assert int(SERVER_REQUEST_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) <= 3  # gives up within a minute


def test_the_headline_table_becomes_the_parent_run_s_metrics():
    from react_core.parent_run import end_run, headline_metrics
    from react_core.tracking import MemoryTracker

    table = {
        "fine": {"metric": "accuracy", "base": 0.25, "customized": 0.5, "delta": 0.25},
        "generic": {"metric": "accuracy", "base": 0.8, "customized": 0.75, "delta": -0.05},
        "captions": {"metric": "i2t_r@1", "base": 0.1, "customized": 0.2, "delta": 0.1},
        "coarse": {"metric": "accuracy", "base": 0.5, "customized": 0.5, "delta": 0.0},
        "coarse-2": {"metric": "accuracy", "base": 0.4, "customized": 0.3, "delta": -0.1},
    }
    roles = {"fine": "target", "generic": "generic", "captions": "retrieval"}  # the rest: other
    metrics = headline_metrics(table, roles)
    assert metrics["zero-shot/fine/accuracy/customized"] == 0.5 and metrics["target/accuracy/delta"] == 0.25
    assert metrics["generic/accuracy/delta"] == -0.05 and metrics["zero-shot/captions/i2t_r_1/delta"] == 0.1
    assert not any(k.startswith("other/") for k in metrics)  # two datasets share the role: no single headline
    assert len([k for k in metrics if k.startswith("zero-shot/")]) == 15
    base_only = headline_metrics({"fine": {"metric": "accuracy", "base": 0.25}}, roles)  # the evaluate flow, no model
    assert base_only == {"zero-shot/fine/accuracy/base": 0.25}
    tracker = MemoryTracker()
    run_id = tracker.open_run("customize")
    end_run(tracker, run_id, "FINISHED", {}, metrics)
    assert tracker.runs[0]["metrics"] == metrics and tracker.runs[0]["status"] == "FINISHED"
