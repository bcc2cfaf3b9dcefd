"""ELEVATER's metrics against values worked out by hand."""

import numpy as np
import pytest

from react_core.evaluation.metrics import (
    accuracy,
    average_precision_n_points,
    compute,
    map_11point,
    mean_per_class,
    roc_auc,
    top5,
)


def onehot_scores(pred, n_classes):
    s = np.full((len(pred), n_classes), 0.01)
    s[np.arange(len(pred)), pred] = 0.9
    return s


def test_accuracy_and_mean_per_class():
    y = np.array([0, 0, 0, 1])
    s = onehot_scores([0, 0, 1, 1], 2)
    assert accuracy(y, s) == pytest.approx(0.75)
    # class 0: 2 of 3 right, class 1: 1 of 1 -> (2/3 + 1) / 2
    assert mean_per_class(y, s) == pytest.approx((2 / 3 + 1) / 2)


def test_top5_counts_the_label_among_the_five_best():
    s = np.array([[7, 6, 5, 4, 3, 2, 1.0]] * 3)  # class 0 best ... class 6 worst
    y = np.array([4, 5, 0])  # 5th best: in; 6th best: out; best: in
    assert top5(y, s) == pytest.approx(2 / 3)
    assert top5(np.array([2]), np.array([[0.1, 0.2, 0.7]])) == 1.0  # fewer than 5 classes


def test_roc_auc_binary_uses_the_positive_score():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    # positive-negative pairs ranked right: (0.35>0.1), (0.8>0.1), (0.8>0.4); wrong: (0.35<0.4) -> 3/4
    assert roc_auc(y, np.stack([1 - p1, p1], axis=1)) == pytest.approx(0.75)


def test_11_point_ap_of_one_class_by_hand():
    # ranking P N P N N: precision 1 up to recall 0.5, then 2/3 at recall 1
    # -> 6 recall levels (0 .. 0.5) at precision 1, 5 levels (0.6 .. 1.0) at 2/3
    ap = average_precision_n_points(np.array([1, 0, 1, 0, 0]), np.array([0.9, 0.8, 0.7, 0.6, 0.5]))
    assert ap == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_11_point_map_averages_classes():
    t = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [0, 1]])
    s = np.array([[0.9, 0.1], [0.8, 0.9], [0.7, 0.2], [0.6, 0.8], [0.5, 0.3]])
    # class 0 as above; class 1 ranks its 3 positives first -> AP 1
    assert map_11point(t, s) == pytest.approx(((6 + 5 * 2 / 3) / 11 + 1) / 2)
    with pytest.raises(ValueError, match="multi-label"):
        map_11point(np.array([0, 1, 0, 1, 1]), s)


def test_compute_names_unknown_metrics_and_bad_shapes():
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        compute("f1", [0], [[1.0]])
    with pytest.raises(ValueError, match="len\\(targets\\) = 2"):
        compute("accuracy", [0, 1], [[1.0, 0.0]])
