"""Experiment tracking behind a small interface, so the library runs (and is tested) without a server.

``MLflowTracker`` is the real one (a sqlite file under the storage root by default, or any tracking
URI); ``MemoryTracker`` records calls for tests; ``NullTracker`` does nothing. The concerns around a run live
beside it: where its artifacts go (:mod:`react_core.mlflow_artifacts`), the model registry
(:mod:`react_core.model_registry`, a tracker's ``model_registry``), runs a killed process left RUNNING
(:mod:`react_core.abandoned_runs`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from react_core.abandoned_runs import end_abandoned, owner_tags
from react_core.config import TrackingConfig
from react_core.mlflow_artifacts import ArtifactRouter
from react_core.model_registry import MemoryModelRegistry, MLflowModelRegistry, ModelRegistry
from react_core.secrets import mask_urls
from react_core.storage import Storage, file_lock, join, local_path

_logger = logging.getLogger(__name__)
_WARNED_STORES: set[str] = set()

# MLflow's own defaults for a tracking server (7 retries with backoff factor 2, 120 s per request) kept a run
# waiting 8-9 minutes for a server that had gone away before it failed. A run that cannot record should stop
# within a minute and say so (every finished stage is kept, and the next run resumes from them): 3 retries,
# about 4, 8 and 16 s apart, 30 s per request (a killed server: the run stops ~45 s later, two requests each
# giving up). A user's own values in the environment win.
SERVER_REQUEST_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
_UNREACHABLE = (
    "Max retries exceeded",
    "Connection refused",
    "Failed to establish a new connection",
    "Read timed out",
    "RemoteDisconnected",
    "Connection aborted",
)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def metric_key(*parts: str) -> str:
    """An MLflow metric name: the parts joined by '/', each stripped of what MLflow rejects."""
    return "/".join(re.sub(r"[^\w\-. ]", "_", p) for p in parts)


class Tracker:
    """No-op base; subclasses record. ``model_registry`` is the registry of the tracker's store."""

    run_id: str | None = None
    model_registry: ModelRegistry = ModelRegistry()

    @contextlib.contextmanager
    def run(
        self,
        name: str,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        system_metrics: bool = False,
    ) -> Iterator[Tracker]:
        """Open a run; ``parent_run_id`` nests it under a run opened elsewhere (another process); ``system_metrics``:
        CPU, memory, disk, network and (with nvidia-ml-py) GPU use sampled into it while it is open."""
        yield self

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, local: str, artifact_path: str | None = None) -> None: ...

    def log_dict(self, obj: Any, name: str) -> None: ...

    def log_text(self, text: str, name: str) -> None: ...

    def log_figure(self, fig: Any, name: str) -> None: ...

    def log_image(self, image: Any, name: str) -> None: ...

    def mark_abandoned(self) -> list[str]:
        """End as KILLED the runs left RUNNING by processes of this host that are gone; returns their ids
        (:mod:`react_core.abandoned_runs`)."""
        return []

    # A run that outlives a ``with`` block: a flow's parent run, ended with the flow's final state.
    def open_run(
        self, name: str, tags: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None
    ) -> str | None:
        """Start a run and leave it RUNNING; returns its id (None: untracked)."""
        return None

    def end_run(
        self,
        run_id: str,
        status: str = "FINISHED",
        tags: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Tag a run opened by :meth:`open_run`, log its ``metrics`` and end it (``FINISHED``, ``FAILED`` or
        ``KILLED``)."""

    def log_datasets(self, run_id: str, datasets: list[dict[str, str]]) -> None:
        """Record ``datasets`` (``name``, ``uri``, ``digest``, ``context``) as the run's inputs, by reference."""

    def link_model(self, run_id: str, model_id: str) -> None:
        """Show the logged model ``model_id`` as an output of the run."""

    def stage_producer(self, stage_uri: str) -> str | None:
        """The id of the first run that logged the stage at ``stage_uri`` (None if none did)."""
        return None

    def run_url(self, run_id: str) -> str | None:
        """Where a person opens the run (an MLflow server's page), or None when it has no web page."""
        return None


NullTracker = Tracker


class MemoryTracker(Tracker):
    """Keeps everything in lists (tests, dry runs)."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[str, float, int | None]] = []
        self.artifacts: list[str] = []
        self.model_registry = MemoryModelRegistry()

    @contextlib.contextmanager
    def run(
        self,
        name: str,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        system_metrics: bool = False,
    ) -> Iterator[Tracker]:
        self.runs.append(
            {"name": name, "tags": dict(tags or {}), "parent_run_id": parent_run_id, "system_metrics": system_metrics}
        )
        prev, self.run_id = self.run_id, f"run-{len(self.runs)}"
        try:
            yield self
        finally:
            self.run_id = prev

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(_flatten(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.metrics.extend((k, float(v), step) for k, v in metrics.items())

    def log_artifact(self, local: str, artifact_path: str | None = None) -> None:
        self.artifacts.append(local)

    def log_dict(self, obj: Any, name: str) -> None:
        self.artifacts.append(name)

    def log_text(self, text: str, name: str) -> None:
        self.artifacts.append(name)

    def log_figure(self, fig: Any, name: str) -> None:
        self.artifacts.append(name)

    def log_image(self, image: Any, name: str) -> None:
        self.artifacts.append(name)

    def open_run(
        self, name: str, tags: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None
    ) -> str | None:
        self.runs.append({"name": name, "tags": dict(tags or {}), "parent_run_id": None, "status": "RUNNING"})
        self.params.update(_flatten(params or {}))
        return f"run-{len(self.runs)}"

    def end_run(
        self,
        run_id: str,
        status: str = "FINISHED",
        tags: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        run = self.runs[int(run_id.split("-")[1]) - 1]
        run["tags"].update(tags or {})
        run.setdefault("metrics", {}).update(metrics or {})
        run["status"] = status

    def log_datasets(self, run_id: str, datasets: list[dict[str, str]]) -> None:
        self.runs[int(run_id.split("-")[1]) - 1].setdefault("datasets", []).extend(datasets)

    def link_model(self, run_id: str, model_id: str) -> None:
        self.runs[int(run_id.split("-")[1]) - 1]["model_id"] = model_id

    def stage_producer(self, stage_uri: str) -> str | None:
        found = [i for i, r in enumerate(self.runs) if r["tags"].get("react.stage_uri") == stage_uri]
        return f"run-{found[0] + 1}" if found else None


class MLflowTracker(Tracker):
    """MLflow tracking: runs, their params, metrics and artifacts (written by :class:`ArtifactRouter`); the store's
    registry is ``model_registry`` (:class:`MLflowModelRegistry`). ``mlflow`` is imported lazily (slow to
    import)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        artifact_location: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        import mlflow

        self._mlflow = mlflow
        self.tracking_uri = tracking_uri
        user_choice = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(tracking_uri)
        # MLflow also exports the URI as MLFLOW_TRACKING_URI, which make_tracker reads as the user's choice: a
        # second root in this process would then track into the first root's store.
        if user_choice is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = user_choice
        with _sqlite_lock(tracking_uri):  # the first access creates the schema: two processes at once collide
            exp = mlflow.get_experiment_by_name(experiment)
            if exp is None:
                try:
                    exp_id = mlflow.create_experiment(experiment, artifact_location=artifact_location)
                except mlflow.exceptions.MlflowException:  # created meanwhile by a process on another host
                    exp_id = mlflow.get_experiment_by_name(experiment).experiment_id
            else:
                exp_id = exp.experiment_id
        self.experiment_id = exp_id
        self.artifacts = ArtifactRouter(self._client(), storage_options)
        self.model_registry = MLflowModelRegistry(tracking_uri, self.artifacts)

    def _client(self) -> Any:
        return self._mlflow.tracking.MlflowClient(self.tracking_uri)

    @contextlib.contextmanager
    def run(
        self,
        name: str,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        system_metrics: bool = False,
    ) -> Iterator[Tracker]:
        all_tags = {**owner_tags(), **dict(tags or {})}
        if parent_run_id:
            # MLflow's own nesting tag: works across processes, unlike start_run(nested=True).
            all_tags["mlflow.parentRunId"] = parent_run_id
        nested = self._mlflow.active_run() is not None
        # None: MLflow's own switch decides (MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING), for every run a user wants
        sampled = True if system_metrics else None
        with self._mlflow.start_run(
            run_name=name, experiment_id=self.experiment_id, nested=nested, tags=all_tags, log_system_metrics=sampled
        ) as r:
            prev = self.run_id
            self.run_id = r.info.run_id
            try:
                yield self
            finally:
                self.run_id = prev

    def _current(self) -> str:
        return self.run_id or self._mlflow.active_run().info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._mlflow.log_params(_param_strings(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, local: str, artifact_path: str | None = None) -> None:
        self.artifacts.log_file(self._current(), local, artifact_path)

    def log_dict(self, obj: Any, name: str) -> None:
        self.artifacts.log_bytes(self._current(), json.dumps(obj, indent=2, default=str).encode(), name)

    def log_text(self, text: str, name: str) -> None:
        self.artifacts.log_bytes(self._current(), text.encode(), name)

    def log_figure(self, fig: Any, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format=name.rsplit(".", 1)[-1])
        self.artifacts.log_bytes(self._current(), buf.getvalue(), name)

    def log_image(self, image: Any, name: str) -> None:
        from PIL import Image

        buf = io.BytesIO()
        (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, format="PNG")
        self.artifacts.log_bytes(self._current(), buf.getvalue(), name)

    def open_run(
        self, name: str, tags: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None
    ) -> str | None:
        from mlflow.entities import Param

        all_tags = {**owner_tags(), "mlflow.runName": name, **dict(tags or {})}
        client = self._client()
        run = client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        items = [Param(k, v) for k, v in _param_strings(params or {}).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run.info.run_id, params=items[i : i + 100])
        return run.info.run_id

    def end_run(
        self,
        run_id: str,
        status: str = "FINISHED",
        tags: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        from mlflow.entities import Metric

        client = self._client()
        for k, v in (tags or {}).items():
            client.set_tag(run_id, k, v)
        now = int(time.time() * 1000)
        if metrics:
            client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        client.set_terminated(run_id, status=status)

    def stage_producer(self, stage_uri: str) -> str | None:
        found = self._client().search_runs(
            [self.experiment_id],
            f"tags.`react.stage_uri` = '{stage_uri}'",
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        return found[0].info.run_id if found else None

    def run_url(self, run_id: str) -> str | None:
        if not self.tracking_uri.startswith(("http://", "https://")):
            return None  # a local store: `mlflow ui --backend-store-uri {tracking_uri}` serves it
        return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"

    def log_datasets(self, run_id: str, datasets: list[dict[str, str]]) -> None:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for d in datasets:
            try:
                with warnings.catch_warnings():  # a local path matches MLflow's file source twice; it says so each time
                    warnings.simplefilter("ignore", UserWarning)
                    source = resolve_dataset_source(d["uri"])
            except Exception as exc:  # noqa: BLE001 - MLflow knows no source for this scheme: recorded as a tag
                _logger.warning("tracking: dataset %s at %s not recorded as an input (%s)", d["name"], d["uri"], exc)
                continue
            entity = MetaDataset(source, name=d["name"], digest=d["digest"])._to_mlflow_entity()
            inputs.append(DatasetInput(entity, [InputTag("mlflow.data.context", d["context"])]))
        if inputs:
            self._client().log_inputs(run_id, datasets=inputs)

    def link_model(self, run_id: str, model_id: str) -> None:
        from mlflow.entities import LoggedModelOutput

        self._client().log_outputs(run_id, [LoggedModelOutput(model_id, 0)])

    def mark_abandoned(self) -> list[str]:
        return end_abandoned(self._client(), self.experiment_id)


@contextlib.contextmanager
def _sqlite_lock(tracking_uri: str) -> Iterator[None]:
    """An flock beside a sqlite tracking store while it is opened: MLflow creates and migrates the schema on
    first access, and two processes starting on one fresh root raced there (``table ... already exists``)."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    path = tracking_uri[len("sqlite:///") :]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with file_lock(path + ".lock"):
        yield


def unreachable_server(exc: BaseException | None) -> str | None:
    """When ``exc`` (or what caused it) is MLflow failing to reach its tracking server, the tracking URI it
    named (or "the MLflow tracking server"); else None. MLflow raises an ``MlflowException`` whose message holds
    urllib3's, with no cause attached, so the message is what tells."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        name = type(exc).__name__
        if (name == "MlflowException" and "API request to" in text and any(m in text for m in _UNREACHABLE)) or (
            type(exc).__module__.startswith("requests") and name in {"ConnectionError", "ReadTimeout"}
        ):
            found = re.search(r"API request to (https?://[^/\s]+)", text)
            return mask_urls(found.group(1)) if found else "the MLflow tracking server"
        exc = exc.__cause__ or exc.__context__
    return None


def _param_strings(params: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v)[:5000] for k, v in _flatten(params).items()}


def default_tracking_uri(storage: Storage) -> tuple[str, str | None]:
    """(tracking URI, artifact location): sqlite + artifacts under a local root; else ./react-mlflow.db."""
    lp = local_path(storage.root)
    if lp is not None:
        os.makedirs(lp, exist_ok=True)
        return f"sqlite:///{os.path.join(lp, 'mlflow.db')}", join(storage.root, "mlartifacts")
    uri = f"sqlite:///{os.path.abspath('react-mlflow.db')}"
    if uri not in _WARNED_STORES:  # once per process: every stage asks
        _WARNED_STORES.add(uri)
        _logger.warning(
            "tracking: the storage root %s is not a local folder and sqlite cannot live there, so MLflow's store is "
            "%s on this host (artifacts under %s/mlartifacts); for a team, set tracking.tracking_uri to an MLflow "
            "server",
            storage.root,
            uri,
            storage.root,
        )
    return uri, join(storage.root, "mlartifacts")


def make_tracker(cfg: TrackingConfig, storage: Storage) -> Tracker:
    """MLflow at ``tracking.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a sqlite file under the storage root
    (``tracking.enabled: false``: nothing is tracked)."""
    if not cfg.enabled:
        return NullTracker()
    tracking_uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if tracking_uri:
        # A tracking server decides where artifacts go (--default-artifact-root, --serve-artifacts); for a
        # database URI the experiment we create keeps them under the storage root, not in ./mlruns of the cwd.
        server = tracking_uri.split(":", 1)[0] in {"http", "https", "databricks"}
        if server:
            for k, v in SERVER_REQUEST_DEFAULTS.items():
                os.environ.setdefault(k, v)
        artifacts = None if server else join(storage.root, "mlartifacts")
        return MLflowTracker(tracking_uri, cfg.experiment, artifacts, storage_options=storage.options)
    uri, artifacts = default_tracking_uri(storage)
    return MLflowTracker(uri, cfg.experiment, artifacts, storage_options=storage.options)
