"""The tiny customize flow end to end on S3 (moto's server) with the default worker counts, credentials only in the
config, and a known secret that must appear nowhere the run wrote."""

import os
import uuid
from pathlib import Path

import boto3
import pytest

from react_core.storage import Storage, join
from tests.conftest import tiny_config
from tests.integration.test_customize_flow import STAGES
from tests.integration.test_world_flow import _task_states

pytestmark = pytest.mark.integration


def _bucket_objects(endpoint: str, bucket: str, prefix: str) -> dict[str, bytes]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def _files_under(folder: str) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


def test_customize_on_s3_with_default_workers_writes_no_secret(
    prefect_harness, s3_endpoint, tmp_path, capfd, monkeypatch
):
    import prefect.settings
    from mlflow.tracking import MlflowClient

    from flows.customize import customize

    # A numeric secret under s3fs' other spelling (username / password): masked by its name, whatever its type.
    secret = str(uuid.uuid4().int)[:15]
    access_key = f"AKIA{uuid.uuid4().hex[:16].upper()}"
    # The credentials exist only in the config: neither MLflow nor s3fs may find them anywhere else.
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    prefix = f"flow-{uuid.uuid4().hex[:8]}"
    cfg = tiny_config(
        f"s3://react-test/{prefix}",
        **{
            "storage.options": f"{{endpoint_url: {s3_endpoint}, username: {access_key}, password: {secret}}}",
            "training.num_workers": 2,  # the default (the tiny preset says 0); embed and evaluation keep theirs (2)
            "tracking.tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        },
    )
    assert cfg.knowledge_base.num_workers > 0 and cfg.evaluation.num_workers > 0
    out = customize(config=cfg)

    assert set(out["table"]) == {"miniweb-fine", "miniweb-coarse", "miniweb-generic", "miniweb-captions"}
    assert out["train"].startswith(f"s3://react-test/{prefix}/train/")
    states = _task_states(out["flow_run_id"], set(STAGES))
    assert all(states[s] == "Completed" for s in STAGES), states

    # MLflow artifacts went to the same bucket with the same options.
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = client.get_run(out["mlflow_run_id"])
    assert parent.info.artifact_uri.startswith(f"s3://react-test/{prefix}/mlartifacts/")
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    retrieve = next(c for c in children if c.info.run_name == "retrieve")
    st = Storage(cfg.storage.root, cfg.storage.options)
    logged = {u.rsplit("/", 1)[1] for u in st.ls(retrieve.info.artifact_uri)}
    assert {"class_counts.json", "overlap.json", "retrieved_samples.png"} <= logged
    assert st.read_json(join(retrieve.info.artifact_uri, "class_counts.json"))
    assert retrieve.data.params["retrieval.task"] == "miniweb-fine"

    # The secret, nowhere: storage, MLflow's store, Prefect's database and result storage, the console.
    written = {f"s3://react-test/{k}": v for k, v in _bucket_objects(s3_endpoint, "react-test", prefix).items()}
    assert len(written) > 100
    written.update(_files_under(str(tmp_path)))
    db = prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1]
    written.update(_files_under(os.path.dirname(db)))
    written.update(_files_under(prefect.settings.PREFECT_HOME.value()))
    console = capfd.readouterr()
    written["<stdout>"], written["<stderr>"] = console.out.encode(), console.err.encode()
    for needle in (secret, access_key):
        hits = [name for name, data in written.items() if needle.encode() in data]
        assert not hits, f"{needle[:12]}... written to {hits[:5]}"
    assert any(b"**********" in data for name, data in written.items() if name.endswith(".db")), (
        "the config reached a database redacted"
    )
