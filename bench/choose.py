"""The label-free choice (``training.choose``) against hindsight, on several mini-web worlds and seeds.

    python bench/choose.py -c deployments/demo.yaml --worlds demo w1 w2 --seeds 0 1 2 [-s key=value ...] \\
        [--json bench/results/choose.json]

For every world (``WORLDS``: the demo's, and two generated with other seeds and class counts) and training seed,
the customize run's own plan (``react_core.plans.customize``, tracking off) trains every candidate of
``CANDIDATES`` on the one retrieval, picks one without a target label, and evaluates every candidate
(``training.choose.evaluate_all``): the choice-report stage holds each one's true target gain and generic change.
The world, the base, the embedding, the index and the retrieval are cached stages, shared by the seeds.

Per case it prints the pick, the best single candidate in hindsight (best target accuracy among those whose
generic change is within ``--max-loss``, the forgetting goal; and the best on the target regardless), and whether
the pick is within ``--within`` of the admissible best on the target with generic loss <= ``--max-loss``; then each
candidate's mean target accuracy over the cases beside the pick's. ``--from-json F --without LABEL ...`` prints the
cases again as if some candidates had not been offered (the rule re-applied to the others' proxies).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from react_core.config_loading import load_config
from react_core.evaluation.selection import Proxies, choose
from react_core.plans import customize
from react_core.storage import Storage, join

# Worlds: overrides of the preset. w1: more, finer classes; w2: fewer classes on a smaller corpus.
WORLDS: dict[str, list[str]] = {
    "demo": [],
    "w1": ["miniweb.seed=1", "miniweb.fine_grained_classes=24", "miniweb.coarse_classes=10"],
    "w2": [
        "miniweb.seed=2",
        "miniweb.fine_grained_classes=10",
        "miniweb.coarse_classes=8",
        "miniweb.generic_size=30000",
        "miniweb.kb_size=60000",
    ],
}

# The candidates: REACT's gated blocks with the preset's forgetting controls at two lambdas and without them,
# locked-text, the two rivals' heads on the base model, and the gated model with a linear head on its features.
CANDIDATES = (
    "[{label: gated}, {label: gated lambda 0.5, gate_scale: 0.5}, "
    "{label: gated plain, set: {training.replay: 0, training.anchor: 0}}, "
    "{label: locked-text, set: {training.mode: locked-text, training.lr: 0.0005}}, "
    "{label: real-linear, set: {training.mode: real-linear}}, "
    "{label: cache-head, set: {training.mode: cache-head}}, "
    "{label: gated with linear head, head: real-linear}]"
)


def case(config: str, world: list[str], seed: int, extra: list[str]) -> dict:
    cfg = load_config(
        config,
        [
            *world,
            f"training.seed={seed}",
            "training.holdout=0.1",
            f"training.choose.candidates={CANDIDATES}",
            "tracking.enabled=false",
            *extra,
        ],
    )
    t0 = time.time()
    out = customize(cfg)
    st = Storage(cfg.storage.root, cfg.storage.options)
    report = st.read_json(join(out["choice_report"], "candidates.json"))
    base = out["table"]["miniweb-fine"]["base"]
    rows = {
        r["candidate"]: {
            "target": base + r["target_gain"],
            "target_gain": r["target_gain"],
            "generic": r["generic_change"],
            "proxy_target_gain": r["proxy_target_gain"],
            "proxy_retention_change": r["proxy_retention_change"],
        }
        for r in report["candidates"]
    }
    return {"picked": report["picked"], "base": base, "candidates": rows, "wall_s": round(time.time() - t0, 1)}


def without(result: dict, drop: list[str], keep: float) -> dict:
    """The case as if ``drop`` had not been candidates: the rule (:func:`selection.choose`) applied again to the
    others' proxies, which it reads alone (no candidate's proxies depend on another's)."""
    rows = {k: r for k, r in result["candidates"].items() if k not in drop}
    proxies = {k: Proxies(r["proxy_target_gain"], r["proxy_retention_change"]) for k, r in rows.items()}
    return {**result, "candidates": rows, "picked": choose(proxies, Proxies(0.0, 0.0), keep)}


def judge(result: dict, within: float, max_loss: float) -> dict:
    rows, picked = result["candidates"], result["picked"]
    admissible = {k: r for k, r in rows.items() if r["generic"] >= -max_loss}
    best_ok = max(admissible, key=lambda k: admissible[k]["target"]) if admissible else None
    best_any = max(rows, key=lambda k: rows[k]["target"])
    p = rows[picked]
    gap = p["target"] - rows[best_ok]["target"] if best_ok else float("nan")
    met = best_ok is not None and gap >= -within and p["generic"] >= -max_loss
    return {"best_ok": best_ok, "best_any": best_any, "gap": gap, "met": met}


