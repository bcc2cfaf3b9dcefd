"""The GPU work pools: their base job templates are the Prefect workers' own defaults plus GPUs, shared memory
and the CUDA image; the deployments on them ask for what their run config trains on."""

import importlib.util
import json
import re
from pathlib import Path

import docker.types
import pytest
import yaml
from packaging.requirements import Requirement
from prefect.server.schemas.actions import validate_base_job_template
from prefect.utilities.schema_tools import validate
from prefect.utilities.templating import apply_values
from prefect_docker.worker import DockerWorkerJobConfiguration
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

from react_core.config import KubernetesLaunchConfig
from react_core.overrides import apply_overrides

REPO = Path(__file__).resolve().parents[2]
PREFECT = yaml.safe_load((REPO / "prefect.yaml").read_text())
POOL_FILES = {"react-gpu-docker": "docker-gpu.json", "react-gpu-kubernetes": "kubernetes-gpu.json"}
CONFIGS = {"docker-gpu.json": DockerWorkerJobConfiguration, "kubernetes-gpu.json": KubernetesWorkerJobConfiguration}
GPU_DEPLOYMENTS = [d for d in PREFECT["deployments"] if d["work_pool"]["name"] in POOL_FILES]


def _generator():
    spec = importlib.util.spec_from_file_location("work_pools", REPO / "infra" / "work_pools.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _template(file: str) -> dict:
    return json.loads((REPO / "infra" / "work-pools" / file).read_text())


def _rendered(file: str, job_variables: dict):
    """The worker's job configuration for these job variables, as the worker builds it (defaults, then the
    deployment's values, applied to the template; block references aside, which these templates have none of)."""
    template = _template(file)
    values = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    values.update(job_variables)
    return CONFIGS[file](**apply_values(template["job_configuration"], values))


@pytest.mark.parametrize("file", list(CONFIGS))
def test_committed_templates_are_what_the_generator_makes(file):
    assert (REPO / "infra" / "work-pools" / file).read_text() == _generator().render(file), (
        f"infra/work-pools/{file} is stale: run `python infra/work_pools.py`"
    )


@pytest.mark.parametrize("file", list(CONFIGS))
def test_templates_pass_the_servers_rules_and_keep_every_field_of_the_workers_default(file):
    template = _template(file)
    validate_base_job_template(template)  # what the server checks when the pool is created
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    validate(defaults, template["variables"], raise_on_error=True)
    worker = CONFIGS[file]
    assert set(template["job_configuration"]) == set(worker.model_fields), "a field of the worker is not templated"
    assert template["variables"]["properties"]["image"]["default"] == KubernetesLaunchConfig().image


def test_docker_pool_gives_gpus_and_shared_memory():
    cfg = _rendered("docker-gpu.json", {"gpu_count": 2, "shm_size": "32g"})
    kwargs = cfg.container_create_kwargs
    assert kwargs["device_requests"] == [{"driver": "nvidia", "count": 2, "capabilities": [["gpu"]]}]
    assert kwargs["shm_size"] == "32g" and cfg.image == "react-worker:cuda"
    assert cfg.env["PREFECT_LOGGING_EXTRA_LOGGERS"] == "react_core"
    # docker-py turns them into the container's host config (what `containers.create` sends to the daemon)
    host = docker.types.HostConfig(
        version="1.44", device_requests=kwargs["device_requests"], shm_size=kwargs["shm_size"]
    )
    assert host["DeviceRequests"] == [{"Driver": "nvidia", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]],
                                       "Options": {}}]  # fmt: skip
    assert host["ShmSize"] == 32 * 1024**3
    assert "container_create_kwargs" not in _template("docker-gpu.json")["variables"]["properties"]


def test_kubernetes_pool_gives_gpus_shared_memory_and_gpu_nodes():
    cfg = _rendered("kubernetes-gpu.json", {"gpu_count": 8, "shm_size": "64Gi", "service_account_name": "trainer"})
    pod = cfg.job_manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 8
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["serviceAccountName"] == "trainer" and container["image"] == "react-worker:cuda"


@pytest.mark.parametrize("dep", GPU_DEPLOYMENTS, ids=lambda d: d["name"])
def test_gpu_deployments_ask_for_the_gpus_their_run_trains_on(dep):
    file = POOL_FILES[dep["work_pool"]["name"]]
    template = _template(file)
    job_variables = dep["work_pool"].get("job_variables", {})
    validate(job_variables, template["variables"], raise_on_error=True)  # what the server checks on deploy
    gpus = {**{k: v.get("default") for k, v in template["variables"]["properties"].items()}, **job_variables}[
        "gpu_count"
    ]
    run = apply_overrides(REPO / "deployments" / f"{dep['parameters']['preset']}.yaml", dep["parameters"].get("config"))
    dist = run.training.distributed
    if dist.launcher == "kubernetes":  # training runs in the Indexed Job's pods; the flow's pod applies it
        assert dist.nnodes > 1 and dist.kubernetes.secret, "the training pods need the storage credentials"
        assert job_variables.get("service_account_name"), "applying a Job needs a service account allowed to"
    elif gpus != -1:  # -1: all of the host's GPUs, a number only the host knows
        assert dist.nproc_per_node == gpus, f"{dep['name']}: {gpus} GPUs but {dist.nproc_per_node} processes"


def test_the_cuda_image_installs_the_lock_and_a_faiss_gpu_of_the_gpu_extra():
    dockerfile = (REPO / "infra" / "worker-cuda.Dockerfile").read_text()
    assert "python bootstrap.py setup" in dockerfile
    assert re.search(r"COPY .*requirements\.lock\.txt", dockerfile)
    pin = re.search(r"ARG FAISS_GPU=(\S+)", dockerfile).group(1)
    extra = Requirement(
        re.search(r'^gpu = \["([^"]+)"\]', (REPO / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    )
    pinned = Requirement(pin)
    assert pinned.name == extra.name and extra.specifier.contains(next(iter(pinned.specifier)).version)
    assert "pip uninstall -y faiss-cpu" in dockerfile  # both provide the `faiss` module
    assert "kubectl.sha256" in dockerfile and "sha256sum --check" in dockerfile
    cpu = (REPO / "infra" / "worker.Dockerfile").read_text()
    copies = lambda text: sorted(re.findall(r"^COPY .*$", text, re.MULTILINE))
    assert copies(dockerfile) == copies(cpu), "both images carry the same code"
