"""The model registry: versions of a named model, their tags and aliases.

:class:`MLflowModelRegistry` is MLflow's; :class:`MemoryModelRegistry` keeps them in a dict (tests, dry runs);
the base class has no registry. A tracker carries the registry of its store as ``tracker.model_registry``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from react_core.mlflow_artifacts import ArtifactRouter


def matches(tags: Mapping[str, str], match: Mapping[str, str | None]) -> bool:
    """Whether ``tags`` are as ``match`` says (a None value: the tag is absent)."""
    return all(tags.get(k) == v for k, v in match.items())


class ModelRegistry:
    """No registry: nothing is registered, no alias exists."""

    def register(
        self, name: str, run_id: str, files: Mapping[str, Any], tags: Mapping[str, str], description: str
    ) -> str | None:
        """Log ``files`` (name -> JSON object) as the run's ``model/`` artifacts and register them as a new version
        of ``name`` with ``tags`` and ``description``; returns the version (None: no registry)."""
        return None

    def alias_tags(self, name: str, alias: str) -> dict[str, str] | None:
        """The tags of the version ``alias`` points at (None: no such alias)."""
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

    def register(
        self, name: str, run_id: str, files: Mapping[str, Any], tags: Mapping[str, str], description: str
    ) -> str | None:
        versions = self.models.setdefault(name, {"versions": [], "aliases": {}})["versions"]
        versions.append({"run_id": run_id, "files": dict(files), "tags": dict(tags), "description": description})
        return str(len(versions))

    def alias_tags(self, name: str, alias: str) -> dict[str, str] | None:
        model = self.models.get(name, {"versions": [], "aliases": {}})
        version = model["aliases"].get(alias)
        return None if version is None else model["versions"][int(version) - 1]["tags"]

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.models[name]["aliases"][alias] = version

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

    def register(
        self, name: str, run_id: str, files: Mapping[str, Any], tags: Mapping[str, str], description: str
    ) -> str | None:
        client = self._client()
        for fname, obj in files.items():
            self._artifacts.log_bytes(run_id, json.dumps(obj, indent=2, default=str).encode(), f"model/{fname}")
        try:
            client.create_registered_model(name)
        except self._mlflow.exceptions.MlflowException:
            pass  # it exists
        source = f"{self._artifacts.artifact_uri(run_id)}/model"
        version = client.create_model_version(name, source, run_id=run_id, tags=dict(tags), description=description)
        return str(version.version)

    def alias_tags(self, name: str, alias: str) -> dict[str, str] | None:
        try:
            return dict(self._client().get_model_version_by_alias(name, alias).tags)
        except self._mlflow.exceptions.MlflowException:
            return None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._client().set_registered_model_alias(name, alias, version)

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
