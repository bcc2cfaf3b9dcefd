# A worker image: the project and its dependencies; GPU nodes use a CUDA base image and the `gpu` extra.
FROM python:3.11-slim
WORKDIR /opt/react
COPY pyproject.toml constraints.txt README.md ./
COPY react_core ./react_core
COPY react_cli ./react_cli
COPY tasks ./tasks
COPY flows ./flows
COPY deployments ./deployments
COPY prefect.yaml ./
RUN pip install --no-cache-dir -c constraints.txt ".[dask]" && pip uninstall -y dataclasses
ENV NO_ALBUMENTATIONS_UPDATE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
