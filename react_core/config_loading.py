"""Reading a configuration: YAML presets and ``key=value`` overrides into a validated :class:`ReactConfig`, every
problem one line naming the field and the fix (:func:`load_config`, :func:`format_validation_error`)."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from react_core.config import ConfigError, ReactConfig
from react_core.secrets import mask_urls


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (minus its last element)."""
    model: type[BaseModel] = ReactConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def _describe(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    bits = []
    if field.description:
        bits.append(field.description)
    if field.default is not None and not isinstance(field.default, BaseModel) and field.default_factory is None:
        bits.append(f"default {field.default!r}")
    return "; ".join(bits)


# Keys that once existed, with why they went: a preset that still has one gets this instead of "unknown key".
REMOVED_KEYS = {
    "model.precision": "it was accepted but never read (training.precision sets the training autocast; inference "
    "runs bf16 autocast on CUDA and fp32 on CPUs)",
}


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """One line per problem: ``source: field.path: what is wrong (got X); fix: ...``."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc) or "<root>"
        owner = _model_at(loc)
        if e["type"] == "extra_forbidden" and path in REMOVED_KEYS:
            lines.append(f"{source}: '{path}' was removed: {REMOVED_KEYS[path]}; fix: remove it")
            continue
        if e["type"] == "extra_forbidden":
            valid = sorted(owner.model_fields) if owner else []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            lines.append(
                f"{source}: unknown key '{path}'; {hint}valid keys here are: {', '.join(valid)}; fix: remove or rename it"
            )
            continue
        got = e.get("input")
        got_s = json.dumps(got, default=str) if not isinstance(got, Mapping) else "a mapping"
        msg = e["msg"].removeprefix("Value error, ")
        fix = ""
        if owner is not None and loc and str(loc[-1]) in owner.model_fields and "fix:" not in msg:
            d = _describe(owner, str(loc[-1]))
            fix = f"; fix: {d}" if d else ""
        got_part = f" (got {got_s})" if "fix:" not in msg else ""  # a message with its own fix names the value
        where = f"{path}: " if loc else ""  # a check of the whole tree names its field in its message
        lines.append(f"{source}: {where}{msg}{got_part}{fix}")
    # a value echoed back must not carry a password (http://user:pass@host)
    return "\n".join(mask_urls(line) for line in lines)


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["training.lr=1e-4", "miniweb.kb_size=1000"]`` into a nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected dotted.key=value, e.g. training.lr=1e-4")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def read_tree(source: str | Path | Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """(a name for messages, the raw tree) of a YAML file path, a mapping, or None (the defaults)."""
    name = "config"
    data: dict[str, Any] = {}
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise ConfigError(f"{name}: no such config file; fix: pass an existing YAML file (see deployments/)")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{name}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); fix: save the file "
                "as UTF-8"
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{name}: not valid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{name}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = dict(loaded.get("config", loaded)) if "config" in loaded else dict(loaded)
    elif isinstance(source, Mapping):
        data = dict(source)
    return name, data


def load_config(
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | list[str] | None = None,
) -> ReactConfig:
    """Build a validated :class:`ReactConfig`.

    Args:
        source: a YAML file path, a mapping, or None for the defaults. A preset may contain a
            ``config:`` key (the rest of the file being deployment metadata), otherwise the whole
            file is the config.
        overrides: a nested mapping or ``dotted.key=value`` strings applied on top.

    Raises:
        ConfigError: listing every problem, one line each, naming the field and the fix.
    """
    name, data = read_tree(source)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    if overrides:
        data = deep_merge(data, overrides)
    try:
        return ReactConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, name)) from None


# -- overrides: a partial tree (what a deployment run changes) ------------------------------------------------
