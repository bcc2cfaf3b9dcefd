"""The choose stage: several candidate models trained on one retrieval, one picked without a target label
(``training.choose``; the rule and its proxies: :mod:`react_core.evaluation.selection`).

Each candidate (and the base model) is scored on two proxies: zero-shot accuracy on the *held-out retrieved
pairs* (``training.holdout``; each pair labelled with the class it was retrieved for, and only those whose class a
search of ``training.choose.label_modes`` gave: by default their caption's, t2t) and image-text recall on
*retention pairs* (knowledge-base pairs drawn at random, none retrieved). :func:`selection.choose` keeps the
candidates with at least ``keep`` of the best proxy target gain and picks the one losing the least retention.
The stage writes ``choice.json`` (every candidate's proxies, the pick and its reason in one line) and
``proxies.png`` (target-proxy gain against retention change, the pick marked), and reads no target label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from react_core.config import ModelConfig
from react_core.data import DatasetError, is_held_out, load_labelled_pairs
from react_core.evaluation.heads import HEAD_FILE, load_head
from react_core.evaluation.report import figure_png, headline
from react_core.evaluation.selection import Proxies, choose, generic_pairs_set, heldout_set, proxies
from react_core.models.cache import inference_model
from react_core.models.encode import model_image_size
from react_core.models.gated import set_gate_scale
from react_core.storage import Stage, Storage, join
from react_core.tracking import Tracker

CHOICE_FILE = "choice.json"


def choose_model(
    storage: Storage,
    stage: Stage,
    *,
    model: ModelConfig,
    base_checkpoint: str | None,
    candidates: Mapping[str, Mapping[str, Any]],  # label -> its stage, checkpoint, gate_scale, head
    heldout_shards: Sequence[str],
    holdout: float,
    label_modes: Sequence[str],
    retention_shards: Sequence[str],
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int,
    keep: float,
    tracker: Tracker | None = None,
) -> str:
    """Score the base model and every candidate on the proxies, pick one (:func:`selection.choose`), write
    ``choice.json`` and ``proxies.png`` into ``stage`` (and into ``tracker``'s run); returns its URI. A candidate
    (:func:`selection.candidate`): the stage that made it, its backbone's checkpoint (None: the base's pretrained weights), its
    lambda and its head stage (a cheap rival's head on its features; None: the zero-shot classifier)."""
    base_net, tokenizer = inference_model(model, base_checkpoint, storage)
    image_size = model_image_size(base_net)
    images, _, _, labels = load_labelled_pairs(
        storage, heldout_shards, image_size, keep=lambda key: is_held_out(key, holdout), label_modes=label_modes
    )
    heldout = heldout_set(images, labels, classnames, templates)
    if len(heldout) == 0:
        raise DatasetError(
            f"none of the retrieved pairs is held out at training.holdout={holdout:g} with a class from a "
            f"{'/'.join(label_modes)} search; fix: a larger training.holdout (e.g. 0.1), or "
            "training.choose.label_modes=[t2t, t2i]"
        )
    g_images, g_captions, _, _ = load_labelled_pairs(storage, retention_shards, image_size)
    retention = generic_pairs_set(g_images, g_captions)

    def score(c: Mapping[str, Any]) -> Proxies:
        net, tok = inference_model(model, c["checkpoint"], storage)
        set_gate_scale(net, c["gate_scale"])
        head = load_head(storage, join(c["head"], HEAD_FILE)) if c["head"] else None
        return proxies(net, tok, heldout, retention, batch_size, head)

    base = proxies(base_net, tokenizer, heldout, retention, batch_size)
    del base_net
    scored = {label: score(c) for label, c in candidates.items()}
    picked = choose(scored, base, keep)
    summary = {
        "picked": picked,
        "reason": reason(scored, base, picked, keep),
        "rule": f"keep >= {keep:g} of the best proxy target gain, then the least retention loss",
        "heldout_pairs": len(heldout),
        "label_modes": list(label_modes),
        "retention_pairs": len(retention),
        "base": vars(base),
        "candidates": {
            label: {
                "train": c["stage"],
                "checkpoint": c["checkpoint"],
                "gate_scale": c["gate_scale"],
                "head": c["head"],
                **vars(scored[label]),
                "target_gain": scored[label].target - base.target,
                "retention_change": scored[label].retention - base.retention,
            }
            for label, c in candidates.items()
        },
    }
    storage.write_json(stage.file(CHOICE_FILE), summary)
    fig = proxies_figure(scored, base, picked)
    if tracker is not None:  # the stage's tracking run shows the plot (and choice.json: run_choose's reports)
        tracker.log_figure(fig, "proxies.png")
    storage.write_bytes(stage.file("proxies.png"), figure_png(fig))
    p = scored[picked]
    return stage.complete(
        counts={"candidates": len(scored), "heldout_pairs": len(heldout), "retention_pairs": len(retention)},
        metrics={"picked_target_gain": p.target - base.target, "picked_retention_change": p.retention - base.retention},
    )


def reason(scored: Mapping[str, Proxies], base: Proxies, picked: str, keep: float) -> str:
    """Why ``picked``, in one line: its proxy gain against the best, and which candidates kept enough of that gain
    for its retention to decide (the rule of :func:`selection.choose`)."""
    gains = {k: p.target - base.target for k, p in scored.items()}
    best = max(gains, key=gains.__getitem__)
    floor = gains[best] - (1 - keep) * abs(gains[best])
    eligible = [k for k in scored if gains[k] >= floor - 1e-12]
    p = scored[picked]
    text = (
        f"{picked}: target proxy {gains[picked]:+.3f} (best: {best} {gains[best]:+.3f}), retention proxy "
        f"{p.retention - base.retention:+.3f}"
    )
    if len(eligible) > 1:
        text += f"; the least retention lost of the {len(eligible)} keeping >= {keep:g} of the best gain"
    return text


def proxies_figure(scored: Mapping[str, Proxies], base: Proxies, picked: str):
    """Target-proxy gain (x) against retention change (y), one point per candidate, the pick ringed; the upper right
    is better."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, p in scored.items():
        x, y = 100 * (p.target - base.target), 100 * (p.retention - base.retention)
        ax.scatter([x], [y], s=60, color="#2c3e50", zorder=3)
        if label == picked:
            ax.scatter([x], [y], s=260, facecolors="none", edgecolors="#e67e22", linewidths=2, zorder=4)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("target proxy: gain on held-out retrieved pairs (points)")
    ax.set_ylabel("retention proxy: change of recall on random pairs (points)")
    ax.set_title(f"label-free choice: {picked}")
    fig.tight_layout()
    return fig


def read_choice(storage: Storage, choose_uri: str) -> dict[str, Any]:
    return storage.read_json(join(choose_uri, CHOICE_FILE))


def write_choice_report(
    storage: Storage,
    stage: Stage,
    choose_uri: str,
    base_evals: Mapping[str, str],
    candidate_evals: Mapping[str, Mapping[str, str]],
    roles: Mapping[str, str],
    tracker: Tracker | None = None,
) -> str:
    """Where labels exist: every candidate's true change from the base on each evaluated dataset beside its proxies
    (what the choice could not see), as ``candidates.json``, ``candidates.md`` and ``pareto.png`` (the proxies'
    plane and the true one: target gain against the worst generic change, the pick ringed in both)."""
    choice = read_choice(storage, choose_uri)
    base = headline(storage, base_evals)
    rows = []
    for label, c in choice["candidates"].items():
        got = headline(storage, candidate_evals[label])
        delta = {d: got[d] - base[d] for d in got if d in base}
        by_role = {r: [delta[d] for d in delta if roles.get(d) == r] for r in ("target", "generic", "other")}
        rows.append(
            {
                "candidate": label,
                "gate_scale": c["gate_scale"],
                "picked": label == choice["picked"],
                "proxy_target_gain": c["target_gain"],
                "proxy_retention_change": c["retention_change"],
                "target_gain": sum(by_role["target"]) / len(by_role["target"]) if by_role["target"] else None,
                "generic_change": min(by_role["generic"]) if by_role["generic"] else None,
                "other_change": min(by_role["other"]) if by_role["other"] else None,
                "deltas": delta,
            }
        )
    best = max((r for r in rows if r["target_gain"] is not None), key=lambda r: r["target_gain"], default=None)
    summary = {"picked": choice["picked"], "best_in_hindsight": best and best["candidate"], "candidates": rows}
    storage.write_json(stage.file("candidates.json"), summary)
    storage.write_bytes(stage.file("candidates.md"), candidates_markdown(rows).encode())
    fig = pareto_figure(rows)
    if tracker is not None:
        tracker.log_figure(fig, "pareto.png")
    storage.write_bytes(stage.file("pareto.png"), figure_png(fig))
    return stage.complete(counts={"candidates": len(rows)})


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.3f}"


def candidates_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The candidates' table: proxies (what chose) beside the true changes (what labels say)."""
    lines = [
        "| candidate | lambda | proxy target | proxy retention | target gain | generic change | other change |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = f"**{r['candidate']}** (picked)" if r["picked"] else r["candidate"]
        lines.append(
            f"| {name} | {r['gate_scale']:g} | {_signed(r['proxy_target_gain'])} | "
            f"{_signed(r['proxy_retention_change'])} | {_signed(r['target_gain'])} | {_signed(r['generic_change'])} | "
            f"{_signed(r['other_change'])} |"
        )
    return "\n".join(lines) + "\n"


def pareto_figure(rows: Sequence[Mapping[str, Any]]):
    """Two planes, one point per candidate, the pick ringed: proxies (left: what the choice saw) and, where the
    evaluation has labels, the truth (right: target gain against the worst generic change)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    planes = (
        (axes[0], "proxy_target_gain", "proxy_retention_change", "proxies (no label read)", "retention proxy"),
        (axes[1], "target_gain", "generic_change", "with labels (evaluation)", "generic change"),
    )
    for ax, x_key, y_key, title, y_label in planes:
        for r in rows:
            if r[x_key] is None or r[y_key] is None:
                continue
            x, y = 100 * r[x_key], 100 * r[y_key]
            ax.scatter([x], [y], s=60, color="#2c3e50", zorder=3)
            if r["picked"]:
                ax.scatter([x], [y], s=260, facecolors="none", edgecolors="#e67e22", linewidths=2, zorder=4)
            ax.annotate(r["candidate"], (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_title(title)
        ax.set_xlabel("target gain (points)")
        ax.set_ylabel(f"{y_label} (points)")
    fig.suptitle("candidates of the label-free choice (ringed: the pick; upper right is better)")
    fig.tight_layout()
    return fig
