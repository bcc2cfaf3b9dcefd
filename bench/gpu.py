"""Every GPU figure in one command: embedding, the training step, retrieval, evaluation, the tiny demo.

    python bench/gpu.py                  # one CUDA device, at most ~8 minutes; prints one markdown report
    python bench/gpu.py --dry            # the same code paths on the CPU at toy sizes (the test tier runs this)
    python bench/gpu.py --json out.json  # also write every figure as JSON

Without CUDA it refuses to run (one line, exit 2) unless ``--dry`` is given. Each section prints its table
as soon as it is measured and a failing section is reported as such while the others still run, so a run
cut short by a time limit keeps what it measured. Random weights throughout: throughput does not depend on
them. Sections (the other ``bench/*.py`` scripts do each one in more detail and at other sizes):

* **embed**: the knowledge-base embed stage (``react_core.knowledge.embed``) on synthetic JPEG shards at web
  sizes (384x288, 1024x768), ViT-B/32 and ViT-L/14, against the plain one-process loop of ``bench/embed.py``
  (timed on a sample). Two bounds put ours in context: the *decode bound* (the stage's own reader alone, every
  CPU core decoding and cropping, no model) and the *compute bound* (the device's dense bf16 peak divided by
  the model's FLOPs per pair, counted by ``torch.utils.flop_counter``); ours as a share of the lower of the two.
* **train**: one gated-image training step of ViT-B/32 at the paper's per-GPU batch (4,096 over 8 GPUs: 512),
  bf16, ours (text features cached, image tower only) against the upstream-style step (the whole CLIP, the
  text tower every step), each with and without gradient checkpointing, each in its own process
  (``bench/train_step.py``) so that its peak memory is its own.
* **retrieval**: 80,000 prompts (1,000 classes x 80 templates) x 1M vectors, K = 50: faiss on the CPU
  (IVF, nprobe tuned to recall 0.95 as the index stage does) against faiss on the GPU when ``faiss-gpu`` is
  installed, and exact search as a blocked matmul on the GPU with torch; recall@50 against exact search.
* **eval**: zero-shot image features and scores of a 10,000-image synthetic set (``bench/eval_speed.py``'s
  data and paths), ours against the plain loop (on a sample).
* **demo**: ``react demo -c deployments/tiny.yaml`` on a fresh root, end to end on the device, with the time
  at which each stage finished (its ``_SUCCESS``).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

import numpy as np
import torch

# Dense bf16 tensor-core peak (TFLOP/s) by device name, from the vendors' data sheets; --peak-tflops overrides.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX 6000 Ada": 364.0,
    "B200": 2250.0,
    "GH200": 989.0,
}

# What each size means. "full" is the GPU run (its budget: 8 minutes of wall time on one H200-class device
# with 16 cores); "dry" exercises the same paths on 2 CPU cores in well under a minute.
SIZES = {
    "full": {
        "models": {"ViT-B/32": "ViT-B-32", "ViT-L/14": "ViT-L-14"},
        "image_sizes": [(384, 288), (1024, 768)],
        "embed_n": {384: 4096, 1024: 1536},
        "embed_plain_n": 384,
        "embed_batch": 256,
        "train_model": "ViT-B-32",
        "train_batch": 512,
        "train_steps": 15,
        "train_warmup": 3,
        "train_gated_layers": 6,
        "retrieval_rows": 1_000_000,
        "retrieval_classes": 1000,
        "retrieval_templates": 80,
        "retrieval_index": "IVF4096,Flat",
        "retrieval_probe": 1000,
        "eval_n": 10_000,
        "eval_plain_n": 1000,
        "eval_model": "ViT-B-32",
        "eval_batch": 256,
        "demo": True,
    },
    "dry": {
        "models": {
            "ViT-B/32 (dry: react-micro-vit)": "react-micro-vit",
            "ViT-L/14 (dry: react-tiny-vit)": "react-tiny-vit",
        },
        "image_sizes": [(96, 72), (256, 192)],
        "embed_n": {96: 64, 256: 32},
        "embed_plain_n": 16,
        "embed_batch": 16,
        "train_model": "react-micro-vit",
        "train_batch": 8,
        "train_steps": 2,
        "train_warmup": 1,
        "train_gated_layers": 2,
        "retrieval_rows": 20_000,
        "retrieval_classes": 10,
        "retrieval_templates": 8,
        "retrieval_index": "IVF64,Flat",
        "retrieval_probe": 40,
        "eval_n": 64,
        "eval_plain_n": 16,
        "eval_model": "react-micro-vit",
        "eval_batch": 32,
        "demo": False,  # the tiny demo end to end is the integration tier's (tests/integration/test_customize_flow)
    },
}


def peak_tflops(device_name: str) -> float | None:
    """The device's dense bf16 peak from :data:`PEAK_BF16_TFLOPS` (longest matching name first), else None."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_BF16_TFLOPS[key]
    return None


