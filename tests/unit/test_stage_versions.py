"""Every stage's version on every preset (and the variants that add identity fields) is the one recorded in
``stage_versions.json``: a refactoring that changes a stage's identity by accident would make every user's
finished stages unreachable (recomputed at GPU cost). A deliberate change bumps the stage's schema and
re-records the file with ``python -m tests.unit.test_stage_versions``, naming the stage in the commit."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from react_core import pipeline
from react_core.config_loading import load_config
from react_core.storage import Stage, Storage

RECORD = Path(__file__).with_name("stage_versions.json")
PRESETS = Path(__file__).resolve().parents[2] / "deployments"

# The variants that reach the identity fields a preset leaves unset (each added to a stage after its first version).
VARIANTS: dict[str, list[str]] = {
    "plain": [],
    "forgetting": ["training.replay=0.25", "training.anchor=2", "training.holdout=0.1"],
    "budget": ["training.subset=0.5", "training.steps=100"],
    "real-linear": ["training.mode=real-linear"],
    "real-prompt": ["training.mode=real-prompt"],
    "cache-head": ["training.mode=cache-head"],
    "multi-task": ["retrieval.tasks=[miniweb-fine,miniweb-coarse]", "retrieval.weights=[2,1]"],
    "pair-filters": ["retrieval.min_pair_score=0.3", "retrieval.pair_score_top=0.5", "retrieval.random_control=true"],
    "extra-task": ["miniweb.extra_classes=4"],
    "probe": ["evaluation.linear_probe.enabled=true"],
}


class _Captured(Exception):
    """Raised by the patched Storage.stage: the identity is known, nothing is computed."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage


def _capture(fn: Any, *args: Any, **kwargs: Any) -> Stage:
    try:
        fn(*args, **kwargs)
    except _Captured as c:
        return c.stage
    raise AssertionError(f"{fn.__name__} made no stage")


class _Task:
    def __init__(self, name: str) -> None:
        self.name, self.classnames, self.templates, self.synonyms = name, ["a"], ["{}"], None


@pytest.fixture
def captured() -> Iterator[None]:
    real = Storage.stage

    def stage(self: Storage, *args: Any, **kwargs: Any) -> Stage:
        raise _Captured(real(self, *args, **kwargs))

    with (
        mock.patch.object(Storage, "stage", stage),
        mock.patch.object(pipeline, "knowledge_base_shards", lambda *a: ["file:///kb/shards/00000.tar"]),
        mock.patch.object(Storage, "fingerprint", lambda self, uris: "f" * 16),
        mock.patch.object(Storage, "stage_manifest", lambda self, uri: {"counts": {"pairs": 1000}}),
        mock.patch.object(pipeline, "resolve_task", lambda storage, name, *a, **k: _Task(name)),
    ):
        yield


def versions(preset: Path, overrides: list[str]) -> dict[str, str]:
    """Each stage's version for a preset with ``overrides``, with fixed upstream URIs."""
    cfg = load_config(preset, overrides=overrides)
    st = Storage("/stage-versions")
    up = {k: f"file:///stage-versions/{k}/v" for k in ("miniweb", "embed", "index", "retrieve", "download", "replay")}
    ck = "file:///stage-versions/base/v/model.pt"
    out = {
        "miniweb": _capture(pipeline.run_miniweb, st, miniweb=cfg.miniweb),
        "base": _capture(pipeline.run_pretrain_base, st, model=cfg.model, miniweb_uri=up["miniweb"]),
        "embed": _capture(pipeline.run_embed, st, model=cfg.model, knowledge_base=cfg.knowledge_base, checkpoint=ck,
                          miniweb_uri=up["miniweb"]),
        "index": _capture(pipeline.run_index, st, index=cfg.index, k=cfg.retrieval.k, embed_uri=up["embed"]),
        "retrieve": _capture(pipeline.run_retrieve, st, model=cfg.model, checkpoint=ck, retrieval=cfg.retrieval,
                             embed_uri=up["embed"], index_uri=up["index"], miniweb_uri=up["miniweb"],
                             evaluation=cfg.evaluation),
        "replay": _capture(pipeline.run_replay, st, share=0.25, seed=cfg.training.seed, embed_uri=up["embed"],
                           retrieve_uri=up["retrieve"]),
        "download": _capture(pipeline.run_download, st, download=cfg.download, retrieve_uri=up["retrieve"],
                             miniweb_uri=up["miniweb"]),
        "text-features": _capture(pipeline.run_text_features, st, model=cfg.model, checkpoint=ck,
                                  download_uri=up["download"]),
    }  # fmt: skip
    if cfg.training.mode in ("real-prompt", "real-linear", "cache-head"):
        if len(cfg.retrieval.target_tasks) > 1:  # refused: a head is for one task
            return {name: stage.version for name, stage in out.items()}
        out["head"] = _capture(pipeline.run_head, st, model=cfg.model, checkpoint=ck, training=cfg.training,
                               retrieval=cfg.retrieval, embed_uri=up["embed"], download_uri=up["download"],
                               miniweb_uri=up["miniweb"])  # fmt: skip
    else:
        replay = up["replay"] if cfg.training.replay > 0 else None
        out["train"] = _capture(pipeline.run_train, st, model=cfg.model, checkpoint=ck, training=cfg.training,
                                download_uri=up["download"], replay_uri=replay)  # fmt: skip
    for dataset in cfg.evaluation.tasks:
        for scale in (1.0, 0.5):
            out[f"eval/{dataset}/{scale:g}"] = _capture(
                pipeline.run_evaluate_dataset, st, model=cfg.model, checkpoint=ck, evaluation=cfg.evaluation,
                dataset=dataset, miniweb_uri=up["miniweb"], gate_scale=scale,
            )  # fmt: skip
    out["evaluate"] = _capture(pipeline.run_report, st, results={"base": ["a"], "customized": ["b"]}, checkpoints={})
    return {name: stage.version for name, stage in out.items()}


def all_versions() -> dict[str, dict[str, str]]:
    return {f"{p.stem}/{v}": versions(p, o) for p in sorted(PRESETS.glob("*.yaml")) for v, o in VARIANTS.items()}


def test_every_stage_keeps_its_version(captured: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REACT_STORAGE_ROOT", raising=False)
    recorded = json.loads(RECORD.read_text())
    now = all_versions()
    changed = [
        f"{case} {stage}: {recorded[case].get(stage)} -> {v}"
        for case, stages in now.items()
        for stage, v in stages.items()
        if recorded.get(case, {}).get(stage) != v
    ]
    assert not changed, "stage versions changed (every finished stage of that kind would be recomputed):\n" + "\n".join(
        changed
    )
    assert set(now) == set(recorded)


if __name__ == "__main__":  # re-record (a deliberate identity change: bump the stage's schema first)
    with mock.patch.dict("os.environ", {}, clear=False):
        import os

        os.environ.pop("REACT_STORAGE_ROOT", None)
        fixture = captured.__wrapped__()  # type: ignore[attr-defined]
        next(fixture)
        RECORD.write_text(json.dumps(all_versions(), indent=1, sort_keys=True) + "\n")
        sys.exit(0)
