"""Is the heads' lead on the target proxy the tuning of their blend? One case of ``bench/choose.py``, re-scored.

    python bench/choose_split.py --world w2 --seed 0 -s storage.root=/tmp/bench-choose/root \\
        -s training.choose.budget=160

The case's stages are reused (run ``bench/choose.py`` with the same settings first). The held-out retrieved pairs
are split in two by their key's hash: each head's blend with zero-shot is chosen again on the first half, and every
candidate (and the base) is scored on the second. The pairs are those the choose stage reads
(``training.choose.label_modes``). The script prints each candidate's proxy gain as the choose stage computed it
(every such pair, blend chosen on all held-out pairs), its proxy gain on the second half, and its true gain.
"""

from __future__ import annotations

import argparse
import logging
import os
import zlib

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch
from choose import CANDIDATES, WORLDS

from react_core.config_loading import load_config
from react_core.data import is_held_out, load_labelled_pairs
from react_core.evaluation.heads import HEAD_FILE, head_logits, load_head
from react_core.evaluation.selection import heldout_set
from react_core.evaluation.zeroshot import zero_shot
from react_core.knowledge.download import downloaded_shards
from react_core.models.cache import inference_model
from react_core.models.encode import model_image_size
from react_core.models.gated import set_gate_scale
from react_core.plans import customize
from react_core.registry import resolve_task
from react_core.storage import Storage, join
from react_core.training.heads import choose_blend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default="deployments/demo.yaml")
    ap.add_argument("-s", "--set", action="append", default=[])
    ap.add_argument("--world", default="w2", choices=list(WORLDS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    holdout = 0.1
    cfg = load_config(
        args.config,
        [
            *WORLDS[args.world],
            f"training.seed={args.seed}",
            f"training.holdout={holdout}",
            f"training.choose.candidates={CANDIDATES}",
            "tracking.enabled=false",
            *args.set,
        ],
    )
    logging.disable(logging.WARNING)
    out = customize(cfg)  # every stage cached by bench/choose.py
    st = Storage(cfg.storage.root, cfg.storage.options)
    choice = st.read_json(join(out["choose"], "choice.json"))
    truth = {r["candidate"]: r for r in st.read_json(join(out["choice_report"], "candidates.json"))["candidates"]}
    task = resolve_task(st, cfg.retrieval.target_tasks[0], out["miniweb"])
    base, tok = inference_model(cfg.model, out["base"], st)
    images, _, keys, labels = load_labelled_pairs(
        st,
        downloaded_shards(st, out["download"]),
        model_image_size(base),
        keep=lambda k: is_held_out(k, holdout),
        label_modes=cfg.training.choose.label_modes,  # the pairs the choose stage scored
    )
    first = torch.tensor([zlib.crc32(k.encode()) / 2**32 < holdout / 2 for k in keys])
    classed = labels >= 0
    tune, score = (
        heldout_set(images[m], labels[m], task.classnames, task.templates) for m in (first & classed, ~first & classed)
    )
    print(f"{args.world} seed {args.seed}: blends chosen on {len(tune)} pairs, every model scored on {len(score)}")

    def accuracy(net: torch.nn.Module, head=None) -> float:
        z = zero_shot(net, tok, score, cfg.evaluation.batch_size)
        if head is None:
            return float((torch.from_numpy(z.scores).argmax(1) == z.targets).float().mean())
        t = zero_shot(net, tok, tune, cfg.evaluation.batch_size)
        choose_blend(head, t.features, t.targets, t.classifier)
        logits = head_logits(head, net, tok, list(task.templates), z.features, z.classifier)
        return float((logits.argmax(1) == z.targets).float().mean())

    at_base = accuracy(base)
    print("| candidate | proxy gain (choose stage) | proxy gain (second half, blend on the first) | true gain |")
    print("|---|---|---|---|")
    for label, c in choice["candidates"].items():
        net, _ = inference_model(cfg.model, c["checkpoint"], st)
        set_gate_scale(net, c["gate_scale"])
        head = load_head(st, join(c["head"], HEAD_FILE)) if c["head"] else None
        gain = accuracy(net, head) - at_base
        print(f"| {label} | {c['target_gain']:+.3f} | {gain:+.3f} | {truth[label]['target_gain']:+.3f} |")


if __name__ == "__main__":
    main()
