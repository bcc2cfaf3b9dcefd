# A worker image: the project and exactly the dependencies of requirements.lock.txt, installed by the same
# `bootstrap.py setup` as CI and a checkout (pip install --require-hashes --no-deps of the lock into
# /opt/react/.venv, then the project). The lock is for CPython 3.11 on Linux x86_64: build for linux/amd64.
# GPU nodes use a CUDA base image and the `gpu` extra.
FROM python:3.11.7-slim-bookworm
# git: the deployments' pull step clones the deployed commit (prefect.yaml, git_clone)
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/react
COPY bootstrap.py pyproject.toml constraints.txt requirements.lock.txt README.md ./
COPY react_core ./react_core
COPY react_cli ./react_cli
COPY tasks ./tasks
COPY flows ./flows
COPY deployments ./deployments
COPY prefect.yaml ./
RUN python bootstrap.py setup && rm -rf /root/.cache/pip
ENV PATH=/opt/react/.venv/bin:$PATH NO_ALBUMENTATIONS_UPDATE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
