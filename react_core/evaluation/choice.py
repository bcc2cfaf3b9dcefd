"""The choose stage: several candidate models trained on one retrieval, one picked without a target label
(``training.choose``; the rule and its proxies: :mod:`react_core.evaluation.selection`).

Each candidate (and the base model) is scored on two proxies: zero-shot accuracy on the *held-out retrieved
pairs* (``training.holdout``; each pair labelled with the class it was retrieved for) and image-text recall on
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
from react_core.evaluation.report import figure_png
from react_core.evaluation.selection import Proxies, choose, generic_pairs_set, heldout_set, proxies
from react_core.models import model_file
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
    candidates: Mapping[str, tuple[str, float]],  # label -> (its train stage, lambda)
    heldout_shards: Sequence[str],
    holdout: float,
    retention_shards: Sequence[str],
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int,
    keep: float,
    tracker: Tracker | None = None,
) -> str:
    """Score the base model and every candidate (label -> (train stage, lambda)) on the proxies, pick one
    (:func:`selection.choose`), write ``choice.json`` and ``proxies.png`` into ``stage`` (and into ``tracker``'s
    run); returns its URI."""
    base_net, tokenizer = inference_model(model, base_checkpoint, storage)
    image_size = model_image_size(base_net)
    images, _, _, labels = load_labelled_pairs(
        storage, heldout_shards, image_size, keep=lambda key: is_held_out(key, holdout)
    )
    heldout = heldout_set(images, labels, classnames, templates)
    if len(heldout) == 0:
        raise DatasetError(
            f"none of the retrieved pairs is held out at training.holdout={holdout:g} with a class; fix: a larger "
            "training.holdout (e.g. 0.1)"
        )
    g_images, g_captions, _, _ = load_labelled_pairs(storage, retention_shards, image_size)
    retention = generic_pairs_set(g_images, g_captions)

    def score(checkpoint: str, scale: float) -> Proxies:
        net, tok = inference_model(model, checkpoint, storage)
        set_gate_scale(net, scale)
        return proxies(net, tok, heldout, retention, batch_size)

    base = proxies(base_net, tokenizer, heldout, retention, batch_size)
    del base_net
    scored = {label: score(model_file(train), scale) for label, (train, scale) in candidates.items()}
    picked = choose(scored, base, keep)
    summary = {
        "picked": picked,
        "reason": reason(scored, base, picked, keep),
        "rule": f"keep >= {keep:g} of the best proxy target gain, then the least retention loss",
        "heldout_pairs": len(heldout),
        "retention_pairs": len(retention),
        "base": vars(base),
        "candidates": {
            label: {
                "train": train,
                "gate_scale": scale,
                **vars(scored[label]),
                "target_gain": scored[label].target - base.target,
                "retention_change": scored[label].retention - base.retention,
            }
            for label, (train, scale) in candidates.items()
        },
    }
    storage.write_json(stage.file(CHOICE_FILE), summary)
    fig = proxies_figure(scored, base, picked)
    if tracker is not None:  # the stage's tracking run shows the choice and its plot
        tracker.log_dict(summary, CHOICE_FILE)
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


def proxies_figure(scored: Mapping[str, Proxies], base: Proxies, picked: str, truth: Mapping[str, Any] | None = None):
    """Target-proxy gain (x) against retention change (y), one point per candidate, the pick ringed; the upper right
    is better. ``truth``: label -> true target gain, written beside each point where labels exist."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, p in scored.items():
        x, y = 100 * (p.target - base.target), 100 * (p.retention - base.retention)
        ax.scatter([x], [y], s=60, color="#2c3e50", zorder=3)
        if label == picked:
            ax.scatter([x], [y], s=260, facecolors="none", edgecolors="#e67e22", linewidths=2, zorder=4)
        note = label + (f" (true {100 * truth[label]:+.1f})" if truth and label in truth else "")
        ax.annotate(note, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("target proxy: gain on held-out retrieved pairs (points)")
    ax.set_ylabel("retention proxy: change of recall on random pairs (points)")
    ax.set_title(f"label-free choice: {picked}")
    fig.tight_layout()
    return fig


def read_choice(storage: Storage, choose_uri: str) -> dict[str, Any]:
    return storage.read_json(join(choose_uri, CHOICE_FILE))
