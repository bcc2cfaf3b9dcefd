"""REACT's quality on the mini-web: gated-image and locked-text against the base and a random control.

    python bench/quality.py -c deployments/demo.yaml --seeds 0 1 2 [-s key=value ...]

The world, the base model and the retrieved and downloaded pairs are the pipeline's own stages (cached
in ``storage.root``). For every seed, three models are trained with the same recipe and epochs:

* **gated-image** on the retrieved pairs (REACT's default);
* **locked-text** (the whole image tower trains) on the retrieved pairs;
* **control**: gated-image on a random subset of the knowledge base as large as the retrieved set,
  downloaded through the same path. If REACT only beats this, retrieval is what helps, not training.

Each is evaluated zero-shot on the target task (``retrieval.task``), the other mini-web task, and a
*generic* task of concepts outside both target groups that the base learnt from its corpus: how much a
customized model forgets there is the price of customizing. Prints a markdown table (mean ± std over
seeds) and the per-seed rows.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import pandas as pd
import torch
from miniweb_chain import eval_tasks, prepare

from react_core import pipeline
from react_core.config import ReactConfig, load_config
from react_core.evaluation.zeroshot import evaluate_zero_shot
from react_core.knowledge.embed import load_metadata
from react_core.knowledge.retrieve import MANIFEST_COLUMNS, read_manifest
from react_core.models import model_file
from react_core.models.cache import inference_model
from react_core.storage import Storage


def control_manifest(storage: Storage, embed_uri: str, n: int, seed: int) -> str:
    """A retrieve-like stage holding ``n`` knowledge-base pairs drawn uniformly (no class: ``class_id`` -1)."""
    stage = storage.stage("control", {"n": n, "seed": seed}, {"embed": embed_uri})
    if stage.done:
        return stage.uri
    meta = load_metadata(storage, embed_uri)
    rows = meta.iloc[np.sort(np.random.default_rng(seed).choice(len(meta), n, replace=False))].reset_index(drop=True)
    manifest = pd.DataFrame(
        {"url": rows["url"], "caption": rows["caption"], "key": rows["key"], "class_id": -1, "class_name": "",
         "score": np.float32(0), "mode": "random", "prompt": "", "shard": rows["shard"], "offset": rows["offset"]},
        columns=MANIFEST_COLUMNS,
    )  # fmt: skip
    buf = io.BytesIO()
    manifest.to_parquet(buf)
    storage.write_bytes(stage.file("manifest.parquet"), buf.getvalue())
    return stage.complete(counts={"pairs": n})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default="deployments/demo.yaml")
    ap.add_argument("-s", "--set", action="append", default=[])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training (and control-subset) seeds")
    args = ap.parse_args()
    cfg: ReactConfig = load_config(args.config, args.set)
    t0 = time.time()
    chain = prepare(cfg)
    storage, world, base, embed, downloaded = chain.storage, chain.world, chain.base, chain.embed, chain.downloaded
    n_retrieved = len(read_manifest(storage, chain.retrieved))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"pipeline up to download: {time.time() - t0:.0f} s; {n_retrieved} pairs retrieved for {cfg.retrieval.task}")
    tasks = eval_tasks(cfg, chain)

    def evaluate(ckpt: str | None) -> dict[str, float]:
        m, tok = inference_model(cfg.model, ckpt, storage)
        return {name: evaluate_zero_shot(m, tok, data, batch_size=cfg.evaluation.batch_size)["accuracy"]
                for name, data in tasks.items()}  # fmt: skip

    results: dict[str, list[dict[str, float]]] = {"base": [evaluate(base)]}
    per_seed = []
    for seed in args.seeds:
        control = control_manifest(storage, embed, n_retrieved, seed)
        control_dl = pipeline.run_download(storage, cfg.download, control, world)
        arms = {
            "gated-image": (downloaded, {"mode": "gated-image"}),
            "locked-text": (downloaded, {"mode": "locked-text"}),
            "control (random KB subset)": (control_dl, {"mode": "gated-image"}),
        }
        for arm, (data_uri, change) in arms.items():
            training = cfg.training.model_copy(update={"seed": seed, **change})
            t1 = time.time()
            stage = pipeline.run_train(storage, cfg.model, base, training, data_uri)
            train_s = time.time() - t1
            acc = evaluate(model_file(stage))
            summary = storage.stage_manifest(stage)
            steps = summary.get("metrics", {}).get("steps") or summary.get("counts", {}).get("steps")
            results.setdefault(arm, []).append(acc)
            per_seed.append((arm, seed, steps, train_s, acc))
            print(f"  seed {seed} {arm}: steps {steps}, {train_s:.0f} s, "
                  + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)  # fmt: skip

    names = list(tasks)
    print()
    print(f"| model | seeds | {' | '.join(names)} |")
    print("|---|---|" + "---|" * len(names))
    for arm, accs in results.items():
        cells = []
        for n in names:
            vals = [a[n] for a in accs]
            spread = f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""
            cells.append(f"{statistics.mean(vals):.3f}{spread}")
        print(f"| {arm} | {len(accs)} | {' | '.join(cells)} |")
    print(f"\nwall time {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
