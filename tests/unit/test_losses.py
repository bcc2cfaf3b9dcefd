import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from react_core.training.losses import contrastive_loss
from react_core.training.trainer import RankBatches, anchor_penalty


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


def test_replay_is_an_exact_share_of_every_batch_and_each_pass_replays_the_pool_once():
    n, n_replay, epochs = 50, 21, 3
    one = list(RankBatches(n, 8, epochs, seed=1, rank=0, world=1, start_step=0, n_replay=n_replay, replay_per_rank=2))
    assert len(one) == (n // 6) * epochs  # an epoch is a pass over the retrieved pairs: 6 of them per batch
    assert all(sum(i >= n for _, i in b) == 2 and len(b) == 8 for b in one)
    retrieved_first = [i for b in one[: n // 6] for _, i in b if i < n]
    assert len(set(retrieved_first)) == len(retrieved_first) == (n // 6) * 6  # no pair twice in an epoch
    stream = [i - n for b in one for _, i in b if i >= n]
    for k in range(len(stream) // n_replay):  # every full pass over the pool replays each pair once
        assert sorted(stream[k * n_replay : (k + 1) * n_replay]) == list(range(n_replay))
    r0 = list(RankBatches(n, 8, epochs, 1, rank=0, world=2, start_step=0, n_replay=n_replay, replay_per_rank=1))
    r1 = list(RankBatches(n, 8, epochs, 1, rank=1, world=2, start_step=0, n_replay=n_replay, replay_per_rank=1))
    both = [sorted(a + b) for a, b in zip(r0, r1, strict=True)]
    assert both == [sorted(b) for b in one]  # two ranks split the global batches of one, replay included
    resumed = list(RankBatches(n, 8, epochs, 1, rank=0, world=1, start_step=5, n_replay=n_replay, replay_per_rank=2))
    assert resumed == one[5:]


def test_anchor_penalty_is_the_mean_squared_feature_distance_on_replayed_rows():
    torch.manual_seed(0)
    reference = torch.nn.Linear(4, 3, bias=False)
    x = torch.randn(5, 4)
    feats = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1).requires_grad_(True)
    replayed = torch.tensor([True, False, True, False, False])
    ref = torch.nn.functional.normalize(reference(x), dim=-1).detach()
    want = ((feats[0] - ref[0]).pow(2).sum() + (feats[2] - ref[2]).pow(2).sum()) / 2
    got = anchor_penalty(reference, x, feats, replayed, "cpu", torch.bfloat16, False)
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    got.backward()
    assert feats.grad[[1, 3, 4]].abs().sum() == 0 and feats.grad[[0, 2]].abs().sum() > 0
    same = anchor_penalty(reference, x, ref.clone().requires_grad_(True), replayed, "cpu", torch.bfloat16, False)
    assert same.item() == pytest.approx(0.0, abs=1e-12)
    nothing = anchor_penalty(reference, x, feats, torch.zeros(5, dtype=torch.bool), "cpu", torch.bfloat16, False)
    assert nothing.item() == 0.0 and nothing.requires_grad
