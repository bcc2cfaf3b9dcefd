"""training.choose on the tiny mini-web: candidates trained on one retrieval, one picked without a target label,
and registered as an ordinary version."""

import json
import os
from collections import Counter

import pytest

from react_core.data import is_held_out, iter_shard
from react_core.evaluation.choice import read_choice
from react_core.knowledge.download import downloaded_shards
from react_core.plans import customize
from react_core.storage import Storage
from tests.conftest import tiny_config

pytestmark = pytest.mark.integration

CANDIDATES = [
    {"label": "gated", "set": {}},
    {"label": "gated lambda 0.5", "set": {}, "gate_scale": 0.5},
    {"label": "gated lambda 0", "set": {}, "gate_scale": 0.0},
    {"label": "locked-text", "set": {"training.mode": "locked-text", "training.lr": 0.0005}},
]


def test_the_choice_scores_every_candidate_picks_by_the_rule_and_registers_the_pick(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_config(
        tmp_path,
        **{
            "training.holdout": 0.2,
            "training.choose.candidates": CANDIDATES,
            "training.choose.retention_pairs": 200,
        },
    )
    st = Storage(cfg.storage.root)
    out = customize(cfg)

    choice = read_choice(st, out["choose"])
    cands, base = choice["candidates"], choice["base"]
    assert set(cands) == {c["label"] for c in CANDIDATES}
    # (the mini-web's server fails a few downloads on purpose, as the web does)
    assert choice["heldout_pairs"] > 0 and 180 <= choice["retention_pairs"] <= 200
    # the target proxy reads the held-out pairs whose caption found their class (t2t), not the image search's
    held = [json.loads(s["json"]) for u in downloaded_shards(st, out["download"]) for s in iter_shard(st, u)
            if "json" in s and is_held_out(s["__key__"], 0.2)]  # fmt: skip
    modes = Counter(m["mode"] for m in held if m.get("class_id", -1) >= 0)
    assert choice["label_modes"] == ["t2t"] and modes["t2i"] > 0
    assert choice["heldout_pairs"] == modes["t2t"]
    # the lambda settings of one training share its train stage; the other mode has its own
    assert cands["gated"]["train"] == cands["gated lambda 0.5"]["train"] == cands["gated lambda 0"]["train"]
    assert cands["locked-text"]["train"] != cands["gated"]["train"]
    # lambda 0 is the base model exactly, on both proxies
    assert cands["gated lambda 0"]["target"] == pytest.approx(base["target"], abs=1e-6)
    assert cands["gated lambda 0"]["retention"] == pytest.approx(base["retention"], abs=1e-6)
    # the rule: keep 0.9 of the best proxy gain, then the least retention loss
    best = max(c["target_gain"] for c in cands.values())
    eligible = {k: c for k, c in cands.items() if c["target_gain"] >= best - 0.1 * abs(best) - 1e-9}
    assert choice["picked"] in eligible
    assert cands[choice["picked"]]["retention"] == max(c["retention"] for c in eligible.values())
    assert choice["reason"].startswith(choice["picked"] + ": ")

    # The pick is the run's customized model, evaluated and registered at its lambda, with its reasons.
    picked = cands[choice["picked"]]
    assert out["train"] == picked["train"] and out["choice"]["picked"] == choice["picked"]
    reg = out["registered"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    version = client.get_model_version(reg["name"], reg["version"])
    assert version.tags["react.choice.picked"] == choice["picked"]
    assert version.tags["react.choice.reason"] == choice["reason"]
    assert float(version.tags["react.gate_scale"]) == picked["gate_scale"]
    assert version.tags["react.train_stage"] == picked["train"]
    # what the choice read: retrieved and random pairs and the models, never an evaluation set
    inputs = st.stage_manifest(out["choose"])["inputs"]
    assert set(inputs) == {"base", "heldout", "retention", *(f"train {c['label']}" for c in CANDIDATES)}
    assert inputs["heldout"] == out["download"] and inputs["retention"] == out["retention_download"]
    assert st.exists(out["choose"] + "/proxies.png")

    # Where labels exist, every candidate's true changes beside its proxies; lambda 0 changes nothing at all.
    report = st.read_json(out["choice_report"] + "/candidates.json")
    rows = {r["candidate"]: r for r in report["candidates"]}
    assert set(rows) == set(cands) and [r["candidate"] for r in report["candidates"] if r["picked"]] == [
        choice["picked"]
    ]
    assert rows["gated lambda 0"]["target_gain"] == 0 and rows["gated lambda 0"]["generic_change"] == 0
    assert rows[choice["picked"]]["target_gain"] == pytest.approx(out["table"]["miniweb-fine"]["delta"], abs=1e-9)
    assert rows["locked-text"]["proxy_target_gain"] == cands["locked-text"]["target_gain"]
    assert st.exists(out["choice_report"] + "/pareto.png")
    assert (
        "| **" + choice["picked"] + "** (picked) |" in st.read_bytes(out["choice_report"] + "/candidates.md").decode()
    )

    again = customize(cfg)  # a re-run reuses every stage and picks the same
    assert again["choose"] == out["choose"] and again["train"] == out["train"]
    assert again["registered"]["new"] is False


HEADS = [
    {"label": "real-linear", "set": {"training.mode": "real-linear"}},
    {"label": "cache-head", "set": {"training.mode": "cache-head"}},
    {"label": "gated with linear head", "set": {}, "head": "real-linear"},
]


def test_a_head_is_a_candidate_and_its_pick_registers_evaluates_and_serves_with_the_head(tmp_path, monkeypatch):
    """The cheap rivals' heads (on the base model, and on a candidate's own features) as candidates: a pick with a
    head is an ordinary version: its evaluation, its evaluation by registered version and its MLflow model all
    score the target task with the head."""
    import mlflow
    import numpy as np
    import pandas as pd

    from react_core.data.datasets import read_image_bytes
    from react_core.evaluation.suite import open_eval
    from react_core.models import model_file
    from react_core.plans import evaluate

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_config(
        tmp_path,
        **{"training.holdout": 0.2, "training.choose.candidates": HEADS, "training.choose.retention_pairs": 200},
    )
    st = Storage(cfg.storage.root)
    out = customize(cfg)
    choice = read_choice(st, out["choose"])
    cands, base = choice["candidates"], choice["base"]
    # a head on the base model changes one task's classifier, never what the model matches
    for label in ("real-linear", "cache-head"):
        assert cands[label]["retention"] == pytest.approx(base["retention"], abs=1e-9)
        assert cands[label]["checkpoint"] == out["base"] and cands[label]["head"] == cands[label]["train"]
    combined = cands["gated with linear head"]
    assert st.stage_manifest(combined["head"])["inputs"]["checkpoint"] == combined["checkpoint"]
    assert combined["checkpoint"] == model_file(out["train gated with linear head"])
    assert combined["retention"] != pytest.approx(base["retention"], abs=1e-9)  # the gated blocks moved it

    picked = cands[choice["picked"]]
    assert out["choice"]["head"] == picked["head"] and out["train"] == picked["train"]
    report = {r["candidate"]: r for r in st.read_json(out["choice_report"] + "/candidates.json")["candidates"]}
    table = out["table"]["miniweb-fine"]
    assert report[choice["picked"]]["target_gain"] == pytest.approx(table["delta"], abs=1e-9)
    for label in ("real-linear", "cache-head"):  # the base model elsewhere: nothing else moved
        assert report[label]["generic_change"] == 0 and report[label]["other_change"] == 0

    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    version = mlflow.tracking.MlflowClient(tracking).get_model_version(out["registered"]["name"], "1")
    assert version.tags["react.head_stage"] == picked["head"]
    assert version.tags["react.model_file"] == picked["checkpoint"]
    # evaluated by its registered version, as the trigger after registration does: the head scores the target
    again = evaluate(cfg, f"models:/{out['registered']['name']}/1")
    assert again["table"]["miniweb-fine"]["customized"] == pytest.approx(table["customized"], abs=1e-9)

    # the registered MLflow model answers with the head: its accuracy is the evaluation's
    mlflow.set_tracking_uri(tracking)
    served = mlflow.pyfunc.load_model(f"models:/{out['registered']['name']}@candidate")
    evalset = open_eval(st, cfg.evaluation, "miniweb-fine", out["miniweb"], cfg.evaluation.split)
    images = pd.DataFrame({"image": [read_image_bytes(st, u) for u in evalset.images]})
    labels = served.predict(images)["label"].tolist()
    accuracy = float(np.mean([evalset.classnames.index(lab) in t for lab, t in zip(labels, evalset.targets)]))
    assert accuracy == pytest.approx(table["customized"], abs=1e-6)

    # a version whose head was deleted is refused before any stage, naming the file
    from react_core.models import ModelLoadError

    os.remove(picked["head"][len("file://") :] + "/head.pt")
    with pytest.raises(ModelLoadError, match=r"names head that are gone \(.*/head.pt\); fix:"):
        evaluate(cfg, f"models:/{out['registered']['name']}/1")
