"""The multi-node Kubernetes job is rendered from training.distributed: what torchrun in each pod parses from its
environment is exactly that config, and the manifest holds together (Service, subdomain, GPUs, no secrets)."""

import os
import re

import pytest
import yaml
from torch.distributed.run import config_from_args, get_args_parser

from react_core.config import DistributedConfig, StorageConfig
from react_core.training.kubernetes import COMPLETION_INDEX, job_name, render, training_job

STAGE = "s3://team-bucket/react/train/3f9c2a1b7e6d5c4b"
JOB_URI = f"{STAGE}/job.json"


def _objects(dcfg: DistributedConfig, options=None):
    return list(yaml.safe_load_all(render(training_job(dcfg, JOB_URI, STAGE, options))))


def _pod_env(container: dict, index: int) -> dict[str, str]:
    """The environment Kubernetes gives the container of pod ``index`` (fieldRefs resolved)."""
    env = {}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == COMPLETION_INDEX
            env[e["name"]] = str(index)
    return env


@pytest.mark.parametrize("nnodes,nproc", [(2, 1), (3, 4), (8, 8)])
def test_torchrun_in_every_pod_parses_training_distributed(nnodes, nproc, monkeypatch):
    dcfg = DistributedConfig(nnodes=nnodes, nproc_per_node=nproc, rdzv_endpoint="10.0.0.5:29400", rdzv_id="exp-7",
                             launcher="kubernetes")  # fmt: skip
    _, job = _objects(dcfg)
    container = job["spec"]["template"]["spec"]["containers"][0]
    cmd = container["command"]
    assert cmd[:3] == ["python", "-m", "torch.distributed.run"]
    name = job["metadata"]["name"]
    for index in range(nnodes):
        for k in [k for k in os.environ if k.startswith("PET_")]:
            monkeypatch.delenv(k)
        for k, v in _pod_env(container, index).items():
            monkeypatch.setenv(k, v)
        args = get_args_parser().parse_args(cmd[3:])
        assert (args.nnodes, args.nproc_per_node, int(args.node_rank)) == (str(nnodes), str(nproc), index)
        assert (args.rdzv_backend, args.rdzv_id) == ("c10d", "exp-7")
        assert args.rdzv_endpoint == f"{name}-0.{name}:29400"  # pod 0 of this job, the port of the config
        assert args.module and args.training_script == "react_core.training.worker"
        assert args.training_script_args == [JOB_URI]
        launch_cfg, _, _ = config_from_args(args)
        assert launch_cfg.min_nodes == launch_cfg.max_nodes == nnodes
        assert launch_cfg.nproc_per_node * launch_cfg.max_nodes == dcfg.world_size
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == nnodes
    assert container["resources"]["limits"] == {"nvidia.com/gpu": str(nproc)}


def test_the_manifest_holds_together():
    dcfg = DistributedConfig(nnodes=2, nproc_per_node=2, launcher="kubernetes",
                             kubernetes={"secret": "react-s3", "node_selector": {"gpu": "h100"}, "namespace": "ml",
                                         "shm_size": "32Gi", "image": "registry.example/react-worker:cuda-1"})  # fmt: skip
    service, job = _objects(dcfg)
    pod = job["spec"]["template"]
    name = job["metadata"]["name"]
    # Pod hostnames are "{job}-{index}"; DNS labels are at most 63 characters.
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(f"{name}-99") <= 63
    assert service["metadata"]["name"] == pod["spec"]["subdomain"] == name
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["metadata"]["namespace"] == job["metadata"]["namespace"] == "ml"
    container = pod["spec"]["containers"][0]
    assert container["image"] == "registry.example/react-worker:cuda-1"
    assert container["envFrom"] == [{"secretRef": {"name": "react-s3"}}]
    assert pod["spec"]["nodeSelector"] == {"gpu": "h100"} and pod["spec"]["restartPolicy"] == "Never"
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    port = int(dcfg.rdzv_endpoint.rsplit(":", 1)[1])
    assert service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"] == port


def test_credentials_stay_out_and_public_options_reach_the_pods():
    options = StorageConfig(root="s3://b", options={"endpoint_url": "http://minio:9000", "secret": "s3cr3t-k8s",
                                                    "key": "AKIA-K8S-TEST"}).options  # fmt: skip
    dcfg = DistributedConfig(nnodes=2, launcher="kubernetes")
    text = render(training_job(dcfg, JOB_URI, STAGE, options))
    assert "s3cr3t-k8s" not in text and "AKIA-K8S-TEST" not in text
    env = _pod_env(list(yaml.safe_load_all(text))[1]["spec"]["template"]["spec"]["containers"][0], 0)
    assert yaml.safe_load(env["REACT_STORAGE_PUBLIC_OPTIONS"]) == {"endpoint_url": "http://minio:9000"}


def test_one_job_name_per_stage():
    assert job_name(STAGE) == job_name(STAGE + "/")
    assert job_name(STAGE) != job_name(STAGE.replace("react", "other"))  # same version, another root
    assert len(job_name("s3://b/train/" + "a" * 200)) <= 60
