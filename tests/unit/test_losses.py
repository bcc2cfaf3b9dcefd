import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from react_core.training.losses import contrastive_loss
from react_core.training.trainer import RankBatches


def _feats(b=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g), dim=-1), F.normalize(torch.randn(b, d, generator=g), dim=-1)


def test_clip_loss_equals_open_clips():
    img, txt = _feats()
    scale = torch.tensor(10.0)
    assert torch.allclose(contrastive_loss(img, txt, scale), ClipLoss()(img, txt, scale), atol=1e-6)


def test_unicl_with_distinct_classes_is_the_clip_loss():
    img, txt = _feats()
    scale = torch.tensor(7.0)
    distinct = torch.arange(6)
    no_class = torch.full((6,), -1)  # pairs without a class: each its own positive
    clip = contrastive_loss(img, txt, scale)
    assert torch.allclose(contrastive_loss(img, txt, scale, distinct, "unicl"), clip, atol=1e-6)
    assert torch.allclose(contrastive_loss(img, txt, scale, no_class, "unicl"), clip, atol=1e-6)


def test_unicl_by_hand_two_pairs_of_one_class():
    # Two pairs of class 0 and orthogonal features: each row has logits [s, 0] or [0, s] against the batch,
    # and both columns are positives, so the target is [1/2, 1/2] for every row and direction.
    img = torch.eye(2)
    txt = torch.eye(2)
    s = 3.0
    loss = contrastive_loss(img, txt, torch.tensor(s), torch.tensor([0, 0]), "unicl")
    log_p_own, log_p_other = s - math.log(math.exp(s) + 1), -math.log(math.exp(s) + 1)
    assert loss.item() == pytest.approx(-(log_p_own + log_p_other) / 2, abs=1e-6)
    # and with different classes only the own caption counts
    loss2 = contrastive_loss(img, txt, torch.tensor(s), torch.tensor([0, 1]), "unicl")
    assert loss2.item() == pytest.approx(-log_p_own, abs=1e-6)


def test_unicl_needs_class_ids():
    img, txt = _feats()
    with pytest.raises(ValueError, match="class ids"):
        contrastive_loss(img, txt, torch.tensor(1.0), None, "unicl")


def test_two_ranks_split_every_global_batch_of_one_rank_and_resume_continues_it():
    one = list(RankBatches(n=50, global_batch=8, epochs=3, seed=1, rank=0, world=1, start_step=0))
    r0 = list(RankBatches(50, 8, 3, 1, rank=0, world=2, start_step=0))
    r1 = list(RankBatches(50, 8, 3, 1, rank=1, world=2, start_step=0))
    assert len(one) == 6 * 3 == len(r0) == len(r1)
    assert all(a + b == full for a, b, full in zip(r0, r1, one, strict=True))
    assert [b[0][0] for b in one] == [0] * 6 + [1] * 6 + [2] * 6  # epochs
    assert [i for b in one[:6] for _, i in b] != [i for b in one[6:12] for _, i in b]  # a new order per epoch
    resumed = list(RankBatches(50, 8, 3, 1, rank=0, world=1, start_step=7))
    assert resumed == one[7:]
