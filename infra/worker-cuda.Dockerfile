# The GPU worker image (react-worker:cuda): what infra/worker.Dockerfile installs (the lock, by the same
# `bootstrap.py setup`) plus GPU FAISS and kubectl. Used by the GPU work pools (infra/work-pools/*.json) and by
# the multi-node training job (training.distributed.launcher: kubernetes).
#
#   docker build --platform linux/amd64 -f infra/worker-cuda.Dockerfile -t react-worker:cuda .
#
# No CUDA base image is needed: the lock's torch is a CUDA build that brings its CUDA libraries as wheels
# (nvidia-*), and faiss-gpu-cu12 brings its own; the host needs only the NVIDIA driver and container toolkit
# (Docker: `--gpus` / device requests; Kubernetes: the NVIDIA device plugin). NVIDIA_* below tell the toolkit
# what to mount.
FROM python:3.11.7-slim-bookworm
ARG KUBECTL_VERSION=v1.31.4
# faiss-gpu-cu12 1.13+ needs numpy 2, which autofaiss (numpy<2) excludes: 1.12.0 is the newest that fits the lock.
ARG FAISS_GPU=faiss-gpu-cu12==1.12.0
# git: the deployments' pull step clones the deployed commit (prefect.yaml, git_clone); curl: kubectl
RUN apt-get update && apt-get install -y --no-install-recommends git curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# kubectl: the train stage applies the multi-node Indexed Job from inside the flow run's pod
# (checked against the release's published checksum, as the Kubernetes install guide does)
RUN cd /usr/local/bin && base="https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/linux/amd64" \
    && curl -fsSLO "$base/kubectl" && curl -fsSLO "$base/kubectl.sha256" \
    && echo "$(cat kubectl.sha256)  kubectl" | sha256sum --check && rm kubectl.sha256 && chmod +x kubectl
WORKDIR /opt/react
COPY bootstrap.py pyproject.toml constraints.txt requirements.lock.txt README.md ./
COPY react_core ./react_core
COPY react_cli ./react_cli
COPY tasks ./tasks
COPY flows ./flows
COPY deployments ./deployments
COPY prefect.yaml ./
RUN python bootstrap.py setup \
    && .venv/bin/python -m pip uninstall -y faiss-cpu \
    && .venv/bin/python -m pip install --no-cache-dir "${FAISS_GPU}" \
    && rm -rf /root/.cache/pip
ENV PATH=/opt/react/.venv/bin:$PATH NO_ALBUMENTATIONS_UPDATE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
