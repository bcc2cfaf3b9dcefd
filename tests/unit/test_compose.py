"""infra/compose.yaml, checked without Docker: every image pinned, every server healthy before its dependants
start, the buckets made, every variable and volume it references defined, no secret written in it."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "infra" / "compose.yaml"
TEXT = COMPOSE.read_text()
SERVICES = yaml.safe_load(TEXT)["services"]
SERVERS = {"postgres": None, "prefect-server": "4200", "minio": "9000", "mlflow": "5000"}


def test_every_image_is_pinned_or_built_from_the_lock():
    for name, svc in SERVICES.items():
        if "build" in svc:
            assert (REPO / "infra" / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve().is_file(), name
            assert svc["image"] == "react-worker:local", name
            continue
        image = svc["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} floats"
    lock = (REPO / "requirements.lock.txt").read_text()
    prefect = re.search(r"^prefect==([\d.]+)", lock, re.MULTILINE).group(1)
    assert SERVICES["prefect-server"]["image"].startswith(f"prefecthq/prefect:{prefect}-"), "server = the lock's"


def test_servers_have_healthchecks_and_dependants_wait_for_them():
    for name in SERVERS:
        assert SERVICES[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name, svc in SERVICES.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            expected = "service_completed_successfully" if dep == "create-buckets" else (
                "service_healthy" if dep in SERVERS else "service_started")  # fmt: skip
            assert cond["condition"] == expected, (name, dep)
    assert {"prefect-server", "mlflow", "create-buckets"} <= set(SERVICES["worker"]["depends_on"])


def test_buckets_are_made_and_mlflow_writes_artifacts_to_s3():
    mb = " ".join(SERVICES["create-buckets"]["command"])
    buckets = set(re.findall(r"local/([a-z0-9-]+)", mb.split(" mb ", 1)[1]))
    dest = re.search(r"--artifacts-destination s3://([a-z0-9-]+)/", SERVICES["mlflow"]["command"]).group(1)
    assert dest in buckets and "react" in buckets
    env = SERVICES["mlflow"]["environment"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000" and "AWS_SECRET_ACCESS_KEY" in env
    lock = (REPO / "requirements.lock.txt").read_text()
    assert re.search(r"^boto3==", lock, re.MULTILINE), "the worker image (MLflow's too) has boto3 to write to S3"


def test_urls_point_at_services_and_ports_they_publish():
    worker = SERVICES["worker"]["environment"]
    for var in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "FSSPEC_S3_ENDPOINT_URL"):
        host, port = re.match(r"http://([a-z-]+):(\d+)", worker[var]).groups()
        assert host in SERVICES and f"{port}:{port}" in SERVICES[host]["ports"], var


def test_variables_and_volumes_are_defined_and_no_secret_is_written():
    example = (REPO / "infra" / "env.example").read_text()
    for var in set(re.findall(r"\$\{(\w+)", TEXT)):
        assert re.search(rf"^{var}=", example, re.MULTILINE), f"{var} missing from infra/env.example"
    assert not re.search(r"^REACT_\w*(SECRET|PASSWORD)\w*=\S", example, re.MULTILINE), "a secret value in env.example"
    declared = set(yaml.safe_load(TEXT)["volumes"])
    for name, svc in SERVICES.items():
        for v in svc.get("volumes", []):
            assert v.split(":", 1)[0] in declared, f"{name}: volume {v} not declared"
    for name, svc in SERVICES.items():
        env = svc.get("environment") or {}
        for key, value in env.items() if isinstance(env, dict) else []:
            if re.search(r"SECRET|PASSWORD", key):
                assert str(value).startswith("${"), f"{name}.{key} holds a literal secret"
    assert "infra/.env" in (REPO / ".gitignore").read_text()


def test_the_build_context_leaves_out_environments_and_artifacts():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", "react-artifacts*", "mlruns", "infra/.env"} <= set(ignored)
    dockerfile = (REPO / "infra" / "worker.Dockerfile").read_text()
    assert "git" in dockerfile.split("WORKDIR")[0], "the git_clone pull step needs git in the image"


def test_the_server_streams_logs_to_watching_clients():
    env = SERVICES["prefect-server"]["environment"]
    assert (
        env["PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED"] == env["PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED"] == "true"
    )
