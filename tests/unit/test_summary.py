"""What a person reads after a run (react_core.summary): the gain and its price, the table in a log."""

from react_core.summary import price_line, table_text

ROWS = [
    {"dataset": "miniweb-fine", "role": "target", "metric": "accuracy", "base": 0.309, "customized": 0.859, "delta": 0.55},
    {"dataset": "miniweb-generic", "role": "generic", "metric": "accuracy", "base": 0.984, "customized": 0.981,
     "delta": -0.003},
]  # fmt: skip


def test_the_table_in_a_log_is_aligned_and_signs_the_change():
    lines = table_text(ROWS).splitlines()
    assert lines[0].split() == ["dataset", "role", "metric", "base", "customized", "delta"]
    assert lines[1].split() == ["miniweb-fine", "target", "accuracy", "0.3090", "0.8590", "+0.5500"]
    assert lines[2].split()[-1] == "-0.0030"
    assert len({line.index("accuracy") for line in lines[1:]}) == 1  # one column, whatever the names' lengths


def test_a_base_only_evaluation_has_no_customized_column_and_no_price():
    base = [{**r, "customized": None, "delta": None} for r in ROWS]
    assert table_text(base).splitlines()[0].split() == ["dataset", "role", "metric", "base"]
    assert price_line(base) == ""
    assert price_line(ROWS) == "target miniweb-fine +0.550; generic miniweb-generic -0.003"
