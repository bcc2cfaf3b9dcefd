import importlib
from pathlib import Path

import pytest
import yaml

from react_core.config import ConfigError
from react_core.config_loading import load_config
from react_core.overrides import ConfigOverrides, apply_overrides

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENTS = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


def _flow(dep):
    module, func = dep["entrypoint"].split(":")
    return getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), func)


@pytest.mark.parametrize("dep", DEPLOYMENTS, ids=lambda d: d["name"])
def test_each_deployment_names_a_preset_that_validates(dep):
    preset = REPO / "deployments" / f"{dep['parameters']['preset']}.yaml"
    assert preset.exists(), f"prefect.yaml deployment {dep['name']} names no preset file {preset}"
    load_config(preset)
    schema = _flow(dep).parameters.properties
    assert dep["parameters"]["preset"] in schema["preset"]["enum"]  # a choice of the form's list


@pytest.mark.parametrize("dep", DEPLOYMENTS, ids=lambda d: d["name"])
def test_deployment_entrypoints_resolve(dep):
    flow = _flow(dep)
    assert flow.name in {"customize", "evaluate", "prepare-world", "ablate"}
    assert {"preset", "config"} <= set(flow.parameters.properties)


def test_a_run_changes_only_the_fields_it_names():
    tiny = load_config(REPO / "deployments" / "tiny.yaml")
    # What Prefect hands the flow for `--params '{"config": {"training": {"epochs": 1}}}'` on customize/tiny.
    run = apply_overrides(REPO / "deployments" / "tiny.yaml", {"training": {"epochs": 1}, "index": {"index_key": None}})
    assert run.training.epochs == 1 and run.index.index_key is None
    assert run.model_copy(update={"training": tiny.training, "index": tiny.index}) == tiny
    assert run.training.model_copy(update={"epochs": tiny.training.epochs}) == tiny.training
    assert apply_overrides(REPO / "deployments" / "demo.yaml", tiny) == tiny  # a full tree changes everything
    with pytest.raises(ConfigError, match=r"training.epochs.*greater than or equal to 1"):
        apply_overrides(REPO / "deployments" / "tiny.yaml", {"training": {"epochs": 0}})
    with pytest.raises(ConfigError, match=r"training.epoch"):
        apply_overrides(REPO / "deployments" / "tiny.yaml", {"training": {"epoch": 1}})


def test_the_form_is_typed_with_bounds_and_keeps_secrets():
    from flows.customize import customize

    props = customize.parameters.model_dump()["definitions"]
    training = props["TrainingConfigOverrides"]["properties"]
    assert {"type": "integer", "minimum": 1} in training["epochs"]["anyOf"]
    assert training["epochs"]["description"] and training["epochs"]["default"] is None
    named = ConfigOverrides.model_validate({"storage": {"options": {"secret": "s3cr3t"}}})
    assert "s3cr3t" not in named.model_dump_json()


@pytest.mark.parametrize("dep", [d for d in DEPLOYMENTS if d.get("schedules")], ids=lambda d: d["entrypoint"])
def test_schedules_are_valid_crons_active_only_where_their_data_is_made_here(dep):
    from prefect.client.schemas.schedules import CronSchedule

    for schedule in dep["schedules"]:
        CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # raises on a bad expression
        preset = load_config(REPO / "deployments" / f"{dep['parameters']['preset']}.yaml")
        assert schedule["active"] == preset.uses_miniweb, "a schedule needing outside data starts inactive"
    assert _flow(dep).name == "evaluate" and dep["parameters"]["customized"].endswith("@champion")


def test_the_evaluated_champion_is_the_one_customize_registers():
    for dep in DEPLOYMENTS:
        if _flow(dep).name == "evaluate" and "customized" in dep["parameters"]:
            preset = load_config(REPO / "deployments" / f"{dep['parameters']['preset']}.yaml")
            name = preset.tracking.registered_model.format(task=preset.retrieval.task)
            assert dep["parameters"]["customized"] == f"models:/{name}@champion"


def test_the_elevater_preset_retrieves_for_all_twenty_and_evaluates_them_with_imagenet_as_generic():
    from react_core.registry import check_task, elevater_datasets
    from react_core.storage import Storage

    cfg = load_config(REPO / "deployments" / "elevater.yaml")
    assert cfg.retrieval.target_tasks == elevater_datasets() and len(cfg.retrieval.target_tasks) == 20
    for name in cfg.retrieval.target_tasks:
        check_task(Storage(str(REPO)), name)
    assert set(cfg.evaluation.tasks) == {*elevater_datasets(), "imagenet-1k"}
    assert cfg.evaluation.generic_tasks == ["imagenet-1k"]
    assert {d["parameters"]["preset"] for d in DEPLOYMENTS if d["name"] == "elevater"} == {"elevater"}


def test_the_ablate_deployment_runs_a_shipped_grid_that_fits_its_preset():
    from flows.ablate import grid_file
    from react_core.ablation import load_grid

    (dep,) = [d for d in DEPLOYMENTS if d["entrypoint"] == "flows/ablate.py:ablate"]
    grid = load_grid(grid_file(dep["parameters"]["grid"]), load_config(REPO / "deployments" / "demo.yaml"))
    assert set(grid.axes) >= {"tuning", "size", "search", "gated_layers", "filtering", "audit", "control", "rivals"}
    assert len(grid.seeds) == 3
