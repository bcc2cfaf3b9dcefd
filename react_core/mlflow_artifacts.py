"""Where an MLflow run's artifacts are written, decided per run.

A run whose artifact URI is on an object store (``s3://``, the default under an S3 storage root) is written
through our :class:`~react_core.storage.Storage` with the storage options (endpoint, credentials): MLflow's own
S3 client knows nothing of them (it reads only ``MLFLOW_S3_ENDPOINT_URL`` and the AWS environment) and failed
with ``NoCredentialsError``. Local and proxied (``mlflow-artifacts:``, ``http``) URIs go through MLflow as usual.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any

from react_core.storage import Storage

FSSPEC_ARTIFACT_SCHEMES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"}


class ArtifactRouter:
    """Writes files and bytes into a run's artifacts, by run id (no active run needed)."""

    def __init__(self, client: Any, storage_options: Mapping[str, Any] | None = None) -> None:
        self._client = client
        self._options = dict(storage_options or {})
        self._uris: dict[str, str] = {}

    def artifact_uri(self, run_id: str) -> str:
        if run_id not in self._uris:
            self._uris[run_id] = self._client.get_run(run_id).info.artifact_uri.rstrip("/")
        return self._uris[run_id]

    def object_store(self, run_id: str) -> Storage | None:
        """The run's artifact folder as a Storage when it is on an object store we write ourselves, else None."""
        return self.store_at(self.artifact_uri(run_id))

    def store_at(self, uri: str) -> Storage | None:
        """An artifact location (a run's, a logged model's) as a Storage when it is on an object store, else None."""
        scheme = uri.split("://", 1)[0] if "://" in uri else "file"
        return Storage(uri.rstrip("/"), self._options) if scheme in FSSPEC_ARTIFACT_SCHEMES else None

    def log_file(self, run_id: str, local: str, artifact_path: str | None = None) -> None:
        """``local`` as ``{artifact_path}/{basename(local)}`` of the run."""
        remote = self.object_store(run_id)
        if remote is None:
            self._client.log_artifact(run_id, local, artifact_path)
        else:
            remote.put_file(local, remote.uri(artifact_path or "", os.path.basename(local)))

    def log_bytes(self, run_id: str, data: bytes, name: str) -> None:
        """``data`` as the run's artifact ``name`` (a path inside the run's artifacts, e.g. ``plots/loss.png``)."""
        remote = self.object_store(run_id)
        if remote is not None:
            remote.write_bytes(remote.uri(name), data)
            return
        folder, base = os.path.split(name)
        with tempfile.TemporaryDirectory(prefix="react-artifact-") as tmp:
            path = os.path.join(tmp, base)
            with open(path, "wb") as f:
                f.write(data)
            self._client.log_artifact(run_id, path, folder or None)
