"""Ablation grids: expansion into cells, one-line errors for bad grids, and the tables from per-seed results."""

import pytest
import yaml

from react_core.ablation import GridError, load_grid
from react_core.ablation_report import markdown, summarise
from react_core.config_loading import load_config

PRESET = load_config(None, {"training": {"epochs": 5}})


def _write(tmp_path, doc) -> str:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_a_grid_expands_into_the_reference_and_one_cell_per_new_value(tmp_path):
    doc = {
        "seeds": [0, 1],
        "base": {"training.lr": 0.002},
        "axes": {
            "k": {"field": "training.gated_layers", "values": [1, 6]},  # 6 is the default: the reference
            "size": {"field": "training.subset", "values": [0.5, 1.0], "with": {"training.steps": 40}},
            "filter": {"values": [{"label": "none"}, {"retrieval.pair_score_top": 0.5}]},
            "control": {"values": [{"retrieval.random_control": True}]},
        },
    }
    grid = load_grid(_write(tmp_path, doc), PRESET)
    ids = [c.id for c in grid.cells]
    assert ids == [
        "reference",
        "k=1",
        "size=0.5",
        "size=1.0",
        "filter=pair_score_top-0.5",
        "control=random_control-true",
    ]
    assert grid.axes["k"] == ["k=1", "reference"] and grid.axes["filter"] == ["reference", "filter=pair_score_top-0.5"]
    assert grid.labels["k"] == ["1", "6"] and grid.labels["filter"] == ["none", "pair_score_top=0.5"]
    ref = grid.cell("reference").config
    assert ref.training.lr == 0.002 and ref.training.epochs == 5 and ref.training.gated_layers == 6  # base on preset
    half = grid.cell("size=0.5").config.training
    assert (half.subset, half.steps, half.lr) == (0.5, 40, 0.002)  # the axis's `with` and the base
    assert grid.cell("size=1.0").config.training.steps == 40  # fixed steps: not the reference
    assert grid.cell("control=random_control-true").config.retrieval.random_control
    assert grid.seeds == [0, 1] and grid.fields == {"k": "training.gated_layers", "size": "training.subset",
                                                    "filter": "several", "control": "several"}  # fmt: skip


@pytest.mark.parametrize(
    ("axes", "expected"),
    [
        ({"t": {"field": "training.modes", "values": ["full"]}},
         "axis 't': training.modes is not a config field (did you mean training.mode?); fix: name a field"),
        ({"k": {"field": "training.gated_layers", "values": ["two"]}},
         "axis 'k', value 'two': training.gated_layers: Input should be a valid integer"),
        ({"k": {"field": "training.gated_layers", "values": []}}, "axis 'k' has no values; fix: list at least one"),
        ({"size": {"field": "training.subset", "values": [1.5]}},
         "axis 'size', value '1.5': training.subset: Input should be less than or equal to 1"),
        ({"size": {"field": "training.subset", "values": [0]}},
         "axis 'size', value '0': training.subset: Input should be greater than 0"),
        ({"top": {"field": "retrieval.pair_score_top", "values": [2]}},
         "axis 'top', value '2': retrieval.pair_score_top: Input should be less than or equal to 1"),
        ({"m": {"field": "model.name", "values": ["ViT-B-32"]}},
         "axis 'm': model.name changes what every cell shares"),
        ({"t": {"field": "training.mode", "values": ["full", "full"]}},
         "axis 't': values 'full' and 'full' give the same recipe; fix: list each variant once"),
        ({"t": {"values": [{"label": "a"}, {"label": "b", "training.mode": "gated-image"}]}},
         "axis 't': values 'a' and 'b' give the same recipe; fix: list each variant once"),
        ({"t": {"values": ["full"]}}, "axis 't': value 'full' without a field; fix: add field:"),
        ({"t": {"field": "training.mode", "value": ["full"]}}, "axis 't': 'value' is not an axis key; fix: use"),
    ],
)  # fmt: skip
def test_a_bad_grid_is_one_line_naming_the_file_the_axis_and_the_fix(tmp_path, axes, expected):
    path = _write(tmp_path, {"seeds": [0], "axes": axes})
    with pytest.raises(GridError) as e:
        load_grid(path, PRESET)
    lines = str(e.value).splitlines()
    assert any(line.startswith(f"{path}: ") and expected in line for line in lines), lines
    assert all("fix:" in line for line in lines), lines


def test_grid_level_problems_are_named_too(tmp_path):
    path = _write(tmp_path, {"seed": [0], "seeds": "0", "base": {"training.lr": -1}})
    with pytest.raises(GridError) as e:
        load_grid(path, PRESET)
    text = str(e.value)
    assert "'seed' is not a grid key (did you mean 'seeds'?)" in text
    assert "seeds is '0'; fix: a non-empty list of integers" in text
    assert "base: training.lr: Input should be greater than 0" in text
    assert "no axes; fix: add axes" in text
    with pytest.raises(GridError, match="no such grid file; fix: pass a grid YAML"):
        load_grid(tmp_path / "missing.yaml", PRESET)


def test_the_tables_are_means_and_spreads_over_seeds_with_the_change_from_the_base(tmp_path):
    grid = load_grid({"seeds": [0, 1], "axes": {"k": {"field": "training.gated_layers", "values": [1]}}}, PRESET)

    def seed(fine, generic):
        return {"metrics": {"fine": fine, "generic": generic}, "pairs": 100, "retrieved": 100, "steps": 10,
                "trainable_params": 1234, "train_s": 3.0, "data_bytes": 2_000_000}  # fmt: skip

    results = {"reference": {0: seed(0.6, 0.5), 1: seed(0.8, 0.3)}, "k=1": {0: seed(0.5, 0.4), 1: seed(0.5, 0.4)}}
    summary = summarise(grid, results, {"fine": 0.2, "generic": 0.45})
    ref = next(c for c in summary["cells"] if c["id"] == "reference")
    assert ref["mean"]["fine"] == pytest.approx(0.7) and ref["sd"]["fine"] == pytest.approx(0.1414, abs=1e-4)
    assert ref["delta"]["generic"] == pytest.approx(-0.05) and ref["cost"]["data_bytes"] == 2_000_000
    text = markdown(summary, {"fine": "target", "generic": "generic"})
    assert "| reference | 0.700 ± 0.141 (+0.500) | 0.400 ± 0.141 (-0.050) | 100 | 1,234 | 3 | 2.0 |" in text
    assert "## k (`training.gated_layers`)" in text and "| 1 | 0.500 ± 0.000 (+0.300) |" in text
    grid = load_grid({"seeds": [0, 1], "axes": {"k": {"field": "training.gated_layers", "values": [1, 6]}}}, PRESET)
    text = markdown(summarise(grid, results, {"fine": 0.2, "generic": 0.45}), {"fine": "target"})
    assert "| 6 (= reference) | 0.700 ± 0.141 (+0.500) |" in text  # the axis's own label for a shared cell
    assert "| base model | 0.200 | 0.450 |" in text
