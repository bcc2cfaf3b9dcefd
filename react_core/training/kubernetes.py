"""Multi-node training on Kubernetes: an Indexed Job of ``nnodes`` pods, each running ``torchrun``.

The manifest is rendered from ``training.distributed`` and the train stage's ``job.json``, so the two cannot
disagree. Every rendezvous argument reaches ``torchrun`` through the environment (``PET_*``, which torchrun
reads as the defaults of its own flags), and the node rank is the pod's completion index:

- a headless Service named like the Job gives every pod a stable DNS name, ``{job}-{index}.{job}``
  (the pods' ``subdomain``); the rendezvous endpoint is pod 0's name, so pod 0's torchrun hosts the c10d store;
- ``nproc_per_node`` processes per pod, each with one GPU (``resources.limits``), and an in-memory ``/dev/shm``
  for the DataLoader workers (a container's default is 64 MB);
- credentials come from a Secret (``envFrom``), never from the manifest; the public storage options
  (an ``endpoint_url``) are in ``REACT_STORAGE_PUBLIC_OPTIONS``.

The train stage (``training.distributed.launcher: kubernetes``) writes ``kubernetes.yaml`` beside ``job.json``,
applies it when ``kubectl`` is on PATH (a flow run in a pod with a service account allowed to create Jobs and
Services), and waits for rank 0's ``model.json``. A rank that fails writes ``failed/rank-{RANK}.json``
(:mod:`react_core.training.worker`), which fails the stage with its error.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import yaml

from react_core.config import DistributedConfig
from react_core.secrets import public

PUBLIC_OPTIONS_ENV = "REACT_STORAGE_PUBLIC_OPTIONS"  # JSON storage options without credentials
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def job_name(stage_uri: str) -> str:
    """A DNS-1123 label for the train stage: ``react-train-{version}`` (the stage folder's last part)."""
    version = re.sub(r"[^a-z0-9-]", "-", stage_uri.rstrip("/").rsplit("/", 1)[-1].lower()).strip("-")
    digest = hashlib.sha256(stage_uri.rstrip("/").encode()).hexdigest()[:6]
    # Pod hostnames are "{job}-{index}" and must stay within 63 characters.
    return f"react-train-{version[:32]}-{digest}".strip("-")


def rendezvous_port(dcfg: DistributedConfig) -> int:
    return int(dcfg.rdzv_endpoint.rsplit(":", 1)[1]) if ":" in dcfg.rdzv_endpoint else 29500


def training_job(
    dcfg: DistributedConfig, job_uri: str, stage_uri: str, storage_options: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The headless Service and the Indexed Job (as Kubernetes objects) that train ``job_uri`` on
    ``dcfg.nnodes`` nodes of ``dcfg.nproc_per_node`` processes."""
    k = dcfg.kubernetes
    name = job_name(stage_uri)
    port = rendezvous_port(dcfg)
    labels = {"app.kubernetes.io/name": "react-train", "app.kubernetes.io/instance": name}
    env = [
        {"name": "PET_NNODES", "value": str(dcfg.nnodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(dcfg.nproc_per_node)},
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
        {"name": "PET_RDZV_BACKEND", "value": "c10d"},
        {"name": "PET_RDZV_ENDPOINT", "value": f"{name}-0.{name}:{port}"},
        {"name": "PET_RDZV_ID", "value": dcfg.rdzv_id},
        {"name": PUBLIC_OPTIONS_ENV, "value": json.dumps(public(storage_options or {}), sort_keys=True)},
        {"name": "NO_ALBUMENTATIONS_UPDATE", "value": "1"},
    ]
    container: dict[str, Any] = {
        "name": "trainer",
        "image": k.image,
        "imagePullPolicy": k.image_pull_policy,
        "command": ["python", "-m", "torch.distributed.run", "-m", "react_core.training.worker", job_uri],
        "env": env,
        "ports": [{"name": "rendezvous", "containerPort": port}],
        "resources": {"limits": {k.gpu_resource: str(dcfg.nproc_per_node)}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if k.secret:
        container["envFrom"] = [{"secretRef": {"name": k.secret}}]
    pod_spec: dict[str, Any] = {
        "subdomain": name,
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": k.shm_size}}],
    }
    if k.node_selector:
        pod_spec["nodeSelector"] = dict(k.node_selector)
    if k.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in k.tolerations]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": k.namespace, "labels": labels},
        # headless, and resolvable before the pods are ready: the rendezvous happens before readiness
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels,
            "ports": [{"name": "rendezvous", "port": port}],
        },
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": k.namespace, "labels": labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": dcfg.nnodes,
            "parallelism": dcfg.nnodes,
            # one failed pod fails the job: the others would wait at the rendezvous until it times out;
            # a re-run resumes from the newest checkpoint (training.resume)
            "backoffLimit": 0,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
    return [service, job]


def render(objects: list[dict[str, Any]]) -> str:
    """A multi-document YAML for ``kubectl apply -f``."""
    return yaml.safe_dump_all(objects, sort_keys=False)
