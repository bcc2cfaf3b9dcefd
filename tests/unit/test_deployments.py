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


TRIGGERED = [d for d in DEPLOYMENTS if d.get("triggers")]


def _registered(preset: str, name: str = "react-miniweb-fine", version: str = "3"):
    """The event a customize run of ``preset`` emits for a new version (tasks.world.registered_event)."""
    from prefect.events import Event

    from tasks.world import registered_event

    reg = {"name": name, "version": version, "champion": False, "new": True, "decision": {"reason": "candidate"}}
    return Event(**registered_event(reg, preset, "0b5d2d3e-64a2-4b1a-9a63-2f1b7b7b0c11"))


def _fires(trigger: dict, event) -> bool:
    from prefect.events.schemas.events import ResourceSpecification

    return event.event in trigger["expect"] and ResourceSpecification(trigger["match"]).includes([event.resource])


@pytest.mark.parametrize("dep", TRIGGERED, ids=lambda d: d["name"])
def test_each_evaluate_deployment_follows_the_registrations_of_its_preset_only(dep):
    """A new version's event fires the trigger of the evaluate deployment of the run's preset and no other; the
    trigger is a valid deployment trigger, enabled exactly where the deployment's schedule (or, without one, its
    preset's data) is."""
    from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    assert _flow(dep).name == "evaluate"
    preset = dep["parameters"]["preset"]
    for trigger in dep["triggers"]:
        TypeAdapter(DeploymentTriggerTypes).validate_python(trigger)  # what `prefect deploy` validates
        assert _fires(trigger, _registered(preset))
        for other in {d["parameters"]["preset"] for d in TRIGGERED} - {preset}:
            assert not _fires(trigger, _registered(other)), other
        active = [s["active"] for s in dep.get("schedules", [])] or [
            load_config(REPO / "deployments" / f"{preset}.yaml").uses_miniweb
        ]
        assert trigger["enabled"] == active[0]
    assert len({t["name"] for d in TRIGGERED for t in d["triggers"]}) == sum(len(d["triggers"]) for d in TRIGGERED)


@pytest.mark.parametrize("dep", TRIGGERED, ids=lambda d: d["name"])
def test_a_trigger_runs_the_evaluate_flow_on_the_version_the_event_names(dep):
    """The trigger's parameters rendered as the server renders a run-deployment action's (its v1 templates
    upgraded, then hydrated with the triggering event): ``customized`` is ``models:/NAME/VERSION``, which the
    evaluate flow resolves; `prefect deploy` leaves the template for the server (its own placeholders are the build
    steps' outputs)."""
    from prefect.server.events.actions import RunDeployment
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate
    from prefect.utilities.templating import apply_values

    (trigger,) = dep["triggers"]
    params = apply_values(trigger["parameters"], {"commit": {"stdout": "abc"}})  # what deploy does with the file
    RunDeployment._upgrade_v1_templates(params)
    event = _registered(dep["parameters"]["preset"], "react-my-task", "12")
    rendered = hydrate(params, HydrationContext(raise_on_error=True, render_jinja=True, jinja_context={"event": event}))
    assert rendered == {"customized": "models:/react-my-task/12"}
