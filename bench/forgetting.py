"""The price of customizing, and gate scaling (lambda) as its control, on the mini-web.

    python bench/forgetting.py -c deployments/demo.yaml --seeds 0 1 2 --scales 0 0.25 0.5 0.75 1 \\
        [-s key=value ...] [--plot bench/forgetting.png]

The world, the base, the retrieved and downloaded pairs and the trained models are the pipeline's own stages
(cached in ``storage.root``; a finished ``react demo`` on that root is reused). For every seed the gated-image
model is trained once; each lambda in ``--scales`` then scales its gated blocks at inference
(``evaluation.gate_scale``; 0 is the base model exactly) and is evaluated zero-shot on the target task, the
other mini-web task and the *generic* task (concepts outside both, which the base learnt from its corpus).

Prints, per lambda, the target gain over the base, the change on the other task and on the generic task (mean
± sd over seeds) and the share of the full model's target gain kept; the plot shows target gain against
generic change, one point per lambda with its spread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from miniweb_chain import eval_tasks, prepare

from react_core import pipeline
from react_core.config import ReactConfig, load_config
from react_core.evaluation.zeroshot import evaluate_zero_shot
from react_core.models import model_file
from react_core.models.cache import inference_model
from react_core.models.gated import set_gate_scale


def _ms(values: list[float]) -> str:
    return f"{statistics.mean(values):+.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default="deployments/demo.yaml")
    ap.add_argument("-s", "--set", action="append", default=[])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--plot", default=None, help="write the trade-off plot (PNG) here")
    args = ap.parse_args()
    cfg: ReactConfig = load_config(args.config, args.set)
    t0 = time.time()
    chain = prepare(cfg)
    storage, base, downloaded = chain.storage, chain.base, chain.downloaded
    print(f"pipeline up to download: {time.time() - t0:.0f} s")
    tasks = eval_tasks(cfg, chain)
    target, other = list(tasks)[:2]

    def evaluate(model, tok) -> dict[str, float]:
        return {name: evaluate_zero_shot(model, tok, data, batch_size=cfg.evaluation.batch_size)["accuracy"]
                for name, data in tasks.items()}  # fmt: skip

    base_acc = evaluate(*inference_model(cfg.model, base, storage))
    print("base: " + ", ".join(f"{k} {v:.3f}" for k, v in base_acc.items()), flush=True)
    # deltas[scale][task] = one value per seed
    deltas: dict[float, dict[str, list[float]]] = {s: {t: [] for t in tasks} for s in args.scales}
    for seed in args.seeds:
        t1 = time.time()
        stage = pipeline.run_train(storage, cfg.model, base, cfg.training.model_copy(update={"seed": seed}), downloaded)
        model, tok = inference_model(cfg.model, model_file(stage), storage)
        print(f"seed {seed}: trained in {time.time() - t1:.0f} s ({stage})", flush=True)
        for scale in args.scales:
            set_gate_scale(model, scale)
            acc = evaluate(model, tok)
            for t in tasks:
                deltas[scale][t].append(acc[t] - base_acc[t])
            print(f"  lambda {scale:.2f}: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)

    full_gain = statistics.mean(deltas[max(args.scales)][target])
    print()
    print(f"| lambda | {target} gain | {other} change | miniweb-generic change | share of the gain kept |")
    print("|---|---|---|---|---|")
    for scale in args.scales:
        d = deltas[scale]
        kept = statistics.mean(d[target]) / full_gain if full_gain else float("nan")
        print(f"| {scale:.2f} | {_ms(d[target])} | {_ms(d[other])} | {_ms(d['miniweb-generic'])} | {kept:.2f} |")
    print(f"\nbase: {', '.join(f'{k} {v:.3f}' for k, v in base_acc.items())}; seeds {args.seeds}; "
          f"wall time {time.time() - t0:.0f} s")  # fmt: skip

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 4))
        xs = [statistics.mean(deltas[s]["miniweb-generic"]) for s in args.scales]
        ys = [statistics.mean(deltas[s][target]) for s in args.scales]
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
        ax.errorbar(xs, ys, xerr=[sd(deltas[s]["miniweb-generic"]) for s in args.scales],
                    yerr=[sd(deltas[s][target]) for s in args.scales], fmt="o-", capsize=3)  # fmt: skip
        for s, x, y in zip(args.scales, xs, ys, strict=True):
            ax.annotate(f"λ={s:g}", (x, y), textcoords="offset points", xytext=(6, -10), fontsize=8)
        ax.axvline(-0.02, color="grey", lw=0.6, ls="--")
        ax.set_xlabel("change on miniweb-generic (what the base knew)")
        ax.set_ylabel(f"gain on {target} (the target)")
        ax.set_title(f"gate scaling, {len(args.seeds)} seeds (mean ± sd)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
