"""The stage declarations (react_core.stages): every config field is in a stage's identity or said not to be, a
field added to the config changes no version until it is listed, and ARCHITECTURE.md's table is theirs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from react_core import stages
from react_core.config import ReactConfig, TrainingConfig, field_paths
from react_core.config_loading import load_config
from react_core.storage import Storage

ARCHITECTURE = Path(__file__).resolve().parents[2] / "ARCHITECTURE.md"


def test_every_config_field_is_in_a_stage_identity_or_says_why_not():
    listed = {f for s in stages.STAGES for f in s.fields()}
    missing = [p for p in field_paths() if p not in listed and stages.not_identity(p) is None]
    assert not missing, (
        f"{missing}: in no stage's identity and not in react_core.stages.NOT_IDENTITY; fix: add each to the "
        "identity of the stage whose result it changes (with unset=(its default,) so finished stages keep their "
        "versions), or to NOT_IDENTITY with the reason it changes no result"
    )
    both = [p for p in listed if stages.not_identity(p) is not None]
    assert not both, f"{both}: in a stage's identity and in NOT_IDENTITY"


def test_every_declared_field_exists():
    leaves = set(field_paths())
    wrong = [f"{s.name}: {f}" for s in stages.STAGES for f in s.fields() if f not in leaves]
    assert not wrong
    not_fields = [k for k in stages.NOT_IDENTITY if not any(p == k or p.startswith(k[:-1]) for p in leaves)]
    assert not not_fields


def _with_new_field(spec: stages.StageSpec, cfg: ReactConfig) -> dict[str, Any]:
    """The sections ``spec`` reads, each with a field the config does not have (yet)."""
    sections = {f.split(".")[0] for f in spec.fields()}
    return {s: {**getattr(cfg, s).model_dump(mode="json"), "added_later": 1} for s in sections}


@pytest.mark.parametrize("spec", [s for s in stages.STAGES if s.identity], ids=lambda s: s.name)
def test_a_field_added_to_the_config_changes_no_version_until_it_is_listed(spec, tmp_path):
    cfg = load_config()
    st = Storage(str(tmp_path))
    derived = dict.fromkeys(spec.derived, "d")
    plain = {s: getattr(cfg, s) for s in {f.split(".")[0] for f in spec.fields()}}
    before = spec.stage(st, plain, derived=derived).version
    assert spec.stage(st, _with_new_field(spec, cfg), derived=derived).version == before
    section = spec.fields()[0].split(".")[0]
    listed = stages.StageSpec(spec.name, (*spec.identity, stages.Key(f"{section}.added_later", "added_later")),
                              derived=spec.derived)  # fmt: skip
    assert listed.stage(st, _with_new_field(spec, cfg), derived=derived).version != before


def test_operational_training_fields_keep_the_train_stage():
    st = Storage("/x")
    a = stages.TRAIN.stage(st, {"model": {"name": "m"}, "training": TrainingConfig()}).version
    busy = TrainingConfig(num_workers=8, checkpoint_every=50, compile=True, distributed={"nproc_per_node": 4})
    assert stages.TRAIN.stage(st, {"model": {"name": "m"}, "training": busy}).version == a
    assert stages.TRAIN.stage(st, {"model": {"name": "m"}, "training": TrainingConfig(lr=1e-3)}).version != a


def test_a_stage_refuses_inputs_and_derived_values_it_does_not_declare(tmp_path):
    st = Storage(str(tmp_path))
    with pytest.raises(TypeError, match="download"):
        stages.INDEX.stage(st, {"index": load_config().index, "retrieval": {"k": 1}}, {"download": "x"})
    with pytest.raises(TypeError, match="pairs"):
        stages.INDEX.stage(st, {"index": load_config().index, "retrieval": {"k": 1}}, derived={"pairs": 3})


def test_the_architecture_stage_table_is_generated_from_the_declarations():
    text = ARCHITECTURE.read_text()
    assert stages.with_table(text) == text, (
        "ARCHITECTURE.md's stage table is stale; fix: python -m react_core.stages --write ARCHITECTURE.md"
    )
    for spec in stages.STAGES:
        assert f"| `{spec.name}` |" in text
