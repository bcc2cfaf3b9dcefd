"""The export stage's product at the paper's scale: ViT-B/32 with REACT's gated blocks, exported with
``torch.export``, its size and its latency per image against the PyTorch model it came from, in one run.

    python bench/export.py [--model ViT-B-32-quickgelu] [--gated 6] [--batch 32] [--batches 4]

Random weights (this machine cannot download OpenAI's; sizes and speed do not depend on the values), the gates
opened (alpha 0.5) so the gated blocks change the features. Prints each file's size, milliseconds per image of
both at ``--batch`` (after one warm-up batch), the ratio, and the lowest cosine between their features.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch
import torch.nn.functional as F

from react_core.models import create_model
from react_core.models.gated import add_gated_blocks
from react_core.serving.export import IMAGE_FILE, export_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-32-quickgelu")
    ap.add_argument("--gated", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=4)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = create_model(args.model)
    add_gated_blocks(model, args.gated)
    for name, p in model.named_parameters():
        if "alpha" in name:
            p.data.fill_(0.5)
    model.eval()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        serving = export_model(model, tok, ["tench", "goldfish"], ["a photo of a {}."], out)
        exported_s = time.perf_counter() - t0
        sizes = {f: os.path.getsize(os.path.join(out, f)) / 2**20 for f in sorted(os.listdir(out))}
        t0 = time.perf_counter()
        program = torch.export.load(os.path.join(out, IMAGE_FILE)).module()
        load_s = time.perf_counter() - t0
        size = serving["image_size"]
        x = torch.randn(args.batch, 3, size, size)
        times: dict[str, float] = {"pytorch": 0.0, "exported": 0.0}
        low = 1.0
        with torch.no_grad():
            model.encode_image(x), program(x)  # warm-up
            for _ in range(args.batches):
                x = torch.randn(args.batch, 3, size, size)
                t0 = time.perf_counter()
                a = model.encode_image(x)
                t1 = time.perf_counter()
                b = program(x)
                t2 = time.perf_counter()
                times["pytorch"] += t1 - t0
                times["exported"] += t2 - t1
                low = min(low, float(F.cosine_similarity(a, b).min()))
    n = args.batch * args.batches
    print(
        f"{args.model} + {args.gated} gated blocks, {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}"
    )
    print(
        f"export {exported_s:.1f} s, load {load_s:.1f} s; files (MiB): "
        + ", ".join(f"{k} {v:.1f}" for k, v in sizes.items())
    )
    ms = {k: 1000 * v / n for k, v in times.items()}
    print(f"ms per image at batch {args.batch}: pytorch {ms['pytorch']:.2f}, exported {ms['exported']:.2f} "
          f"(exported / pytorch {ms['exported'] / ms['pytorch']:.2f}); lowest cosine {low:.7f}")  # fmt: skip


if __name__ == "__main__":
    main()
