"""Zero-shot image-text retrieval (the paper's Table 4 and the COCO columns of its Table 7): recall@K both ways.

Every image and every caption of a caption set (:func:`react_core.data.datasets.read_karpathy`) is embedded;
*image -> text* R@K is the share of images with one of their own captions among the K captions most similar to
them, *text -> image* R@K the share of captions whose image is among the K images most similar to them, ties in
index order (CLIP_benchmark's protocol, which published CLIP numbers use). Similarities are computed a block at a time, so COCO's 5k x 25k
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
    block: int = 256,
) -> dict[str, float]:
    """R@K both ways from L2-normalised features: ``image`` (N, D), ``text`` (M, D), ``caption_image`` (M,) the
    image of each caption.

    The protocol of published CLIP numbers (CLIP_benchmark's ``zeroshot_retrieval``): per query, the K most
    similar candidates with ties broken in index order (a stable sort), and a hit when one of them is a positive.
    Ties matter on caption sets whose captions repeat across images (the same words embed the same): a repeated
    caption of an earlier image is listed before the query's own, as a top-k would list it."""
    n, m = len(image), len(text)
    kmax = min(max(ks), m)
    i2t_rank = torch.empty(n, dtype=torch.long)  # the position of the first own caption in the stable order
    for lo in range(0, n, block):
        sims = image[lo : lo + block] @ text.T  # (b, M)
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :kmax]  # (b, kmax)
        own = caption_image[order] == torch.arange(lo, min(lo + block, n))[:, None]  # (b, kmax)
        first = torch.where(own.any(dim=1), own.float().argmax(dim=1), torch.full((len(own),), m))
        i2t_rank[lo : lo + block] = first
    t2i_rank = torch.empty(m, dtype=torch.long)  # one positive: its rank, ties before it counted when earlier
    index = torch.arange(n)
    for lo in range(0, m, block):
        sims = text[lo : lo + block] @ image.T  # (b, N)
        own = caption_image[lo : lo + block, None]  # (b, 1)
        pos = sims.gather(1, own)
        t2i_rank[lo : lo + block] = ((sims > pos) | ((sims == pos) & (index[None, :] < own))).sum(dim=1)
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
