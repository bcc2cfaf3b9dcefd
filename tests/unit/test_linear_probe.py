"""Few-shot linear probe: the split, the text initialisation, and that shots fix what zero-shot gets wrong."""

import numpy as np
import torch
import torch.nn.functional as F

from react_core.evaluation.linear_probe import ProbeSettings, linear_probe, probe_scores, split_shots
from react_core.evaluation.metrics import accuracy


def clustered(n_per_class: int, centers: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(centers)).repeat_interleave(n_per_class)
    feats = centers[labels] + 0.15 * torch.randn(len(labels), centers.shape[1], generator=g)
    return F.normalize(feats, dim=-1), labels


def test_split_draws_k_shots_and_a_disjoint_validation_part_per_class():
    labels = torch.arange(4).repeat_interleave(10)
    shots, val = split_shots(labels, 4, k=5, val_per_class=3, seed=0)
    assert len(shots) == 20 and len(val) == 12 and not set(shots) & set(val)
    assert np.bincount(labels[shots].numpy()).tolist() == [5] * 4
    assert split_shots(labels, 4, k=8, val_per_class=3, seed=0) is None  # 10 < 8 + 3
    again, _ = split_shots(labels, 4, k=5, val_per_class=3, seed=0)
    other, _ = split_shots(labels, 4, k=5, val_per_class=3, seed=1)
    assert again.tolist() == shots.tolist() and other.tolist() != shots.tolist()


def test_head_starts_at_zero_shot_and_shots_repair_a_wrong_text_classifier():
    torch.manual_seed(0)
    centers = F.normalize(torch.randn(4, 16), dim=-1)
    train, test = clustered(30, centers, 1), clustered(50, centers, 2)
    init = centers.T.clone()
    init[:, [2, 3]] = init[:, [3, 2]]  # the text classifier confuses classes 2 and 3
    zero = accuracy(test[1].numpy(), probe_scores(test[0], (init.T, torch.zeros(4)), False))
    assert 0.4 < zero < 0.6
    res = linear_probe(train, test, init, "accuracy", ProbeSettings(shots=(5, 50), seeds=(0, 1, 2), steps=100))
    assert res["5"]["mean"] > zero + 0.3 and len(res["5"]["runs"]) == 3
    assert res["5"]["std"] >= 0 and {r["lr"] for r in res["5"]["runs"]} <= {1e-3, 1e-2, 1e-1}
    assert "skipped" in res["50"]  # 30 per class < 50 + 4


def test_multilabel_probe_scores_with_sigmoid_and_map():
    torch.manual_seed(0)
    centers = F.normalize(torch.randn(3, 16), dim=-1)
    feats, labels = clustered(20, centers, 3)
    targets = F.one_hot(labels, 3).float()
    res = linear_probe((feats, targets), (feats, targets), centers.T.clone(), "map_11point",
                       ProbeSettings(shots=(5,), seeds=(0,), steps=50))  # fmt: skip
    assert 0.9 < res["5"]["mean"] <= 1.0
