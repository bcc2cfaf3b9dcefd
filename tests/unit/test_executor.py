"""The one executor (react_core.executor): lock -> done? -> compute -> _SUCCESS -> record, the same for every stage."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from react_core.executor import execute
from react_core.storage import Storage
from react_core.tracking import MemoryTracker


def _compute_into(stage, calls: Path):
    def compute(run):
        with open(calls, "a") as f:  # one line per computation, whichever process made it
            f.write("x\n")
        stage.storage.write_json(stage.file("report.json"), {"rows": 3})
        run.log_metrics({"loss": 0.5}, step=1)
        return stage.complete(counts={"rows": 3, "name": "not a number"})

    return compute


def test_a_stage_is_computed_once_and_recorded_the_same_way_whether_it_ran_now_or_before(tmp_path):
    st = Storage(str(tmp_path / "root"))
    stage = st.stage("index", {"k": 1})
    calls = tmp_path / "calls"
    tracker = MemoryTracker()
    for _ in range(2):
        uri = execute(stage, _compute_into(stage, calls), tracker=tracker, parent_run_id="parent",
                      params={"index": {"k": 1}}, reports=("report.json",), record=lambda run: run.log_text("t", "x"))  # fmt: skip
    assert uri == stage.uri and stage.done
    assert calls.read_text().count("x") == 1
    assert [r["name"] for r in tracker.runs] == ["index", "index"]
    assert all(r["parent_run_id"] == "parent" and r["tags"]["react.stage_uri"] == uri for r in tracker.runs)
    assert [m for m in tracker.metrics if m[0] == "index/rows"] == [("index/rows", 3.0, None)] * 2
    assert not [m for m in tracker.metrics if m[0] == "index/name"]  # counts that are not numbers are not metrics
    assert tracker.artifacts == ["report.json", "x"] * 2 and tracker.params["index.k"] == 1
    assert tracker.stage_producer(uri) == "run-1"  # a later run that reuses the stage finds the one that made it


def test_a_failed_computation_leaves_no_finished_stage_and_the_next_run_computes_it(tmp_path):
    st = Storage(str(tmp_path))
    stage = st.stage("download", {"a": 1})

    def broken(run):
        st.write_json(stage.file("part.json"), {})
        raise ConnectionError("reset by peer")

    with pytest.raises(ConnectionError):
        execute(stage, broken, tracker=MemoryTracker())
    assert not stage.done
    execute(stage, _compute_into(stage, tmp_path / "calls"))
    assert stage.done and (tmp_path / "calls").read_text() == "x\n"


def test_untracked_stages_read_nothing_back(tmp_path):
    st = Storage(str(tmp_path))
    stage = st.stage("eval", {"a": 1})
    # no report.json is written: a tracked run would fail reading it, an untracked one never looks
    assert execute(stage, lambda run: stage.complete(), reports=("report.json",)) == stage.uri


def _build(root: str, calls: str, start) -> None:
    st = Storage(root)
    stage = st.stage("train", {"lr": 1})
    start.wait()
    execute(stage, _compute_into(stage, Path(calls)))


def test_two_processes_building_one_stage_compute_it_once(tmp_path):
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_build, args=(str(tmp_path / "root"), str(tmp_path / "calls"), start)) for _ in "ab"]
    for p in procs:
        p.start()
    start.set()  # both at once
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (tmp_path / "calls").read_text() == "x\n"
