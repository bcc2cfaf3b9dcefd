from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from react_core.config import ConfigError, ReactConfig
from react_core.config_loading import load_config, parse_overrides

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted((REPO / "deployments").glob("*.yaml"))


def test_defaults_are_valid_and_frozen():
    cfg = load_config()
    assert cfg.training.mode == "gated-image" and cfg.training.gated_layers == 6
    with pytest.raises(ValidationError):
        cfg.training.lr = 1.0  # frozen


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_shipped_preset_validates(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, ReactConfig)
    # every key in the file is a real field: the round trip keeps the values given
    given = yaml.safe_load(preset.read_text())
    dumped = cfg.model_dump(mode="json")
    for section, values in given.items():
        for key, value in values.items():
            if (section, key) == ("storage", "root") and "://" not in value:
                assert dumped[section][key] == str(Path(value).resolve())  # relative roots become absolute
            elif not isinstance(value, dict):
                assert dumped[section][key] == value


def test_unknown_key_names_the_field_and_suggests():
    with pytest.raises(ConfigError) as e:
        load_config({"training": {"learning_rate": 1e-3}})
    msg = str(e.value)
    assert "training.learning_rate" in msg and "valid keys" in msg and "fix:" in msg


def test_close_misspelling_gets_a_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        load_config({"training": {"epoch": 3}})


def test_wrong_type_names_field_value_and_fix():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["training.lr=fast"])
    line = str(e.value)
    assert "training.lr" in line and '"fast"' in line


def test_every_problem_is_listed_one_line_each():
    with pytest.raises(ConfigError) as e:
        load_config({"miniweb": {"kb_size": 0, "generic_size": -1}, "bogus": {}})
    lines = str(e.value).splitlines()
    assert len(lines) == 3
    assert any("miniweb.kb_size" in x for x in lines) and any("miniweb.generic_size" in x for x in lines)
    assert any("'bogus'" in x for x in lines)


def test_empty_storage_root_is_rejected():
    with pytest.raises(ConfigError, match="storage.root.*empty"):
        load_config(overrides=["storage.root=' '"])


def test_empty_retrieval_modes_rejected():
    with pytest.raises(ConfigError, match="retrieval.modes"):
        load_config({"retrieval": {"modes": []}})


def test_overrides_parse_yaml_values_and_nest():
    assert parse_overrides(["a.b=1", "a.c=[t2t]", "d=null"]) == {"a": {"b": 1, "c": ["t2t"]}, "d": None}
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_overrides(["nokey"])


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {lr: -1}\n")
    with pytest.raises(ConfigError, match=str(bad)):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad.write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_relative_storage_root_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(overrides=["storage.root=./here"]).storage.root == str(tmp_path / "here")
    assert load_config(overrides=["storage.root=s3://b/x"]).storage.root == "s3://b/x"


def _recipe(training):
    from react_core.stages import TRAIN

    return TRAIN.config_identity({"model": {"name": "m"}, "training": training})["training"]


def test_training_recipe_leaves_out_how_training_runs():
    from react_core.config import TrainingConfig

    a = TrainingConfig()
    b = TrainingConfig(num_workers=8, checkpoint_every=50, compile=True, distributed={"nproc_per_node": 4})
    assert _recipe(a) == _recipe(b)  # resuming with more processes continues the same train stage
    assert _recipe(TrainingConfig(lr=1e-3)) != _recipe(a)
    assert _recipe(TrainingConfig(augment={"enabled": False})) != _recipe(a)


def test_augment_crop_scale_is_checked():
    from react_core.config import ConfigError
    from react_core.config_loading import load_config

    with pytest.raises(ConfigError, match="crop_scale"):
        load_config(None, ["training.augment.crop_scale=[0.9, 0.1]"])


