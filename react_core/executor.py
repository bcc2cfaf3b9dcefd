"""The one way a stage runs: identity -> lock -> done? -> compute -> ``_SUCCESS`` -> record.

Every ``react_core.pipeline.run_*`` builds its stage from its declaration (:mod:`react_core.stages`: the identity)
and hands it to :func:`execute` with what computes it; so a stage run from a flow, the CLI or a notebook is
locked, skipped when finished and recorded the same way, whichever stage it is.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from react_core.storage import Stage, join
from react_core.tracking import NullTracker, Tracker

_IDENTITY_ONLY = contextvars.ContextVar("react_identity_only", default=False)


class _Found(Exception):
    def __init__(self, stage: Stage) -> None:
        super().__init__(stage.uri)
        self.stage = stage


def identity(entry: Callable[..., Any], *args: Any, **kwargs: Any) -> Stage:
    """The stage ``entry`` (a ``react_core.pipeline.run_*``) builds for these arguments, found without computing,
    locking or recording anything: what an orchestrator's cache keys on, so that its cache and the stages' markers
    are one source of truth. ``entry`` runs only up to :func:`execute` (deriving the identity: a listing, a small
    read)."""
    token = _IDENTITY_ONLY.set(True)
    try:
        entry(*args, **kwargs)
    except _Found as found:
        return found.stage
    finally:
        _IDENTITY_ONLY.reset(token)
    raise TypeError(f"{getattr(entry, '__name__', entry)} reached no stage")


def execute(
    stage: Stage,
    compute: Callable[[Tracker], object],
    *,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    reports: Sequence[str] = (),
    record: Callable[[Tracker], None] | None = None,
    system_metrics: bool = False,
) -> str:
    """Build ``stage`` unless it is finished, record it, return its URI.

    - lock: :meth:`Stage.lock` (a second process building the same stage on the same root waits, then adopts it);
    - done?: the ``_SUCCESS`` check (marker there, every file at its size);
    - compute: ``compute(run)`` writes the stage's files and then its marker (:meth:`Stage.complete`), logging its
      progress (steps, losses) into ``run``; a stage interrupted part-way resumes from what it left, as the
      computing module decides (shards, checkpoints);
    - record: a tracking run ``run_name`` (default: the stage's name) nested under ``parent_run_id``, tagged with
      the stage, with ``params``, the marker's numeric counts as ``{stage}/{count}`` metrics, the ``reports`` (JSON
      files of the stage) as artifacts and ``record(run)`` for anything more (figures), whether the stage ran now
      or had finished before. ``tracker`` None: nothing is recorded. ``system_metrics``: the machine's use (CPU,
      memory, GPU) sampled into the run while it is open (the stages that hold a GPU: embed, train).
    """
    if _IDENTITY_ONLY.get():
        raise _Found(stage)
    t = tracker or NullTracker()
    tags = {"react.stage": stage.name, "react.stage_uri": stage.uri}
    with t.run(run_name or stage.name, tags, parent_run_id, system_metrics=system_metrics) as run:
        run.log_params(params or {})
        with stage.lock():
            if not stage.done:
                compute(run)
        if tracker is None:
            return stage.uri
        counts = stage.manifest()["counts"]
        run.log_metrics({f"{stage.name}/{k}": v for k, v in counts.items() if isinstance(v, int | float)})
        for name in reports:
            run.log_dict(stage.storage.read_json(join(stage.uri, name)), name)
        if record is not None:
            record(run)
    return stage.uri
