"""The evaluation report: rows, the base-vs-customized table with ELEVATER's average, the delta plot."""

import pytest

from react_core.evaluation.report import (
    comparison,
    delta_figure,
    figure_png,
    gate_scale_note,
    markdown_table,
    report_rows,
)
from react_core.evaluation.suite import metrics_for


def result(dataset, metric, value, probe=None):
    r = {"dataset": dataset, "n": 10, "metric": metric, "zero_shot": {metric: value}}
    if probe is not None:
        r["linear_probe"] = {"5": {"mean": probe, "std": 0.01, "runs": [{}] * 3}, "50": {"skipped": "too few"}}
    return r


def test_each_dataset_reports_elevaters_metric():
    assert metrics_for("caltech-101") == ["mean_per_class"]
    assert metrics_for("hateful-memes") == ["roc_auc"]
    assert metrics_for("voc-2007-classification") == ["map_11point"]
    assert metrics_for("cifar-10") == ["accuracy"]
    assert metrics_for("imagenet-1k") == ["accuracy", "top5"]


def test_table_has_deltas_and_the_elevater_average_of_headline_metrics():
    results = {
        "base": [result("cifar-10", "accuracy", 0.80, probe=0.85), result("caltech-101", "mean_per_class", 0.60),
                 result("miniweb-fine", "accuracy", 0.30)],
        "customized": [result("cifar-10", "accuracy", 0.90, probe=0.95),
                       result("caltech-101", "mean_per_class", 0.50), result("miniweb-fine", "accuracy", 0.90)],
    }  # fmt: skip
    rows = report_rows(results, {"base": "b.pt", "customized": "c.pt"})
    assert len(rows) == 8  # 3 zero-shot + 1 probe row per model
    probe = next(r for r in rows if r["protocol"] == "linear-probe-5-shot" and r["model"] == "customized")
    assert probe["value"] == 0.95 and probe["std"] == 0.01 and probe["checkpoint"] == "c.pt"
    table = comparison(rows)
    by = {(r["dataset"], r["protocol"]): r for r in table}
    assert by[("cifar-10", "zero-shot")]["delta"] == pytest.approx(0.10)
    avg = by[("ELEVATER average (2/20)", "zero-shot")]
    assert avg["base"] == pytest.approx(0.70) and avg["customized"] == pytest.approx(0.70)
    assert by[("ELEVATER average (1/20)", "linear-probe-5-shot")]["delta"] == pytest.approx(0.10)
    md = markdown_table(table)
    assert "| miniweb-fine | zero-shot | accuracy | 0.3000 | 0.9000 | +0.6000 |" in md
    png = figure_png(delta_figure(table))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_scaled_model_is_named_under_the_table():
    plain = {"base": [result("miniweb-fine", "accuracy", 0.3)], "customized": [result("miniweb-fine", "accuracy", 0.9)]}
    assert gate_scale_note(plain) == ""
    scaled = {**plain, "customized": [{**result("miniweb-fine", "accuracy", 0.87), "gate_scale": 0.7}]}
    assert gate_scale_note(scaled).strip() == "customized: gate scale (lambda) 0.7 (1 = as trained, 0 = the base model)"
