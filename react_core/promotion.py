"""A customized model into the registry: a version of the run's registered model, aliases moved by the promotion
rule (``tracking.promote``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from react_core.config import ReactConfig
from react_core.models import model_file
from react_core.registry import check_comparable, registered_name
from react_core.storage import Storage, join
from react_core.summary import dataset_roles
from react_core.tracking import Tracker

_logger = logging.getLogger(__name__)


def register(
    storage: Storage, config: ReactConfig, result: Mapping[str, Any], tracker: Tracker | None
) -> dict[str, Any] | None:
    """Register the customized model as a version of ``tracking.registered_model`` (``react-{task}``): the train
    run's MLflow model when the run exported one (``export``: :mod:`react_core.serving`, the towers inside the
    model, loadable and servable by MLflow alone), else its ``model/`` artifacts (the checkpoint's URI); the
    evaluation as tags (``{dataset}/{metric}/{base,customized,delta}``) and as the description.
    The version gets alias ``candidate``, and ``champion`` per ``tracking.promote`` (:func:`decide`: the
    thresholds and the champion's score), the decision and its numbers as ``react.promotion.*`` tags. A version of
    another architecture than the champion's is refused (:func:`check_comparable`). A model already registered (a
    cached re-run) is not registered twice. Returns ``{name, version, champion, new, decision, model_id}`` (None when nothing
    is registered)."""
    template, train = config.tracking.registered_model, result.get("train")
    if tracker is None or not template or not train:
        return None
    task, name = registered_name(config, storage)
    registry = tracker.model_registry
    # A version is a trained model at one lambda (evaluation.gate_scale): the same train stage at another lambda
    # is another version. Versions registered before lambda existed have no react.gate_scale tag: lambda 1.
    lam = config.evaluation.customized_scale((result.get("choice") or {}).get("gate_scale"))
    existing = registry.find_version(name, {"react.train_stage": train, "react.gate_scale": f"{lam:g}"})
    if existing is None and lam == 1.0:
        existing = registry.find_version(name, {"react.train_stage": train, "react.gate_scale": None})
    if existing is not None:  # a cached re-run: the version's own logged model (the parent run shows it)
        model_id = registry.model_of(name, existing)
        return {"name": name, "version": existing, "champion": None, "new": False, "model_id": model_id}
    producer = tracker.stage_producer(train)
    export = result.get("export")
    if producer is None:
        _logger.warning("not registering %s: no tracking run recorded its train stage %s", name, train)
        return None
    table = result.get("table") or {}
    choice = result.get("choice") or {}
    # training.choose's pick: its own checkpoint (a rival's head: the base's) and head; else the train stage's model
    checkpoint, head = choice.get("checkpoint") or model_file(train), choice.get("head")
    tags = {
        "react.train_stage": train,
        "react.model_file": checkpoint,
        "react.model": config.model.name,
        "react.task": task,
        "react.evaluate_stage": str(result.get("evaluate") or ""),
        "react.gate_scale": f"{lam:g}",
    }
    if choice:  # training.choose: which candidate, and why (no target label read)
        tags.update({"react.choice.picked": choice["picked"], "react.choice.reason": choice["reason"]})
        tags["react.choose_stage"] = str(result.get("choose") or "")
    if head:  # the classes are the head's: an evaluation of this version must score with it (resolve_registered)
        tags["react.head_stage"] = head
    for dataset, row in table.items():
        for col in ("base", "customized", "delta"):
            tags[f"{dataset}/{row['metric']}/{col}"] = f"{row[col]:.4f}"
    scores = [table[t]["customized"] for t in config.retrieval.target_tasks if t in table]
    score = sum(scores) / len(scores) if scores else None  # several tasks: their mean
    if score is not None:
        tags["react.target_score"] = f"{score:.6f}"
    lines = ["| dataset | metric | base | customized | delta |", "|---|---|---|---|---|"]
    lines += [
        f"| {d} | {r['metric']} | {r['base']:.4f} | {r['customized']:.4f} | {r['delta']:+.4f} |"
        for d, r in sorted(table.items())
    ]
    files = {
        "model.json": {
            **(storage.read_json(join(train, "model.json")) if head is None else {"head": head}),
            "checkpoint": checkpoint,
            "architecture": config.model.name,
            "gate_scale": lam,
        },
        "evaluation.json": table,
    }
    champion = registry.alias_tags(name, "champion")
    check_comparable(champion, name, config.model.name)  # checked at preflight too; a run started meanwhile
    decision = decide(config, table, champion)
    tags.update({f"react.promotion.{k}": str(v) for k, v in decision.items()})
    model_id = None
    if export:  # the servable model: logged once, linked to the train stage's run
        model_id = registry.log_model(storage, export, producer, {"react.train_stage": train, "react.task": task})
        tags["react.export_stage"] = export
    version = registry.register(name, producer, files, tags, "\n".join(lines), model_id=model_id)
    if version is None:
        return None
    registry.set_alias(name, "candidate", version)
    if decision["champion"]:
        registry.set_alias(name, "champion", version)
    _logger.info("registered %s version %s: %s", name, version, decision["reason"])
    out = {"name": name, "version": version, "champion": decision["champion"], "new": True, "decision": decision}
    return {**out, "model_id": model_id}


def decide(
    config: ReactConfig, table: Mapping[str, Mapping[str, Any]], champion: Mapping[str, str] | None
) -> dict[str, Any]:
    """Whether a new version becomes ``champion`` (``tracking.promote``; ``if-better``: it passes
    ``tracking.thresholds`` and its target score beats the champion's, or there is none), with the numbers and the
    reason in one line: ``{champion, reason, gain, generic_change, other_change}``; a change is the worst of its
    datasets (None: none evaluated)."""
    roles = dataset_roles(config)
    th = config.tracking.thresholds

    def worst(role: str) -> float | None:
        deltas = [r["delta"] for d, r in table.items() if roles.get(d) == role and r.get("delta") is not None]
        return min(deltas) if deltas else None

    gains = [table[t]["delta"] for t in config.retrieval.target_tasks if t in table]
    gain = sum(gains) / len(gains) if gains else None
    generic, other = worst("generic"), worst("other")
    failed = []
    if gain is None or gain <= th.min_gain:
        failed.append(f"target gain {_signed(gain)} is not above {th.min_gain:+.3f}")
    if generic is not None and generic < -th.max_generic_loss:
        failed.append(f"generic change {generic:+.3f} loses more than {th.max_generic_loss:.3f}")
    if other is not None and other < -th.max_other_loss:
        failed.append(f"other-task change {other:+.3f} loses more than {th.max_other_loss:.3f}")
    scores = [table[t]["customized"] for t in config.retrieval.target_tasks if t in table]
    score = sum(scores) / len(scores) if scores else None
    held = float(champion.get("react.target_score", "-inf")) if champion else None
    if champion is not None and (score is None or score <= held):
        failed.append(f"target score {_signed(score, '')} does not beat the champion's {held:.3f}")
    rule = config.tracking.promote
    if rule == "always":
        promoted, reason = True, "champion (tracking.promote: always)"
    elif rule == "never":
        promoted, reason = False, "candidate (tracking.promote: never)"
    else:
        promoted = not failed
        reason = (
            f"champion: target gain {_signed(gain)} > {th.min_gain:+.3f}, generic {_signed(generic)}, other "
            f"{_signed(other)} within the allowed loss" + ("" if champion is None else f", beats {held:.3f}")
            if promoted
            else "candidate, not champion: " + "; ".join(failed)
        )
    return {"champion": promoted, "reason": reason, "gain": gain, "generic_change": generic, "other_change": other}


def _signed(value: float | None, sign: str = "+") -> str:
    return "n/a" if value is None else f"{value:{sign}.3f}"
