"""Contrastive losses for customization, correct across processes.

Both losses take this process's image features (with grad), caption features (constants: the text
tower is frozen) and class ids, gather the other processes' with ``torch.distributed.nn.all_gather``
(which carries gradients back to their owners), and compute the loss of the *local* rows against the
*global* batch (open_clip's ``local_loss``). With DDP averaging gradients over the W processes, the
update equals the one of a single process on the whole global batch:
``(1/W) * sum_r sum_q d loss_q / d f_r = d L / d theta`` with ``L = (1/W) * sum_q loss_q``.

* ``clip``: CLIP's symmetric InfoNCE, one positive per row (the image's own caption).
* ``unicl``: the paper's eq. 4 (UniCL): every pair retrieved for the same class is a positive, each
  row's target spread evenly over its positives. With all class ids distinct it equals ``clip``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _gather(x: torch.Tensor, with_grad: bool) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if with_grad:
        import torch.distributed.nn.functional as dist_nn

        return torch.cat(dist_nn.all_gather(x), dim=0)
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def _offset() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def contrastive_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    labels: torch.Tensor | None = None,
    kind: str = "clip",
) -> torch.Tensor:
    """Loss of this process's rows against the gathered global batch.

    Args:
        image: (b, D) L2-normalised image features of this process (requires grad).
        text: (b, D) L2-normalised caption features of the same pairs.
        logit_scale: the exponentiated scale (a scalar tensor that may require grad).
        labels: (b,) int64 class ids (``unicl``); negative ids mean "no class": a positive of itself only.
        kind: ``clip`` or ``unicl``.
    """
    b = image.shape[0]
    all_image = _gather(image, with_grad=True)
    all_text = _gather(text, with_grad=False)
    logits_i2t = logit_scale * image @ all_text.T  # (b, B)
    logits_t2i = logit_scale * text @ all_image.T  # (b, B)
    start = _offset() * b
    if kind == "clip":
        target = torch.arange(start, start + b, device=image.device)
        return (F.cross_entropy(logits_i2t, target) + F.cross_entropy(logits_t2i, target)) / 2
    if kind != "unicl":
        raise ValueError(f"unknown loss {kind!r}; fix: clip or unicl")
    if labels is None:
        raise ValueError("the unicl loss needs class ids (the manifest's class_id)")
    all_labels = _gather(labels, with_grad=False)
    positions = torch.arange(all_labels.shape[0], device=labels.device)
    # A pair without a class (id < 0) gets an id no other pair has: its own caption is its only positive.
    all_labels = torch.where(all_labels >= 0, all_labels, -1 - positions)
    local = all_labels[start : start + b]
    pos = (local[:, None] == all_labels[None, :]).float()  # (b, B)
    target = pos / pos.sum(dim=1, keepdim=True)
    loss_i2t = -(target * F.log_softmax(logits_i2t, dim=1)).sum(dim=1).mean()
    loss_t2i = -(target * F.log_softmax(logits_t2i, dim=1)).sum(dim=1).mean()
    return (loss_i2t + loss_t2i) / 2
