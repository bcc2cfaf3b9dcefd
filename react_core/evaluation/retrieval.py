"""Zero-shot image-text retrieval (the paper's Table 4 and the COCO columns of its Table 7): recall@K both ways.

Every image and every caption of a caption set (:func:`react_core.data.datasets.read_karpathy`) is embedded;
*image -> text* R@K is the share of images with one of their own captions among the K captions most similar to
them, *text -> image* R@K the share of captions whose image is among the K images most similar to them (CLIP's
and open_clip's ``retrieval`` protocol). Similarities are computed a block at a time, so COCO's 5k x 25k
matrix is never held whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from react_core.data.datasets import EvalSet, image_features
from react_core.models.encode import embed_prompts

RETRIEVAL_METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")


def recall_at_k(
    image: torch.Tensor,
    text: torch.Tensor,
    caption_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    block: int = 1024,
) -> dict[str, float]:
    """R@K both ways from L2-normalised features: ``image`` (N, D), ``text`` (M, D), ``caption_image`` (M,) the
    image of each caption. A tie with a positive counts for the positive (its rank is the number of strictly
    more similar candidates)."""
    n, m = len(image), len(text)
    i2t_rank = torch.empty(n, dtype=torch.long)
    for lo in range(0, n, block):
        sims = image[lo : lo + block] @ text.T  # (b, M)
        own = caption_image[None, :] == torch.arange(lo, min(lo + block, n))[:, None]  # (b, M): own captions
        best = sims.masked_fill(~own, float("-inf")).max(dim=1).values  # the best own caption's similarity
        i2t_rank[lo : lo + block] = (sims > best[:, None]).sum(dim=1)
    t2i_rank = torch.empty(m, dtype=torch.long)
    for lo in range(0, m, block):
        sims = text[lo : lo + block] @ image.T  # (b, N)
        pos = sims.gather(1, caption_image[lo : lo + block, None])  # (b, 1)
        t2i_rank[lo : lo + block] = (sims > pos).sum(dim=1)
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = float((i2t_rank < k).float().mean())
        out[f"t2i_r{k}"] = float((t2i_rank < k).float().mean())
    return {name: out[name] for name in sorted(out, key=lambda s: (s[:3], int(s.split("_r")[1])))}


def image_text_retrieval(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    evalset: EvalSet,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[dict[str, float], int]:
    """R@1/5/10 both ways of ``model`` on a caption set; returns (metrics, number of captions)."""
    if evalset.captions is None:
        raise ValueError(f"{evalset.source} is not a caption set")
    feats, targets = image_features(model, evalset, batch_size, num_workers, progress)
    image = torch.empty_like(feats)
    image[targets.long()] = feats  # back to the set's image order (a loader may reorder)
    captions = [c for caps in evalset.captions for c in caps]
    caption_image = torch.tensor([i for i, caps in enumerate(evalset.captions) for _ in caps], dtype=torch.long)
    text = torch.from_numpy(np.ascontiguousarray(embed_prompts(model, tokenizer, captions)))
    return recall_at_k(image, text, caption_image), len(captions)