def plot(results: dict[str, dict], path: str, max_loss: float) -> None:
    """One column per case: every candidate's true target accuracy (dots; hollow: generic loss beyond the goal),
    the pick ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(next(iter(results.values()))["candidates"])
    colors = dict(zip(labels, plt.get_cmap("tab10").colors, strict=False))
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(results)) + 2, 4.5))
    for i, (name, r) in enumerate(results.items()):
        for label, c in r["candidates"].items():
            hollow = c["generic"] < -max_loss
            ax.scatter([i], [c["target"]], s=40, color="none" if hollow else colors[label], edgecolors=colors[label],
                       label=label if i == 0 else None, zorder=3)  # fmt: skip
        ax.scatter([i], [r["candidates"][r["picked"]]["target"]], s=220, facecolors="none", edgecolors="black",
                   linewidths=1.5, zorder=4, label="the label-free pick" if i == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(results)), list(results), rotation=30)
    ax.set_ylabel("target accuracy (true, with labels)")
    ax.set_title("the label-free pick against every candidate (hollow: generic loss > the goal)", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: it hid the low points
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default="deployments/demo.yaml")
    ap.add_argument("-s", "--set", action="append", default=[])
    ap.add_argument("--worlds", nargs="+", default=list(WORLDS), choices=list(WORLDS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--within", type=float, default=0.01, help="the goal: this close to the admissible best")
    ap.add_argument("--max-loss", type=float, default=0.02, help="the forgetting goal: generic loss at most this")
    ap.add_argument("--json", default=None, help="write every case's figures here")
    ap.add_argument("--from-json", default=None, help="print (and plot) the cases of an earlier --json, run nothing")
    ap.add_argument("--without", nargs="+", default=[], help="with --from-json: as if these were no candidates")
    ap.add_argument("--keep", type=float, default=0.9, help="with --without: training.choose.keep of the runs")
    ap.add_argument("--plot", default=None, help="a PNG: every candidate's target accuracy per case, the pick ringed")
    args = ap.parse_args()

    results: dict[str, dict] = {}
    if args.from_json:
        with open(args.from_json) as f:
            results = {k: without(r, args.without, args.keep) for k, r in json.load(f).items()}
    print("| world | seed | picked | its target (gain) | its generic | best admissible in hindsight | gap | best on "
          "target (its generic) | goal met | s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    cases = list(results) or [f"{w}/{s}" for w in args.worlds for s in args.seeds]
    for name in cases:
        if name not in results:
            world, seed = name.split("/")
            results[name] = case(args.config, WORLDS[world], int(seed), args.set)
        r = results[name] = {**results[name], **judge(results[name], args.within, args.max_loss)}
        world, seed = name.split("/")
        rows, p = r["candidates"], r["candidates"][r["picked"]]
        ok, any_ = r["best_ok"], r["best_any"]
        print(
            f"| {world} | {seed} | {r['picked']} | {p['target']:.3f} ({p['target_gain']:+.3f}) | "
            f"{p['generic']:+.3f} | {ok} {rows[ok]['target']:.3f} | {r['gap']:+.3f} | {any_} "
            f"{rows[any_]['target']:.3f} ({rows[any_]['generic']:+.3f}) | {'yes' if r['met'] else 'no'} | "
            f"{r['wall_s']:.0f} |",
            flush=True,
        )
    met = sum(1 for r in results.values() if r["met"])
    print(f"\ngoal met in {met} of {len(results)} cases (within {args.within} of the admissible best, generic loss "
          f"<= {args.max_loss})\n")  # fmt: skip
    labels = list(next(iter(results.values()))["candidates"])
    print("| model | mean target | mean generic | cases with generic loss > " + f"{args.max_loss} |")
    print("|---|---|---|---|")
    picked_t = [r["candidates"][r["picked"]]["target"] for r in results.values()]
    picked_g = [r["candidates"][r["picked"]]["generic"] for r in results.values()]
    print(f"| **the choice** | {statistics.mean(picked_t):.3f} | {statistics.mean(picked_g):+.3f} | "
          f"{sum(g < -args.max_loss for g in picked_g)} |")  # fmt: skip
    for label in labels:
        t = [r["candidates"][label]["target"] for r in results.values()]
        g = [r["candidates"][label]["generic"] for r in results.values()]
        print(f"| {label} | {statistics.mean(t):.3f} | {statistics.mean(g):+.3f} | "
              f"{sum(x < -args.max_loss for x in g)} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.plot:
        plot(results, args.plot, args.max_loss)


if __name__ == "__main__":
    main()
