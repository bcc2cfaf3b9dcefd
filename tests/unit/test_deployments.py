from pathlib import Path

import pytest
import yaml

from react_core.config import load_config

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENTS = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("dep", DEPLOYMENTS, ids=lambda d: d["name"])
def test_deployment_parameters_validate_and_match_their_preset(dep):
    cfg = load_config(dep["parameters"]["config"])
    preset = REPO / "deployments" / f"{dep['name']}.yaml"
    assert preset.exists(), f"prefect.yaml deployment {dep['name']} has no preset {preset}"
    assert cfg == load_config(preset)


@pytest.mark.parametrize("dep", DEPLOYMENTS, ids=lambda d: d["name"])
def test_deployment_entrypoints_resolve(dep):
    import importlib

    module, func = dep["entrypoint"].split(":")
    flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), func)
    assert flow.name == "customize"
    assert "config" in flow.parameters.properties
