"""The fields a flow run names, as a Prefect parameter: :data:`ConfigOverrides` is the config tree with every field
optional (types, bounds and descriptions kept, so the Prefect form shows them), and :func:`apply_overrides` puts the
fields it names over a preset, validated as a whole."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from react_core.config import ConfigError, ReactConfig, StorageConfig
from react_core.config_loading import format_validation_error, load_config, read_tree
from react_core.secrets import protect


def _as_dict(data: Any) -> Any:
    """A full section (or tree) given where a partial one is expected: every field counts as named."""
    return data.model_dump() if isinstance(data, BaseModel) else data


def _partial(cls: type[BaseModel]) -> type[BaseModel]:
    """The same tree with every field optional (default: not named) and its type, bounds and description kept,
    so a Prefect form or ``--params`` can name one field and leave the rest to the preset."""
    fields: dict[str, Any] = {}
    validators: dict[str, Any] = {"_full": model_validator(mode="before")(classmethod(lambda c, d: _as_dict(d)))}
    for name, f in cls.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            ann = _partial(ann)
        elif f.metadata:
            ann = Annotated[(ann, *f.metadata)]
        fields[name] = (Optional[ann], Field(None, description=f.description))  # noqa: UP045 - create_model
        if name == "options" and cls is StorageConfig:
            validators["_secrets"] = field_validator("options")(classmethod(lambda c, v: protect(v) if v else v))
    return create_model(
        f"{cls.__name__}Overrides",
        __config__=ConfigDict(extra="forbid", frozen=True),
        __doc__=f"Only the fields named change the preset: {cls.__doc__ or cls.__name__}",
        __validators__=validators,
        **fields,
    )


ConfigOverrides = _partial(ReactConfig)


def _named(overrides: BaseModel) -> dict[str, Any]:
    """The fields an overrides tree names (set explicitly, ``null`` included), nested sections as dicts."""
    out: dict[str, Any] = {}
    for name in overrides.model_fields_set:
        value = getattr(overrides, name)
        out[name] = _named(value) if isinstance(value, BaseModel) else value
    return out


def _apply(base: dict[str, Any], named: Mapping[str, Any], sections: type[BaseModel]) -> dict[str, Any]:
    out = dict(base)
    for k, v in named.items():
        ann = sections.model_fields[k].annotation
        prev = out.get(k)
        if isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(v, Mapping):
            if prev is None or isinstance(prev, Mapping):  # else the preset's own value is wrong: validation names it
                out[k] = _apply(dict(prev or {}), v, ann)  # a section: only the fields it names
        else:
            out[k] = v  # a value, a list or a dict field (storage.options): replaced whole
    return out


def apply_overrides(preset: str | Path | ReactConfig, overrides: BaseModel | Mapping[str, Any] | None) -> ReactConfig:
    """``preset`` (a YAML file or a tree) with the fields ``overrides`` names changed, validated as a whole.
    ``overrides``: a :data:`ConfigOverrides` (its explicitly set fields), a nested mapping, or a full
    :class:`ReactConfig` (all of its fields)."""
    # The preset is validated once, with the overrides applied: a relative root that an override replaces is
    # never resolved (a deployment run refuses a relative root only when it is the one used).
    base = preset.model_dump() if isinstance(preset, ReactConfig) else read_tree(preset)[1]
    if overrides is None:
        return load_config(base if isinstance(preset, ReactConfig) else preset)
    if not isinstance(overrides, ConfigOverrides):  # a mapping, or a full tree (every field named)
        try:
            overrides = ConfigOverrides.model_validate(overrides)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "overrides")) from None
    try:
        return ReactConfig.model_validate(_apply(base, _named(overrides), ReactConfig))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(preset) if isinstance(preset, (str, Path)) else "config"))
