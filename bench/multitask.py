"""One model for several tasks against one model per task, on the mini-web (issue #17's multi-task goal).

    python bench/multitask.py -c deployments/demo.yaml -s miniweb.extra_classes=12 --seeds 0 1 2 \\
        [--tasks miniweb-fine miniweb-coarse miniweb-extra] [-s key=value ...]

For each seed: one gated-image model per task (retrieval.task = that task), and one for all of them
(retrieval.tasks, equal shares), each trained on its own retrieved and downloaded pairs (the pipeline's stages,
cached in storage.root). Every model is evaluated zero-shot on every task, on miniweb-generic and on
miniweb-captions (image->text R@1). Prints per task: the base, its own single-task model, the multi-task model,
and whether the multi-task model meets the goal (at least +0.10 over the base, or within 0.02 of the
single-task model).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from miniweb_chain import caption_set, prepare

from react_core import pipeline
from react_core.config import ReactConfig
from react_core.config_loading import load_config
from react_core.data.datasets import read_vision_dataset
from react_core.evaluation.retrieval import image_text_retrieval
from react_core.evaluation.zeroshot import evaluate_zero_shot
from react_core.models import model_file
from react_core.models.cache import inference_model
from react_core.registry import MINIWEB_GENERIC
from react_core.storage import join


def _ms(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default="deployments/demo.yaml")
    ap.add_argument("-s", "--set", action="append", default=[])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tasks", nargs="+", default=["miniweb-fine", "miniweb-coarse", "miniweb-extra"])
    args = ap.parse_args()
    cfg: ReactConfig = load_config(args.config, args.set)
    t0 = time.time()
    arms = {
        t: cfg.model_copy(update={"retrieval": cfg.retrieval.model_copy(update={"task": t, "tasks": None})})
        for t in args.tasks
    }
    arms["multi-task"] = cfg.model_copy(update={"retrieval": cfg.retrieval.model_copy(update={"tasks": args.tasks})})
    chains = {arm: prepare(c) for arm, c in arms.items()}  # world, base, embed, index shared; retrieval per arm
    first = next(iter(chains.values()))
    storage, world, base = first.storage, first.world, first.base
    pairs = {arm: storage.stage_manifest(ch.retrieved)["counts"]["pairs"] for arm, ch in chains.items()}
    print(f"pipeline up to download: {time.time() - t0:.0f} s; retrieved pairs: {pairs}")
    data = {t: read_vision_dataset(storage, join(world, "tasks", t), "test") for t in (*args.tasks, MINIWEB_GENERIC)}
    captions = caption_set(first)

    def evaluate(ckpt: str | None) -> dict[str, float]:
        m, tok = inference_model(cfg.model, ckpt, storage)
        out = {
            t: evaluate_zero_shot(m, tok, d, batch_size=cfg.evaluation.batch_size)["accuracy"] for t, d in data.items()
        }
        out["captions.i2t_r1"] = image_text_retrieval(m, tok, captions, cfg.evaluation.batch_size)[0]["i2t_r1"]
        return out

    base_acc = evaluate(base)
    print("base: " + ", ".join(f"{k} {v:.3f}" for k, v in base_acc.items()), flush=True)
    acc: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
    for seed in args.seeds:
        for arm, ch in chains.items():
            t1 = time.time()
            training = arms[arm].training.model_copy(update={"seed": seed})
            replay = None  # the forgetting controls (training.replay, training.anchor) when the preset sets them
            if training.replay > 0:
                sample = pipeline.run_replay(
                    storage, share=training.replay, seed=seed, embed_uri=ch.embed, retrieve_uri=ch.retrieved
                )
                replay = pipeline.run_download(storage, download=cfg.download, retrieve_uri=sample, miniweb_uri=world)
            stage = pipeline.run_train(
                storage,
                model=cfg.model,
                checkpoint=base,
                training=training,
                download_uri=ch.downloaded,
                replay_uri=replay,
            )
            acc[arm].append(evaluate(model_file(stage)))
            print(
                f"{arm}, seed {seed}: {time.time() - t1:.0f} s: "
                + ", ".join(f"{k} {v:.3f}" for k, v in acc[arm][-1].items()),
                flush=True,
            )

    print("\n| dataset | base | single-task model | multi-task model | multi - base | multi - single | goal |")
    print("|---|---|---|---|---|---|---|")
    for t in args.tasks:
        single = [a[t] for a in acc[t]]
        multi = [a[t] for a in acc["multi-task"]]
        gain = statistics.mean(multi) - base_acc[t]
        gap = statistics.mean(multi) - statistics.mean(single)
        met = "met" if gain >= 0.10 or gap >= -0.02 else "NOT met"
        print(f"| {t} | {base_acc[t]:.3f} | {_ms(single)} | {_ms(multi)} | {gain:+.3f} | {gap:+.3f} | {met} |")
    for t in (MINIWEB_GENERIC, "captions.i2t_r1"):
        per_arm = " | ".join(f"{arm} {statistics.mean(a[t] for a in acc[arm]) - base_acc[t]:+.3f}" for arm in arms)
        print(f"| {t} (change) | {base_acc[t]:.3f} | {per_arm} |")
    print(f"\nseeds {args.seeds}; retrieved pairs {pairs}; wall time {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
