"""Benchmark: our gated-image training step against an upstream-style one, same model and batch.

Both steps train the same gated ViT (gated blocks before the last k image blocks, everything else
frozen) with the CLIP loss and AdamW, from random weights (no download):

* **upstream-style** (REACT's released recipe on open_clip): the whole CLIP model is in memory, the
  frozen text tower encodes the batch's captions at every step, and gradient checkpointing is on, so
  every block's forward runs twice and autograd goes through the frozen trunk.
* **upstream-no-ckpt**: the same without checkpointing (faster, far more memory; ``bench/gpu.py`` runs it).
* **ours** (:mod:`react_core.training.trainer`): the captions' features are computed once per dataset
  (here: given), only the image tower and ``logit_scale`` are in memory, no checkpointing; autograd
  records nothing before the first gated block.
* **ours+ckpt**: the same with ``training.grad_checkpointing: true`` (less memory, some speed).
* **ours+compile**: ours under ``torch.compile`` (``training.compile: true``; inductor, compiled in the warm-up).

Each variant runs in its own subprocess, so that peak memory (peak RSS on CPU above the process's
footprint before the model is built; ``torch.cuda.max_memory_allocated`` on GPU) is its own. Ratios
come from one invocation::

    python bench/train_step.py --model ViT-B-32 --batch 32 --steps 5
    python bench/train_step.py --device cuda --batch 256 --steps 20   # bf16 autocast on GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_variant(variant: str, model_name: str, batch: int, steps: int, warmup: int, k: int, device: str) -> dict:
    import open_clip
    import torch
    import torch.nn.functional as F
    from open_clip.loss import ClipLoss

    from react_core.models.gated import add_gated_blocks, set_trainable
    from react_core.training.losses import contrastive_loss
    from react_core.training.optim import adamw
    from react_core.training.trainer import ImageTower

    torch.manual_seed(0)
    base_rss = _rss_mb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = open_clip.create_model(model_name, pretrained=None)
    add_gated_blocks(model, k)
    set_trainable(model, "gated-image")
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    ctx = model.context_length
    embed_dim = (
        model.text_projection.shape[1] if model.text_projection is not None else model.token_embedding.weight.shape[1]
    )
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    images = torch.randn(batch, 3, size, size, device=device)
    if variant.startswith("upstream"):
        model = model.to(device)
        model.set_grad_checkpointing(variant == "upstream")  # "upstream-no-ckpt": the same step without it
        model.eval()
        tokens = torch.randint(1, model.vocab_size - 1, (batch, ctx), device=device)
        opt = adamw(model.named_parameters(), 5e-4, 0.05)
        loss_fn = ClipLoss()

        def step() -> float:
            with amp:
                img = F.normalize(model.encode_image(images).float(), dim=-1)
                txt = F.normalize(model.encode_text(tokens).float(), dim=-1)  # the frozen tower, every step
            loss = loss_fn(img, txt, model.logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return float(loss.detach())
    else:
        tower = ImageTower(model.visual, model.logit_scale).to(device)
        del model  # the text tower is not needed: its features are computed once per dataset
        tower.visual.eval()
        if variant == "ours+ckpt":  # training.grad_checkpointing: the memory-lean setting
            tower.visual.set_grad_checkpointing(True)
        forward = torch.compile(tower) if variant == "ours+compile" else tower  # training.compile
        text = F.normalize(torch.randn(batch, embed_dim, device=device), dim=-1)
        opt = adamw(tower.named_parameters(), 5e-4, 0.05)

        def step() -> float:
            with amp:
                img, scale, _ = forward(images)
            loss = contrastive_loss(img, text, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return float(loss.detach())

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "variant": variant,
        "samples_per_s": batch * steps / wall,
        "s_per_step": wall / steps,
        "peak_mb": (torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else peak_rss - base_rss,
        "memory": "cuda max_memory_allocated" if device == "cuda" else "peak RSS above the pre-model footprint",
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--gated-layers", type=int, default=6)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--variant",
        choices=["ours", "ours+ckpt", "ours+compile", "upstream", "upstream-no-ckpt"],
        help=argparse.SUPPRESS,
    )
    a = p.parse_args()
    if a.variant:
        print(json.dumps(run_variant(a.variant, a.model, a.batch, a.steps, a.warmup, a.gated_layers, a.device)))
        return
    results = {}
    for variant in ("upstream", "ours", "ours+ckpt", "ours+compile"):
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--model",
            a.model,
            "--batch",
            str(a.batch),
            "--steps",
            str(a.steps),
            "--warmup",
            str(a.warmup),
            "--gated-layers",
            str(a.gated_layers),
            "--device",
            a.device,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    up, ours, lean, compiled = results["upstream"], results["ours"], results["ours+ckpt"], results["ours+compile"]
    print(f"{a.model}, batch {a.batch}, k={a.gated_layers}, {a.steps} timed steps after {a.warmup}, device {a.device}")
    print(f"{'variant':<12} {'samples/s':>10} {'s/step':>8} {'peak MB':>9}   ({up['memory']})")
    for r in (up, ours, lean, compiled):
        print(f"{r['variant']:<12} {r['samples_per_s']:>10.2f} {r['s_per_step']:>8.3f} {r['peak_mb']:>9.0f}")
    for r in (ours, lean, compiled):
        print(
            f"{r['variant']}/upstream: speed {r['samples_per_s'] / up['samples_per_s']:.2f}x (goal >= 2), "
            f"peak memory {r['peak_mb'] / up['peak_mb']:.2f}x (goal <= 0.6)"
        )


if __name__ == "__main__":
    main()