def environment(device: str) -> dict:
    env = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device,
    }
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                check=False,
                capture_output=True,
                text=True,
                timeout=20,
            )
            env["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, IndexError):
            env["driver"] = None
    try:
        import faiss

        env["faiss"] = faiss.__version__
        env["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        env["faiss"] = None
    return env


def table(title: str, header: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
        return "-" if v is None else str(v)

    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# --- embed -------------------------------------------------------------------------------------------------


def _write_shard(job: tuple[str, int, int, int, int, int]) -> str:
    import webdataset as wds
    from embed import caption
    from PIL import Image

    path, start, stop, width, height, seed = job
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f, wds.TarWriter(f, encoder=False) as w:
        for i in range(start, stop):
            low = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)  # smooth content, as a photo compresses
            buf = io.BytesIO()
            Image.fromarray(low).resize((width, height), Image.BICUBIC).save(buf, format="JPEG", quality=90)
            meta = json.dumps({"url": f"http://example.com/{i}.jpg"}).encode()
            w.write({"__key__": f"{i:09d}", "jpg": buf.getvalue(), "txt": caption(rng, 10).encode(), "json": meta})
    with open(path[:-4] + "_stats.json", "w") as f:  # the shard's index, as img2dataset writes it
        json.dump({"successes": stop - start, "count": stop - start}, f)
    return path


def write_jpeg_shards(root: str, n: int, width: int, height: int, shards: int) -> list[str]:
    """``n`` web-like image-caption pairs in ``shards`` webdataset tars, written by one process per core."""
    os.makedirs(root, exist_ok=True)
    per = -(-n // shards)
    jobs = [
        (os.path.join(root, f"{s:05d}.tar"), s * per, min(n, (s + 1) * per), width, height, s)
        for s in range(shards)
        if s * per < n
    ]
    with multiprocessing.get_context("fork").Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
        return pool.map(_write_shard, jobs)


def decode_bound(shards: list[str], image_size: int, batch: int, workers: int, tokenizer) -> float:
    """Pairs/s of the embed stage's own reader (decode, crop, tokenize) in ``workers`` processes, no model."""
    from react_core.knowledge.embed import ShardBatches
    from react_core.storage import Storage

    ds = ShardBatches(Storage("/"), list(enumerate(shards)), image_size, tokenizer, batch, draft=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    t0 = time.perf_counter()
    n = sum(len(b["offsets"]) for b in loader)
    return n / (time.perf_counter() - t0)


def flops_per_pair(model, image_size: int, tokens: torch.Tensor, device: str) -> float:
    """FLOPs of encoding one image and one caption at its median trimmed length (what the embed stage runs)."""
    from torch.utils.flop_counter import FlopCounterMode

    from react_core.models.text import encode_text

    x = torch.zeros(1, 3, image_size, image_size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.encode_image(x)
        encode_text(model, tokens.to(device))
    return float(counter.get_total_flops()) / len(tokens)


def bench_embed(size: dict, device: str, workers: int, peak: float | None, tmp: str) -> list[list]:
    import open_clip
    from embed import plain

    from react_core.knowledge.embed import embed_knowledge_base
    from react_core.models import create_model
    from react_core.models.encode import model_image_size
    from react_core.storage import Storage

    rows = []
    data = {}
    for w, h in size["image_sizes"]:
        n = size["embed_n"][w]
        t0 = time.perf_counter()
        data[w] = write_jpeg_shards(os.path.join(tmp, f"kb{w}"), n, w, h, shards=max(2, 2 * workers))
        print(f"(embed data: {n} JPEGs {w}x{h} in {time.perf_counter() - t0:.0f} s)", flush=True)
    for label, arch in size["models"].items():
        torch.manual_seed(0)
        model, tok = create_model(arch, None, device=device)
        model.eval()
        _, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
        side = model_image_size(model)
        for (w, h), shards in ((wh, data[wh[0]]) for wh in size["image_sizes"]):
            n = size["embed_n"][w]
            out = Storage(os.path.join(tmp, "embed-out"))
            batch = size["embed_batch"]
            stage = out.stage("warm", {"m": arch, "w": w})  # warm-up: allocator, kernels, loader start
            embed_knowledge_base(model, tok, Storage("/"), shards[:1], stage, batch, 0, progress=False)
            sync(device)
            t0 = time.perf_counter()
            embed_knowledge_base(
                model,
                tok,
                Storage("/"),
                shards,
                out.stage("ours", {"m": arch, "w": w}),
                batch,
                workers,
                progress=False,
                draft=True,
            )
            sync(device)
            ours = n / (time.perf_counter() - t0)
            # the plain loop on a sample of the shards (it is slow: one process decodes everything)
            per_shard = -(-n // len(shards))
            sample = shards[: max(1, -(-size["embed_plain_n"] // per_shard))]
            t0 = time.perf_counter()
            plain(model, tok, preprocess, sample, batch, device, os.path.join(tmp, "plain"))
            sync(device)
            base = min(n, per_shard * len(sample)) / (time.perf_counter() - t0)
            decode = decode_bound(shards, side, batch, workers, tok)
            caps = tok(["a photo of a small red dog on the beach at sunset"] * 4)
            flops = flops_per_pair(model, side, caps, device)
            compute = (peak * 1e12 / flops) if peak else None
            bound = min(b for b in (decode, compute) if b is not None)
            which = "decode" if compute is None or decode <= compute else "compute"
            rows.append(
                [
                    label,
                    f"{w}x{h}",
                    n,
                    round(ours, 1),
                    round(base, 1),
                    round(ours / base, 2),
                    round(decode, 1),
                    round(compute, 1) if compute else None,
                    f"{flops / 1e9:.2f}",
                    f"{100 * ours / bound:.0f}% of {which}",
                ]
            )
            shutil.rmtree(os.path.join(tmp, "embed-out"), ignore_errors=True)
            shutil.rmtree(os.path.join(tmp, "plain"), ignore_errors=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


# --- train -------------------------------------------------------------------------------------------------


def bench_train(size: dict, device: str) -> list[list]:
    rows = []
    for variant in ("upstream", "upstream-no-ckpt", "ours", "ours+ckpt"):
        cmd = [
            sys.executable,
            str(BENCH / "train_step.py"),
            "--variant",
            variant,
            "--model",
            size["train_model"],
            "--batch",
            str(size["train_batch"]),
            "--steps",
            str(size["train_steps"]),
            "--warmup",
            str(size["train_warmup"]),
            "--gated-layers",
            str(size["train_gated_layers"]),
            "--device",
            device,
        ]
        out = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if out.returncode != 0:
            rows.append([variant, None, None, None, f"failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}"])
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(
            [variant, round(r["samples_per_s"], 1), round(r["s_per_step"], 4), round(r["peak_mb"]), r["memory"]]
        )
    up = next((r for r in rows if r[0] == "upstream" and r[1]), None)
    for r in rows:
        r.insert(2, f"{r[1] / up[1]:.2f}x" if up and r[1] else None)
    return rows


# --- retrieval ---------------------------------------------------------------------------------------------


def exact_topk_torch(db: torch.Tensor, queries: np.ndarray, k: int, block: int) -> np.ndarray:
    """Exact top-k by inner product as a blocked matmul on the device (fp16 database, fp32 scores)."""
    out = []
    for i in range(0, len(queries), block):
        q = torch.from_numpy(queries[i : i + block]).to(db.device, db.dtype)
        out.append(torch.topk((q @ db.T).float(), k, dim=1).indices.cpu())
    return torch.cat(out).numpy()


def bench_retrieval(size: dict, device: str, tmp: str) -> list[list]:
    import faiss
    from retrieval import data

    from react_core.config import IndexConfig
    from react_core.knowledge.index import build_one, ground_truth, recall, row_blocks, tune_recall

    k = 50
    t0 = time.perf_counter()
    db, queries, _ = data(size["retrieval_rows"], size["retrieval_classes"], size["retrieval_templates"], 512)
    print(
        f"(retrieval data: {len(db):,} x 512, {len(queries):,} prompts in {time.perf_counter() - t0:.0f} s)", flush=True
    )
    rng = np.random.default_rng(2)
    probe_rows = rng.choice(len(queries), size["retrieval_probe"], replace=False)
    probe = queries[probe_rows]
    t0 = time.perf_counter()
    truth = ground_truth(probe, row_blocks(db), k)
    exact_cpu = time.perf_counter() - t0
    rows = [
        [
            "exact (faiss, CPU)",
            "Flat",
            f"{size['retrieval_probe']} prompts in {exact_cpu:.1f} s",
            round(exact_cpu * len(queries) / len(probe), 1),
            1.0,
            "scaled from the probe",
        ]
    ]

    t0 = time.perf_counter()
    cfg = IndexConfig(index_key=size["retrieval_index"], current_memory_available="32G")
    path, _ = build_one(db, cfg, os.path.join(tmp, "index"), "image")
    index = faiss.read_index(path)
    build = time.perf_counter() - t0
    held = queries[np.random.default_rng(3).choice(len(queries), min(200, len(queries)), replace=False)]
    _, param = tune_recall(index, held, ground_truth(held, row_blocks(db), k), 0.95)
    t0 = time.perf_counter()
    index.search(queries, k)
    cpu_s = time.perf_counter() - t0
    rows.append(
        [
            "faiss, CPU",
            f"{size['retrieval_index']} ({param})",
            f"built in {build:.0f} s",
            round(cpu_s, 2),
            round(recall(index, probe, truth), 4),
            f"{faiss.omp_get_max_threads()} threads",
        ]
    )

    if device == "cuda" and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        gpu_index = faiss.index_cpu_to_all_gpus(index)
        gpu_index.search(queries[:100], k)
        t0 = time.perf_counter()
        gpu_index.search(queries, k)
        g = time.perf_counter() - t0
        rows.append(
            [
                "faiss, GPU",
                f"{size['retrieval_index']} ({param})",
                "copied from the CPU index",
                round(g, 2),
                round(recall(gpu_index, probe, truth), 4),
                f"{cpu_s / g:.1f}x faiss CPU",
            ]
        )
    else:
        rows.append(["faiss, GPU", "-", "faiss-gpu is not installed (the lock carries faiss-cpu)", None, None, "-"])

    dev = torch.device(device)
    dtype = torch.float16 if device == "cuda" else torch.float32
    db_t = torch.from_numpy(db).to(dev, dtype)
    exact_topk_torch(db_t, queries[:8], k, 4096)
    sync(device)
    t0 = time.perf_counter()
    found = exact_topk_torch(db_t, queries, k, 4096 if device == "cuda" else 256)
    sync(device)
    t = time.perf_counter() - t0
    # scored as the index stage scores: a row as similar as the k-th exact neighbour is a hit (ties)
    hit = np.mean([np.isin(found[r], truth.acceptable[i]).sum() / k for i, r in enumerate(probe_rows)])
    rows.append(
        [
            f"exact (torch matmul, {device})",
            "none",
            "-",
            round(t, 2),
            round(float(hit), 4),
            f"{cpu_s / t:.1f}x faiss CPU",
        ]
    )
    del db_t
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


# --- eval --------------------------------------------------------------------------------------------------


def _write_eval_images(job: tuple[str, int, int, list[str]]) -> None:
    from PIL import Image

    root, start, stop, classes = job
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        c = i % len(classes)
        d = os.path.join(root, "val", f"n{c:08d}")
        os.makedirs(d, exist_ok=True)
        pixels = (rng.random((240, 320, 3)) * 64 + c * 19).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(d, f"{i:06d}.JPEG"), quality=90)


def bench_eval(size: dict, device: str, workers: int, tmp: str) -> list[list]:
    import open_clip
    from eval_speed import CLASSES, TEMPLATES, ours, plain

    from react_core.data.datasets import read_image_folder
    from react_core.models import create_model
    from react_core.storage import Storage

    root = os.path.join(tmp, "eval")
    n = size["eval_n"]
    per = -(-n // (os.cpu_count() or 1))
    jobs = [(root, s, min(n, s + per), CLASSES) for s in range(0, n, per)]
    with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
        pool.map(_write_eval_images, jobs)
    with open(os.path.join(root, "classnames.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    torch.manual_seed(0)
    model, tok = create_model(size["eval_model"], None, device=device)
    model.eval()
    _, _, preprocess = open_clip.create_model_and_transforms(size["eval_model"], pretrained=None)
    evalset = read_image_folder(Storage(root), root, "val")
    evalset.templates = TEMPLATES
    warm = read_image_folder(Storage(root), root, "val")
    warm.images, warm.targets = warm.images[: size["eval_batch"]], warm.targets[: size["eval_batch"]]
    ours(model, tok, warm, size["eval_batch"], 0)
    sync(device)
    t0 = time.perf_counter()
    pred = ours(model, tok, evalset, size["eval_batch"], workers)
    sync(device)
    t_ours = time.perf_counter() - t0
    files = [u.removeprefix("file://") for u in evalset.images][: size["eval_plain_n"]]
    t0 = time.perf_counter()
    p_plain = plain(model, tok, lambda im: preprocess(im).to(device), files, size["eval_batch"])
    sync(device)
    t_plain = time.perf_counter() - t0
    agree = float((p_plain.cpu() == pred[: len(files)]).float().mean())
    return [
        [
            size["eval_model"],
            n,
            round(n / t_ours, 1),
            round(len(files) / t_plain, 1),
            f"{(n / t_ours) / (len(files) / t_plain):.2f}x",
            f"{agree:.3f}",
        ]
    ]


# --- demo --------------------------------------------------------------------------------------------------


def bench_demo(tmp: str) -> list[list]:
    root = os.path.join(tmp, "demo-root")
    env = {
        **os.environ,
        "PREFECT_HOME": os.path.join(tmp, "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
    cmd = [
        sys.executable,
        "-m",
        "react_cli.main",
        "demo",
        "-c",
        str(REPO / "deployments" / "tiny.yaml"),
        "-s",
        f"storage.root={root}",
        "-s",
        f"tracking.tracking_uri=sqlite:///{root}/mlflow.db",
    ]
    t0 = time.time()
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=REPO)
    total = time.time() - t0
    if out.returncode != 0:
        return [["(failed)", f"exit {out.returncode}: {(out.stderr.strip().splitlines() or ['?'])[-1]}", None]]
    done = sorted((p.stat().st_mtime, p.parent.parent.name) for p in Path(root).glob("*/*/_SUCCESS"))
    rows, last = [], t0
    for mtime, stage in done:
        rows.append([stage, round(mtime - t0, 1), round(mtime - last, 1)])
        last = mtime
    rows.append(["(whole command, Prefect start and table included)", round(total, 1), round(time.time() - last, 1)])
    return rows


# --- main --------------------------------------------------------------------------------------------------


def section(name: str, fn: Callable[[], list[list]], header: list[str], report: dict) -> None:
    t0 = time.perf_counter()
    try:
        rows = fn()
        report[name] = {"header": header, "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
        print(table(f"{name} ({time.perf_counter() - t0:.0f} s)", header, rows), flush=True)
        failed = [str(c) for r in rows for c in r if str(c).startswith("failed")]
        if failed:  # a row that could not be measured (a variant's process died): the section failed
            report[name]["error"] = "; ".join(failed)
    except Exception as exc:  # noqa: BLE001 - one failing section must not cost the others' figures
        report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"### {name}: FAILED after {time.perf_counter() - t0:.0f} s: {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", action="store_true", help="CPU, toy sizes: checks the code paths, measures nothing")
    ap.add_argument("--only", nargs="+", choices=["embed", "train", "retrieval", "eval", "demo"], default=None)
    ap.add_argument("--workers", type=int, default=None, help="loader processes (default: cores - 2, at least 1)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, if not known")
    ap.add_argument("--json", default=None, help="also write the report here")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry:
        print(
            "error: no CUDA device (torch.cuda.is_available() is False); fix: run on a GPU host, or pass --dry "
            "to check the code paths on the CPU"
        )
        return 2
    device = "cpu" if args.dry else "cuda"
    size = SIZES["dry" if args.dry else "full"]
    workers = args.workers or max(1, (os.cpu_count() or 2) - 2)
    env = environment(device)
    peak = args.peak_tflops or (peak_tflops(env.get("gpu", "")) if device == "cuda" else None)
    started = time.perf_counter()
    print(f"# REACT GPU benchmark{' (dry: CPU, toy sizes, not figures)' if args.dry else ''}")
    print(
        "`python bench/gpu.py"
        + (" --dry" if args.dry else "")
        + "`, "
        + ", ".join(f"{k} {v}" for k, v in env.items())
        + f", bf16 peak {peak or 'unknown'} TFLOP/s, {workers} loader workers\n",
        flush=True,
    )
    report: dict = {"environment": env, "peak_bf16_tflops": peak, "workers": workers, "dry": args.dry}
    wanted = set(args.only or ["embed", "train", "retrieval", "eval", "demo"])
    if not size["demo"]:
        wanted.discard("demo")
    with tempfile.TemporaryDirectory(prefix="react-gpu-bench-") as tmp:
        if "embed" in wanted:
            section(
                "embed",
                lambda: bench_embed(size, device, workers, peak, tmp),
                [
                    "model",
                    "JPEG",
                    "pairs",
                    "ours img/s",
                    "plain img/s",
                    "ours/plain",
                    "decode bound img/s",
                    "compute bound img/s",
                    "GFLOP/pair",
                    "ours reaches",
                ],
                report,
            )
        if "train" in wanted:
            section(
                "train",
                lambda: bench_train(size, device),
                ["variant", "samples/s", "vs upstream", "s/step", "peak MB", "memory measured as"],
                report,
            )
        if "retrieval" in wanted:
            section(
                "retrieval",
                lambda: bench_retrieval(size, device, tmp),
                ["search", "index", "build", "s for all prompts", "recall@50", "note"],
                report,
            )
        if "eval" in wanted:
            section(
                "eval",
                lambda: bench_eval(size, device, workers, tmp),
                ["model", "images", "ours img/s", "plain img/s", "ours/plain", "top-1 agreement"],
                report,
            )
        if "demo" in wanted:
            section(
                "demo",
                lambda: bench_demo(tmp),
                ["stage (in order of finishing)", "finished at s", "s since previous"],
                report,
            )
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(f"total: {report['seconds']:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    failed = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    if failed:
        print(f"error: sections failed: {', '.join(failed)} (their tracebacks are above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