def _leaves(model: type, prefix: str = ""):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _leaves(field.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def test_every_config_leaf_has_a_description():
    """Descriptions are the Prefect form's help text and the fix in error messages."""
    missing = [path for path, field in _leaves(ReactConfig) if not (field.description or "").strip()]
    assert not missing, f"config fields without a description: {missing}"


def test_a_setting_that_did_nothing_is_refused_not_ignored():
    with pytest.raises(ConfigError, match=r"'model.precision' was removed: .*training.precision.*; fix: remove it"):
        load_config({"model": {"precision": "bf16"}})


def test_a_gate_scale_outside_zero_one_is_one_line_naming_the_field():
    for bad in ("1.5", "-0.1"):
        with pytest.raises(ConfigError) as e:
            load_config(overrides=[f"evaluation.gate_scale={bad}"])
        (line,) = str(e.value).splitlines()
        assert "evaluation.gate_scale" in line and bad in line
    assert load_config(overrides=["evaluation.gate_scale=0"]).evaluation.gate_scale == 0.0


def test_generic_probes_are_evaluated_datasets_and_default_to_the_miniweb_probe():
    assert load_config().evaluation.generic_tasks == ["miniweb-generic"]
    assert load_config(overrides=["evaluation.tasks=[miniweb-fine]"]).evaluation.generic_tasks == []
    cfg = load_config(overrides=["evaluation.tasks=[cifar-10, imagenet-1k]", "evaluation.generic=[imagenet-1k]"])
    assert cfg.evaluation.generic_tasks == ["imagenet-1k"]
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["evaluation.tasks=[cifar-10]", "evaluation.generic=[imagenet-1k]"])
    (line,) = str(e.value).splitlines()
    assert line.endswith(
        "evaluation.generic: 'imagenet-1k' is not in evaluation.tasks; fix: add it to evaluation.tasks or remove "
        "it from evaluation.generic"
    )


def test_forgetting_controls_are_checked_and_join_the_recipe_only_when_set():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["training.anchor=1"])
    (line,) = str(e.value).splitlines()
    assert "training.anchor=1 anchors the replayed images, but training.replay is 0; fix: set training.replay" in line
    for bad in ("1", "1.5", "-0.1"):
        with pytest.raises(ConfigError) as e:
            load_config(overrides=[f"training.replay={bad}"])
        assert "training.replay" in str(e.value) and len(str(e.value).splitlines()) == 1
    plain = _recipe(load_config().training)
    assert "replay" not in plain and "anchor" not in plain  # train stages made before them keep their version
    both = _recipe(load_config(overrides=["training.replay=0.25", "training.anchor=2"]).training)
    assert both["replay"] == 0.25 and both["anchor"] == 2.0


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["retrieval.tasks=[]"], "retrieval.tasks: an empty list; fix: list the target tasks"),
        (["retrieval.tasks=[miniweb-fine, miniweb-fine]"], "retrieval.tasks: 'miniweb-fine' is listed 2 times; fix"),
        (["retrieval.weights=[1, 2]"], "retrieval.weights: shares of retrieval.tasks, which is not set; fix"),
        (["retrieval.tasks=[miniweb-fine, miniweb-coarse]", "retrieval.weights=[1]"],
         "retrieval.weights: 1 value(s) for the 2 task(s) of retrieval.tasks; fix: one weight per task"),
        (["retrieval.tasks=[miniweb-fine, miniweb-coarse]", "retrieval.weights=[1, 0]"],
         "retrieval.weights: [1.0, 0.0] has a weight <= 0; fix: positive shares"),
    ],
)  # fmt: skip
def test_bad_task_lists_and_weights_are_one_line_naming_the_field_and_the_fix(overrides, expected):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    (line,) = str(e.value).splitlines()
    assert expected in line


def test_several_tasks_make_one_label_and_keep_single_task_identity():
    from react_core.stages import RETRIEVE

    one = load_config().retrieval
    identity = RETRIEVE.config_identity({"retrieval": one})
    assert one.target_tasks == ["miniweb-fine"] and "tasks" not in identity and "weights" not in identity
    two = load_config(overrides=["retrieval.tasks=[miniweb-fine, miniweb-coarse]"]).retrieval
    assert two.target_tasks == ["miniweb-fine", "miniweb-coarse"] and two.label == "miniweb-fine+miniweb-coarse"
    assert RETRIEVE.config_identity({"retrieval": two})["tasks"] == ["miniweb-fine", "miniweb-coarse"]


