"""Benchmark the mini-web world: generation time, and base vs oracle zero-shot accuracy.

    python bench/world.py -c deployments/demo.yaml [-s key=value ...] [--seeds 0 1 2]

The *base* is pretrained on the generic split (target concepts rare); the *oracle* with the same
recipe and the same number of pairs on the knowledge base (target concepts plentiful). The gap is the
room that customization has. Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from react_core.config_loading import load_config
from react_core.miniweb.generate import TASK_NAMES
from react_core.pipeline import miniweb_stage, run_miniweb, run_pretrain_base
from react_core.storage import Storage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default="deployments/demo.yaml")
    ap.add_argument("-s", "--set", action="append", default=[])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="pretraining seeds (same world)")
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    storage = Storage(cfg.storage.root, cfg.storage.options)
    t0 = time.time()
    stage = miniweb_stage(storage, cfg.miniweb)
    cached = stage.done
    uri = run_miniweb(storage, miniweb=cfg.miniweb)
    gen_s = time.time() - t0
    m = cfg.miniweb
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {sys.version.split()[0]}")
    print(
        f"world: {m.n_concepts} concepts, generic {m.generic_size:,}, kb {m.kb_size:,}, {m.image_size}px; "
        f"generated in {gen_s:.0f} s{' (cached)' if cached else ''} -> {uri}"
    )
    print()
    print("| model | split | seed | pairs | epochs | wall s | " + " | ".join(TASK_NAMES.values()) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(TASK_NAMES))
    for seed in args.seeds:
        for split in ("generic", "kb"):
            over = [f"model.pretrain.split={split}", f"model.pretrain.seed={seed}"]
            if split == "kb":  # the oracle gets the base's budget of pairs; the base uses its whole split
                over.append(f"model.pretrain.max_samples={m.generic_size}")
            c = load_config(cfg.model_dump(mode="json"), over)
            b = run_pretrain_base(storage, model=c.model, miniweb_uri=uri)
            r = storage.stage_manifest(b)["metrics"]
            accs = " | ".join(f"{r[f'{t}.top1']:.3f}" if f"{t}.top1" in r else "-" for t in TASK_NAMES.values())
            label = "base" if split == "generic" else "oracle"
            print(
                f"| {label} | {split} | {seed} | {r['train_pairs']:,} | {c.model.pretrain.epochs} | "
                f"{r['wall_s']:.0f} | {accs} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
