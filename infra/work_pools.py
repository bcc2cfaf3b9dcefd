"""The base job templates of the GPU work pools, generated from the Prefect workers' own defaults.

    python infra/work_pools.py            # rewrites infra/work-pools/*.json (tests check they are current)
    prefect work-pool create react-gpu-docker --type docker --base-job-template infra/work-pools/docker-gpu.json
    prefect work-pool create react-gpu-k8s --type kubernetes --base-job-template infra/work-pools/kubernetes-gpu.json

Each template is the worker's default (prefect-docker, prefect-kubernetes: the versions of the lock) with what
a REACT flow run needs on a GPU machine added as variables a deployment can set in `job_variables`:

- the image: `react-worker:cuda` (infra/worker-cuda.Dockerfile: the lock, CUDA torch, faiss-gpu);
- GPUs: Docker device requests (`gpu_count`, -1 for all of the host's GPUs) / the `nvidia.com/gpu` resource
  (`gpu_count` per pod) with a node selector and a toleration for tainted GPU nodes;
- shared memory for DataLoader workers (`shm_size`): a container's /dev/shm is 64 MB by default, and
  DataLoader workers pass batches through it (the error otherwise: "bus error" / "unable to write to file
  </torch_...>");
- react_core's logs routed to the flow run's logs (PREFECT_LOGGING_EXTRA_LOGGERS), as in the process pool.

Why generated rather than written by hand: the workers' defaults change between versions (new fields, other
manifest defaults); deriving from them keeps every field the worker expects, and the test that compares the
committed files with this output says when a lock update changed them.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "work-pools"
IMAGE = "react-worker:cuda"
# react_core's log lines in the run's logs; heartbeats, which infra/automations.yaml watches to retry a run whose
# container or pod died
ENV = {
    "PREFECT_LOGGING_EXTRA_LOGGERS": "react_core",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _set_default(variables: dict[str, Any], name: str, value: Any) -> None:
    variables["properties"][name]["default"] = value


def docker_gpu() -> dict[str, Any]:
    from prefect_docker.worker import DockerWorker

    template = copy.deepcopy(DockerWorker.get_default_base_job_template())
    variables = template["variables"]
    _set_default(variables, "image", IMAGE)
    _set_default(variables, "env", dict(ENV))
    _set_default(variables, "auto_remove", True)
    variables["properties"]["gpu_count"] = {
        "title": "GPUs",
        "description": "GPUs given to the container (Docker device requests, NVIDIA driver); -1: all of the host's.",
        "type": "integer",
        "minimum": -1,
        "default": -1,
    }
    variables["properties"]["shm_size"] = {
        "title": "Shared memory",
        "description": "Size of /dev/shm: DataLoader workers pass batches through it (Docker's default is 64m).",
        "type": "string",
        "pattern": "^[0-9]+[bkmg]?$",
        "default": "16g",
    }
    # The container's extra arguments are ours (GPU requests and shared memory), so the generic
    # `container_create_kwargs` variable is removed: a value for it would replace these, not add to them.
    del variables["properties"]["container_create_kwargs"]
    template["job_configuration"]["container_create_kwargs"] = {
        "device_requests": [{"driver": "nvidia", "count": "{{ gpu_count }}", "capabilities": [["gpu"]]}],
        "shm_size": "{{ shm_size }}",
    }
    return template


def kubernetes_gpu() -> dict[str, Any]:
    from prefect_kubernetes.worker import KubernetesWorker

    template = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    variables = template["variables"]
    _set_default(variables, "image", IMAGE)
    _set_default(variables, "env", dict(ENV))
    _set_default(variables, "image_pull_policy", "IfNotPresent")
    variables["properties"].update(
        {
            "gpu_count": {
                "title": "GPUs",
                "description": "nvidia.com/gpu given to the flow run's pod (set training.distributed.nproc_per_node "
                "to the same number to train on all of them).",
                "type": "integer",
                "minimum": 0,
                "default": 1,
            },
            "node_selector": {
                "title": "Node selector",
                "description": "Labels of the nodes the pod may run on.",
                "type": "object",
                "additionalProperties": {"type": "string"},
                "default": {"nvidia.com/gpu.present": "true"},
            },
            "tolerations": {
                "title": "Tolerations",
                "description": "Taints the pod tolerates (GPU nodes are usually tainted nvidia.com/gpu).",
                "type": "array",
                "items": {"type": "object"},
                "default": [GPU_TOLERATION],
            },
            "shm_size": {
                "title": "Shared memory",
                "description": "Size of the in-memory /dev/shm of the pod (DataLoader workers pass batches through it).",
                "type": "string",
                "default": "16Gi",
            },
        }
    )
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["resources"]["limits"]["nvidia.com/gpu"] = "{{ gpu_count }}"
    container["resources"]["requests"]["nvidia.com/gpu"] = "{{ gpu_count }}"
    container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    pod["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "{{ shm_size }}"}}]
    pod["nodeSelector"] = "{{ node_selector }}"
    pod["tolerations"] = "{{ tolerations }}"
    return template


TEMPLATES = {"docker-gpu.json": docker_gpu, "kubernetes-gpu.json": kubernetes_gpu}


def render(name: str) -> str:
    return json.dumps(TEMPLATES[name](), indent=2, sort_keys=True) + "\n"


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name in TEMPLATES:
        (OUT / name).write_text(render(name))
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
