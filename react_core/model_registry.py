"""The model registry: versions of a named model, their tags and aliases.

:class:`MLflowModelRegistry` is MLflow's; :class:`MemoryModelRegistry` keeps them in a dict (tests, dry runs);
the base class has no registry. A tracker carries the registry of its store as ``tracker.model_registry``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from react_core.mlflow_artifacts import ArtifactRouter
from react_core.storage import Storage, join


def matches(tags: Mapping[str, str], match: Mapping[str, str | None]) -> bool:
    """Whether ``tags`` are as ``match`` says (a None value: the tag is absent)."""
    return all(tags.get(k) == v for k, v in match.items())


class ModelRegistry:
    """No registry: nothing is registered, no alias exists."""

    def log_model(self, storage: Storage, export_uri: str, run_id: str, tags: Mapping[str, str]) -> str | None:
        """The export stage ``export_uri`` as an MLflow model (:mod:`react_core.serving.mlflow_model`) linked to the
        run ``run_id``, logged once per stage (a re-run finds it by its ``react.export_stage`` tag); returns its id
        (None: no registry)."""
        return None

    def register(
        self,
        name: str,
        run_id: str,
        files: Mapping[str, Any],
        tags: Mapping[str, str],
        description: str,
        model_id: str | None = None,
    ) -> str | None:
        """A new version of ``name`` with ``tags`` and ``description``: the logged model ``model_id``, else
        ``files`` (name -> JSON object) logged as the run's ``model/`` artifacts; returns the version (None: no
        registry)."""
        return None

    def alias_tags(self, name: str, alias: str) -> dict[str, str] | None:
        """The tags of the version ``alias`` points at (None: no such alias)."""
        return None

    def version_tags(self, name: str, version: str) -> dict[str, str] | None:
        """The tags of version ``version`` of ``name`` (None: no such version)."""
        return None

    def model_of(self, name: str, version: str) -> str | None:
        """The logged model a version was registered from (None: a version of files, or no registry)."""
        return None

    def set_alias(self, name: str, alias: str, version: str) -> None: ...

    def find_version(self, name: str, match: Mapping[str, str | None]) -> str | None:
        """The first version of ``name`` whose tags are as ``match`` says (a None value: the tag is absent)."""
        return None

    def version_url(self, name: str, version: str) -> str | None:
        """Where a person opens a version, or None when the registry has no web page."""
        return None


class MemoryModelRegistry(ModelRegistry):
    def __init__(self) -> None:
        self.models: dict[str, dict[str, Any]] = {}
        self.logged: list[dict[str, Any]] = []

    def log_model(self, storage: Storage, export_uri: str, run_id: str, tags: Mapping[str, str]) -> str | None:
        found = [i for i, m in enumerate(self.logged) if m["export"] == export_uri]
        if not found:
            self.logged.append({"export": export_uri, "run_id": run_id, "tags": dict(tags)})
        return f"m-{(found[0] if found else len(self.logged) - 1) + 1}"

    def register(
        self,
        name: str,
        run_id: str,
        files: Mapping[str, Any],
        tags: Mapping[str, str],
        description: str,
        model_id: str | None = None,
    ) -> str | None:
        versions = self.models.setdefault(name, {"versions": [], "aliases": {}})["versions"]
        versions.append(
            {
                "run_id": run_id,
                "files": dict(files),
                "tags": dict(tags),
                "description": description,
                "model_id": model_id,
            }
        )
        return str(len(versions))

    def alias_tags(self, name: str, alias: str) -> dict[str, str] | None:
        model = self.models.get(name, {"versions": [], "aliases": {}})
        version = model["aliases"].get(alias)
        return None if version is None else model["versions"][int(version) - 1]["tags"]

    def version_tags(self, name: str, version: str) -> dict[str, str] | None:
        versions = self.models.get(name, {"versions": []})["versions"]
        return versions[int(version) - 1]["tags"] if 0 < int(version) <= len(versions) else None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.models[name]["aliases"][alias] = version

    def model_of(self, name: str, version: str) -> str | None:
        return self.models[name]["versions"][int(version) - 1]["model_id"]

    def find_version(self, name: str, match: Mapping[str, str | None]) -> str | None:
        versions = self.models.get(name, {"versions": []})["versions"]
        return next((str(i + 1) for i, v in enumerate(versions) if matches(v["tags"], match)), None)


class MLflowModelRegistry(ModelRegistry):
    """MLflow's registry at ``tracking_uri``; the files of a version are written with ``artifacts``."""

    def __init__(self, tracking_uri: str, artifacts: ArtifactRouter) -> None:
        import mlflow

        self._mlflow = mlflow
        self.tracking_uri = tracking_uri
        self._artifacts = artifacts

    def _client(self) -> Any:
        return self._mlflow.tracking.MlflowClient(self.tracking_uri)

    def log_model(self, storage: Storage, export_uri: str, run_id: str, tags: Mapping[str, str]) -> str | None:
        from mlflow.entities import LoggedModelStatus

        from react_core.serving import mlflow_model
        from react_core.serving.export import EXPORTED_FILES

        client = self._client()
        experiment_id = client.get_run(run_id).info.experiment_id
        found = client.search_logged_models(
            [experiment_id], filter_string=f"tags.`react.export_stage` = '{export_uri}'", max_results=1
        )
        if found and found[0].status == LoggedModelStatus.READY:
            return found[0].model_id
        # mlflow.pyfunc.log_model writes through MLflow's artifact client, which knows none of the storage options
        # (an S3 endpoint, credentials): the model is saved by MLflow locally, then written as run artifacts are.
        model = client.create_logged_model(
            experiment_id, name="model", source_run_id=run_id, tags={**dict(tags), "react.export_stage": export_uri}
        )
        with tempfile.TemporaryDirectory(prefix="react-mlflow-model-") as tmp:
            exported = os.path.join(tmp, "export")
            os.makedirs(exported)
            for fname in EXPORTED_FILES:
                if storage.exists(join(export_uri, fname)):
                    with open(os.path.join(exported, fname), "wb") as f:
                        f.write(storage.read_bytes(join(export_uri, fname)))
            saved = os.path.join(tmp, "model")
            mlflow_model.save(exported, saved, model_id=model.model_id)
            remote = self._artifacts.store_at(model.artifact_location)
            if remote is None:
                client.log_model_artifacts(model.model_id, saved)
            else:
                for root, _, names in os.walk(saved):
                    for fname in names:
                        rel = os.path.relpath(os.path.join(root, fname), saved)
                        remote.put_file(os.path.join(root, fname), remote.uri(*rel.split(os.sep)))
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return model.model_id

    def register(
        self,
        name: str,
        run_id: str,
        files: Mapping[str, Any],
        tags: Mapping[str, str],
        description: str,
        model_id: str | None = None,
    ) -> str | None:
        client = self._client()
        try:
            client.create_registered_model(name)
        except self._mlflow.exceptions.MlflowException:
            pass  # it exists
        if model_id is None:  # no exported model (tracking without an export stage): the files as the version
            for fname, obj in files.items():
                self._artifacts.log_bytes(run_id, json.dumps(obj, indent=2, default=str).encode(), f"model/{fname}")
            source = f"{self._artifacts.artifact_uri(run_id)}/model"
        else:
            source = f"models:/{model_id}"
        version = client.create_model_version(
            name, source, run_id=run_id, tags=dict(tags), description=description, model_id=model_id
        )
        if model_id is not None:  # the logged model's page lists its versions (as mlflow.register_model records)
            model = client.get_logged_model(model_id)
            listed = json.loads(model.tags.get("mlflow.modelVersions", "[]"))
            listed.append({"name": name, "version": str(version.version)})
            client.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps(listed)})
        return str(version.version)

    def alias_tags(self, name: str, alias: str) -> dict[str, str] | None:
        try:
            return dict(self._client().get_model_version_by_alias(name, alias).tags)
        except self._mlflow.exceptions.MlflowException:
            return None

    def version_tags(self, name: str, version: str) -> dict[str, str] | None:
        try:
            return dict(self._client().get_model_version(name, version).tags)
        except self._mlflow.exceptions.MlflowException:
            return None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._client().set_registered_model_alias(name, alias, version)

    def model_of(self, name: str, version: str) -> str | None:
        source = self._client().get_model_version(name, version).source
        return source[len("models:/") :] if source.startswith("models:/m-") else None

    def find_version(self, name: str, match: Mapping[str, str | None]) -> str | None:
        try:
            versions = self._client().search_model_versions(f"name = '{name}'")
        except self._mlflow.exceptions.MlflowException:
            return None
        return next(
            (str(v.version) for v in sorted(versions, key=lambda v: int(v.version)) if matches(v.tags, match)), None
        )

    def version_url(self, name: str, version: str) -> str | None:
        if not self.tracking_uri.startswith(("http://", "https://")):
            return None
        return f"{self.tracking_uri.rstrip('/')}/#/models/{name}/versions/{version}"