def test_subset_and_steps_join_the_recipe_only_when_set():
    assert not {"subset", "steps"} & set(_recipe(load_config().training))
    assert _recipe(load_config(overrides=["training.subset=0.5", "training.steps=100"]).training)["subset"] == 0.5
    for bad in ({"subset": 0}, {"subset": 1.5}, {"steps": 0}):
        with pytest.raises(ConfigError, match="training.s"):
            load_config(None, {"training": bad})


def test_a_training_subset_is_nested_and_never_touches_the_held_out_pairs():
    from react_core.data import held_out, training_subset

    keys = [f"{i:09d}" for i in range(4000)]
    out = held_out(keys, 0.1)
    quarter, half, whole = (training_subset(keys, s, 0.1) for s in (0.25, 0.5, 1.0))
    assert not (half & out).any() and (whole == ~out).all()
    assert (quarter <= half).all() and (half <= whole).all()  # a smaller share lies inside a larger one
    assert abs(half.sum() / whole.sum() - 0.5) < 0.05 and abs(quarter.sum() / whole.sum() - 0.25) < 0.05


def test_a_choice_s_candidates_are_trainings_checked_at_load_one_line_each():
    pick = ["training.holdout=0.1", "training.choose.budget=50"]
    both = "[{label: a}, {label: b, set: {training.replay: 0.25, training.anchor: 1.0}, gate_scale: 0.5}]"
    cfg = load_config(None, [*pick, f"training.choose.candidates={both}"])
    a, b = cfg.training.choose.candidates
    assert cfg.training.candidate(a).model_copy(update={"steps": None}) == cfg.training.model_copy(
        update={"choose": type(cfg.training.choose)()}
    )  # {}: the run's own training, with the budget as its steps
    assert cfg.training.candidate(a).steps == 50 and not cfg.training.candidate(a).choose.candidates
    assert (cfg.training.candidate(b).replay, cfg.training.candidate(b).anchor, b.gate_scale) == (0.25, 1.0, 0.5)
    assert cfg.training.replay == 0.0  # the run's own training is untouched
    bad = {
        "[{label: a}]": "training.choose picks a model by its accuracy on held-out retrieved pairs, but training.holdout",
        "[{label: a}, {label: a}]": "labels ['a'] are given twice",
        "[{label: a, set: {training.holdout: 0.3}}]": "candidate 'a': training.holdout is the same for every candidate",
        "[{label: a, set: {training.epoch: 3}}]": "candidate 'a': training.epoch is not a training field",
        "[{label: a, set: {training.mode: cache-head}, head: real-linear}]": "is a head on the base model already",
        "[{label: a, set: {training.mode: real-linear}, gate_scale: 0.5}]": "has no gated blocks for gate_scale=0.5",
        "[{label: a, set: {training.mode: real-prompt}}]": "every candidate is real-prompt, which retrieves nothing",
        "[{label: a, head: linear}]": "head",
        "[{label: a+b}]": "label",
        "[{label: a, set: {training.epochs: 0}}]": "candidate 'a': training.epochs: Input should be greater than or equal to 1 (got 0); fix:",
        "[{label: a, set: {training.anchor: 1}}]": "candidate 'a': training.anchor=1 anchors the replayed images",
        "[{label: a, gate_scale: 2}]": "less than or equal to 1",
    }
    for candidates, says in bad.items():
        holdout = [] if "but training.holdout" in says else ["training.holdout=0.1"]
        with pytest.raises(ConfigError) as err:
            load_config(None, [*holdout, f"training.choose.candidates={candidates}"])
        assert says in str(err.value) and "\n" not in str(err.value).strip(), str(err.value)
    # the target proxy reads held-out pairs of the searches named; one the retrieval does not run is refused
    with pytest.raises(ConfigError) as err:
        load_config(None, [*pick, "training.choose.candidates=[{label: a}]", "retrieval.modes=[t2i]"])
    assert "training.choose.label_modes=['t2t'] reads held-out pairs of searches that retrieval.modes" in str(err.value)
    assert "fix: training.choose.label_modes=['t2i']" in str(err.value)
    assert load_config(None, [*pick, "training.choose.candidates=[{label: a}]"]).training.choose.label_modes == ["t2t"]
