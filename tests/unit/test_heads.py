"""The cheap rivals' heads: the cache kernel, the linear head's fit and ensemble, by hand."""

import math

import pytest
import torch

from react_core.evaluation.heads import Head, cache_affinity, head_logits
from react_core.evaluation.zeroshot import LOGIT_SCALE
from react_core.training.heads import fit_linear


def test_the_cache_affinity_is_the_per_class_mean_of_the_kernel():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    f = torch.tensor([[1.0, 0.0]])
    got = cache_affinity(f, keys, labels, classes=3, beta=2.0)
    k = lambda cos: math.exp(-2.0 * (1 - cos))
    assert got[0].tolist() == pytest.approx([(k(1) + k(0)) / 2, k(1), 0.0])  # class 2 has no keys


def test_head_logits_blend_zero_shot_with_the_head():
    f = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0]]), dim=-1)
    clf = torch.eye(2)
    zs = LOGIT_SCALE * f @ clf
    w = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # swaps the classes
    linear = Head(kind="linear", task="t", classnames=["a", "b"], weight=w, mix=0.25)
    got = head_logits(linear, None, None, ["{}"], f, clf)
    assert torch.allclose(got, 0.75 * zs + 0.25 * LOGIT_SCALE * f @ w)
    cache = Head(kind="cache", task="t", classnames=["a", "b"], keys=f, labels=torch.tensor([1, 0]), alpha=0.5, beta=1)
    expect = zs + 0.5 * LOGIT_SCALE * cache_affinity(f, f, torch.tensor([1, 0]), 2, 1.0)
    assert torch.allclose(head_logits(cache, None, None, ["{}"], f, clf), expect)


def test_the_linear_head_learns_from_the_text_init_and_balances_the_classes():
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    labels = torch.tensor([0] * 90 + [1] * 5 + [2] * 5)  # class 0 dominates the retrieved set
    feats = torch.nn.functional.normalize(centres[labels] + 0.3 * torch.randn(100, 8, generator=g), dim=-1)
    init = torch.nn.functional.normalize(torch.randn(8, 3, generator=g), dim=0)  # a poor text classifier
    w = fit_linear(feats, labels, init, steps=200, lr=1e-2, seed=0)
    acc = lambda m: float(((feats @ m).argmax(1) == labels).float().mean())
    per_class = [float(((feats @ w).argmax(1) == labels)[labels == c].float().mean()) for c in range(3)]
    assert acc(w) > acc(init) and min(per_class) >= 0.8  # the small classes are learnt too
    assert torch.equal(w, fit_linear(feats, labels, init, steps=200, lr=1e-2, seed=0))  # deterministic


def test_the_blend_is_chosen_on_held_out_pairs():
    from react_core.training.heads import choose_blend

    f = torch.eye(3)
    labels = torch.tensor([0, 1, 2])
    wrong = torch.roll(torch.eye(3), 1, dims=1)  # scores every pair as the next class
    good_head = Head(kind="linear", task="t", classnames=["a", "b", "c"], weight=torch.eye(3), mix=0.5)
    chosen = choose_blend(good_head, f, labels, wrong)  # zero-shot is wrong, the head right: the head wins
    assert chosen["mix"] == good_head.mix == 0.75 and chosen["holdout_accuracy"] == 1.0  # the first that is right
    bad_head = Head(kind="linear", task="t", classnames=["a", "b", "c"], weight=wrong, mix=0.5)
    assert choose_blend(bad_head, f, labels, torch.eye(3))["mix"] == 0.0  # and the other way round
    cache = Head(kind="cache", task="t", classnames=["a", "b", "c"], keys=f, labels=labels)
    got = choose_blend(cache, f, labels, wrong)
    assert got["holdout_accuracy"] == 1.0 and (cache.alpha, cache.beta) == (got["alpha"], got["beta"])
