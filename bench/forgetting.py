"""The price of customizing, and the controls of it (gate scaling, replay, anchoring), on the mini-web.

    python bench/forgetting.py -c deployments/demo.yaml --seeds 0 1 2 --scales 0 0.5 0.75 1 \\
        --controls none replay=0.25 replay=0.25,anchor=1 [-s key=value ...] [--plot bench/forgetting.png]

The world, the base, the retrieved and downloaded pairs, the replay samples and the trained models are the
pipeline's own stages (cached in ``storage.root``; a finished ``react demo`` on that root is reused). For every
control (``none``: plain gated-image; else ``training.*`` fields, comma-separated) and seed a model is trained
once; each lambda in ``--scales`` then scales its gated blocks at inference (``evaluation.gate_scale``; 0 is
the base model exactly) and is evaluated zero-shot on the target task, the other mini-web task and
``miniweb-generic`` (concepts outside both, which the base learnt from its corpus).

Prints, per (control, lambda), the target gain over the base, the change on the other task and on the generic
task (mean ± sd over seeds) and the share of plain gated-image's target gain kept; the plot shows target gain
against generic change, one line per control, one point per lambda with its spread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch
from miniweb_chain import caption_set, eval_tasks, prepare

from react_core import pipeline
from react_core.config import ReactConfig
from react_core.config_loading import load_config
from react_core.data import held_out, load_labelled_pairs
from react_core.evaluation.retrieval import image_text_retrieval
from react_core.evaluation.selection import Proxies, choose, generic_pairs_set, heldout_set, proxies
from react_core.evaluation.zeroshot import evaluate_zero_shot
from react_core.knowledge.download import downloaded_shards
from react_core.models import model_file
from react_core.models.cache import inference_model
from react_core.models.gated import set_gate_scale
from react_core.registry import resolve_task
from react_core.tracking import make_tracker, metric_key


def _ms(values: list[float]) -> str:
    return f"{statistics.mean(values):+.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def parse_control(text: str) -> dict[str, float]:
    """``none`` -> plain gated-image; ``replay=0.25,anchor=1`` -> {"replay": 0.25, "anchor": 1.0} (training
    fields). The forgetting controls a control does not name are off, whatever the preset says."""
    out = {"replay": 0.0, "anchor": 0.0}
    if text == "none":
        return out
    for part in text.split(","):
        key, _, value = part.partition("=")
        out[key.strip()] = float(value)
    return out


def train_control(cfg: ReactConfig, chain, control: dict[str, float], seed: int) -> str:
    """The train stage of one control and seed (replay: its sample, downloaded, then training)."""
    training = cfg.training.model_copy(update={"seed": seed, **control})
    training = type(training).model_validate(training.model_dump())  # the config's own checks
    replay = pipeline.run_replay(
        chain.storage, share=training.replay, seed=seed, embed_uri=chain.embed, retrieve_uri=chain.retrieved
    )
    replay_dl = (
        pipeline.run_download(chain.storage, download=cfg.download, retrieve_uri=replay, miniweb_uri=chain.world)
        if replay
        else None
    )
    return pipeline.run_train(
        chain.storage,
        model=cfg.model,
        checkpoint=chain.base,
        training=training,
        download_uri=chain.downloaded,
        replay_uri=replay_dl,
    )


class RuleData:
    """What the label-free rule reads: the held-out retrieved pairs (``training.holdout``) and generic pairs (a
    random knowledge-base sample, seed 10 000, outside the retrieval; a training replay sample may share a few)."""

    def __init__(self, cfg: ReactConfig, chain) -> None:
        if cfg.training.holdout <= 0:
            raise SystemExit("--rule needs held-out retrieved pairs: add -s training.holdout=0.1")
        self.cfg = cfg
        size = cfg.download.image_size
        images, _, keys, labels = load_labelled_pairs(
            chain.storage, downloaded_shards(chain.storage, chain.downloaded), size
        )
        mask = torch.from_numpy(held_out(keys, cfg.training.holdout))
        task = resolve_task(chain.storage, cfg.retrieval.task, chain.world)
        self.heldout = heldout_set(images[mask], labels[mask], task.classnames, task.templates)
        sample = pipeline.run_replay(
            chain.storage, share=0.5, seed=10_000, embed_uri=chain.embed, retrieve_uri=chain.retrieved
        )
        dl = pipeline.run_download(chain.storage, download=cfg.download, retrieve_uri=sample, miniweb_uri=chain.world)
        g_images, g_captions, _, _ = load_labelled_pairs(chain.storage, downloaded_shards(chain.storage, dl), size)
        self.generic = generic_pairs_set(g_images, g_captions)
        print(f"rule: {len(self.heldout)} held-out retrieved pairs, {len(self.generic)} generic pairs")

    def proxies(self, model, tok) -> Proxies:
        return proxies(model, tok, self.heldout, self.generic, self.cfg.evaluation.batch_size)


def report_rule(proxies_of, base: Proxies, deltas, target: str, reference, n_seeds: int) -> None:
    """Per seed: the rule's choice and the best in hindsight (true target gain >= 90 % of the reference's, then
    the least generic loss to 0.01, then the largest gain), with their true figures; then their mean difference."""
    keys = list(proxies_of)
    print("\n| seed | rule's choice | its gain / generic change | best in hindsight | its gain / generic change |")
    print("|---|---|---|---|---|")
    diffs = []
    for i in range(n_seeds):
        cand = {f"{c} @ {s:g}": proxies_of[(c, s)][i] for c, s in keys}
        picked = choose(cand, base)
        true = {f"{c} @ {s:g}": (deltas[(c, s)][target][i], deltas[(c, s)]["miniweb-generic"][i]) for c, s in keys}
        full = deltas[reference][target][i]
        ok = {k: v for k, v in true.items() if v[0] >= 0.9 * full}
        best = max(ok, key=lambda k: (round(ok[k][1], 2), ok[k][0])) if ok else max(true, key=lambda k: true[k][0])
        diffs.append((true[picked][0] - true[best][0], true[picked][1] - true[best][1]))
        print(
            f"| {i} | {picked} | {true[picked][0]:+.3f} / {true[picked][1]:+.3f} | {best} | "
            f"{true[best][0]:+.3f} / {true[best][1]:+.3f} |"
        )
    print(
        f"rule's choice minus hindsight's, mean over seeds: target gain {statistics.mean(g for g, _ in diffs):+.3f}, "
        f"generic change {statistics.mean(g for _, g in diffs):+.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default="deployments/demo.yaml")
    ap.add_argument("-s", "--set", action="append", default=[])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--controls", nargs="+", default=["none"], help="none, or training fields: replay=0.25,anchor=1")
    ap.add_argument("--plot", default=None, help="write the trade-off plot (PNG) here")
    ap.add_argument("--json", default=None, help="write every seed's figures (JSON) here")
    ap.add_argument("--default", default=None, help="the setting to ring on the plot, as control@lambda")
    ap.add_argument(
        "--rule",
        action="store_true",
        help="also choose a (control, lambda) without target labels "
        "(react_core.evaluation.selection; needs -s training.holdout=0.1) and compare with hindsight",
    )
    args = ap.parse_args()
    cfg: ReactConfig = load_config(args.config, args.set)
    t0 = time.time()
    chain = prepare(cfg)
    storage, base = chain.storage, chain.base
    print(f"pipeline up to download: {time.time() - t0:.0f} s")
    tasks = eval_tasks(cfg, chain)
    target, other = list(tasks)[:2]
    captions = caption_set(chain)

    def evaluate(model, tok) -> dict[str, float]:
        out = {
            name: evaluate_zero_shot(model, tok, data, batch_size=cfg.evaluation.batch_size)["accuracy"]
            for name, data in tasks.items()
        }
        out["captions.i2t_r1"] = image_text_retrieval(model, tok, captions, cfg.evaluation.batch_size)[0]["i2t_r1"]
        return out

    rule = RuleData(cfg, chain) if args.rule else None
    # proxies[(control, scale)] = one Proxies per seed
    proxies_of: dict[tuple[str, float], list] = {}
    base_model = inference_model(cfg.model, base, storage)
    base_proxies = rule.proxies(*base_model) if rule else None
    base_acc = evaluate(*base_model)
    print("base: " + ", ".join(f"{k} {v:.3f}" for k, v in base_acc.items()), flush=True)
    # deltas[(control, scale)][task] = one value per seed
    deltas: dict[tuple[str, float], dict[str, list[float]]] = {
        (c, s): {t: [] for t in (*tasks, "captions.i2t_r1")} for c in args.controls for s in args.scales
    }
    for control in args.controls:
        for seed in args.seeds:
            t1 = time.time()
            stage = train_control(cfg, chain, parse_control(control), seed)
            model, tok = inference_model(cfg.model, model_file(stage), storage)
            print(f"{control}, seed {seed}: trained in {time.time() - t1:.0f} s ({stage})", flush=True)
            for scale in args.scales:
                set_gate_scale(model, scale)
                acc = evaluate(model, tok)
                for t, v in acc.items():
                    deltas[(control, scale)][t].append(v - base_acc[t])
                if rule:
                    proxies_of.setdefault((control, scale), []).append(rule.proxies(model, tok))
                print(f"  lambda {scale:.2f}: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)

    reference = ("none", max(args.scales)) if "none" in args.controls else (args.controls[0], max(args.scales))
    full_gain = statistics.mean(deltas[reference][target])
    print()
    print(
        f"| control | lambda | {target} gain | {other} change | miniweb-generic change | captions i2t R@1 change "
        "| share of the gain kept |"
    )
    print("|---|---|---|---|---|---|---|")
    for (control, scale), d in deltas.items():
        kept = statistics.mean(d[target]) / full_gain if full_gain else float("nan")
        print(
            f"| {control} | {scale:.2f} | {_ms(d[target])} | {_ms(d[other])} | {_ms(d['miniweb-generic'])} "
            f"| {_ms(d['captions.i2t_r1'])} | {kept:.2f} |"
        )
    print(
        f"\nbase: {', '.join(f'{k} {v:.3f}' for k, v in base_acc.items())}; seeds {args.seeds}; "
        f"wall time {time.time() - t0:.0f} s"
    )
    if rule:
        report_rule(proxies_of, base_proxies, deltas, target, reference, len(args.seeds))
    if args.json:
        import json

        rows = [{"control": c, "lambda": s, **{f"{t}.delta": v for t, v in d.items()}} for (c, s), d in deltas.items()]
        with open(args.json, "w") as f:
            json.dump({"base": base_acc, "seeds": args.seeds, "rows": rows}, f, indent=1)

    fig = tradeoff_figure(deltas, args.controls, args.scales, target, full_gain, len(args.seeds), args.default)
    if args.plot:
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")
    if cfg.tracking.enabled:  # the trade-off beside the runs it was measured from
        tracker = make_tracker(cfg.tracking, storage)
        with tracker.run("forgetting-tradeoff", {"react.bench": "forgetting"}) as t:
            t.log_params(
                {"controls": args.controls, "scales": args.scales, "seeds": args.seeds, "default": args.default or ""}
            )
            for (control, scale), d in deltas.items():
                for task, values in d.items():
                    t.log_metrics({metric_key("tradeoff", control, f"lambda-{scale:g}", task): statistics.mean(values)})
            t.log_dict(
                {"base": base_acc, "rows": [{"control": c, "lambda": s, **d} for (c, s), d in deltas.items()]},
                "forgetting.json",
            )
            t.log_figure(fig, "forgetting-tradeoff.png")
            print(f"MLflow: run {t.run_id} ({cfg.tracking.experiment})")


def tradeoff_figure(deltas, controls, scales, target: str, full_gain: float, n_seeds: int, default: str | None):
    """Target gain against generic change: a line per control, a point per lambda (mean, ± sd over seeds); the
    goal's corner (-0.02 generic, 90 % of the gain) dashed; ``default`` ("control@lambda") ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
    for control in controls:
        pts = [deltas[(control, s)] for s in scales]
        xs = [statistics.mean(d["miniweb-generic"]) for d in pts]
        ys = [statistics.mean(d[target]) for d in pts]
        ax.errorbar(
            xs,
            ys,
            xerr=[sd(d["miniweb-generic"]) for d in pts],
            yerr=[sd(d[target]) for d in pts],
            fmt="o-",
            capsize=3,
            label=control,
            markersize=4,
        )
        for s, x, y in zip(scales, xs, ys, strict=True):
            ax.annotate(f"{s:g}", (x, y), textcoords="offset points", xytext=(5, -9), fontsize=6)
            if default == f"{control}@{s:g}":
                ax.plot([x], [y], "o", ms=14, mfc="none", mec="black", label=f"default: {control}, lambda {s:g}")
    ax.axvline(-0.02, color="grey", lw=0.6, ls="--")
    ax.axhline(0.9 * full_gain, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("change on miniweb-generic (what the base knew)")
    ax.set_ylabel(f"gain on {target} (the target)")
    ax.set_title(f"forgetting controls (numbers: lambda), {n_seeds} seeds, mean ± sd")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
