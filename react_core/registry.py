"""Target tasks by name: the mini-web's, ImageNet-1K (open_clip's names and CLIP's 80 templates), the 20
ELEVATER datasets (``resources/elevater.yaml``: CLIP's class names and templates, ELEVATER's metric), and
custom tasks written as YAML::

    name: garden-birds
    classes:
      - name: northern cardinal
        synonyms: [cardinal, redbird]     # optional; also used as retrieval prompts for the class
      - blue jay                          # a plain name is fine
    templates:                            # optional; default: CLIP's 80 ImageNet templates
      - a photo of a {}.
      - a {} in the wild.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from react_core.config import ConfigError, ReactConfig
from react_core.data import DatasetError
from react_core.data.datasets import read_vision_dataset
from react_core.errors import ReactError
from react_core.storage import Storage, StorageError, join


@dataclass(frozen=True)
class TaskSpec:
    """What retrieval needs of a target task: its class names and prompt templates."""

    name: str
    classnames: Sequence[str]
    templates: Sequence[str] = field(default_factory=lambda: ["a photo of a {}."])
    synonyms: Mapping[str, Sequence[str]] = field(default_factory=dict)  # extra names -> more prompts per class


# The mini-web's target tasks (react_core.miniweb.generate); miniweb-extra exists when miniweb.extra_classes > 0.
MINIWEB_TASKS = ("miniweb-fine", "miniweb-coarse", "miniweb-extra")
MINIWEB_GENERIC = "miniweb-generic"  # its forgetting probe: concepts outside both, which the base learnt
MINIWEB_CAPTIONS = "miniweb-captions"  # its image-text retrieval test set (Karpathy-split layout)
MINIWEB_DATASETS = (*MINIWEB_TASKS, MINIWEB_GENERIC)  # classification tasks (a retrieval target may be any)
IMAGENET_NAMES = ("imagenet-1k", "imagenet1k")


class TaskSpecError(ReactError, ValueError):
    """A task definition is invalid; one line per problem, naming the file."""


def imagenet_templates() -> list[str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def _template_problem(template: str) -> str | None:
    """Why ``template.format(name)`` would fail or fill something other than the class name; None if it is fine."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return f"is not a valid template ({exc}); fix: write a literal brace as {{{{ or }}}}"
    others = sorted({f for f in fields if f not in ("", "0")})
    if others:
        slots = ", ".join("{" + f + "}" for f in others)
        return f"has placeholder(s) {slots} that nothing fills (only {{}}, the class name, is); fix: remove them"
    return None


def task_label(storage: Storage | None, name: str) -> str:
    """What a target task is called in registered model names and summaries: a task file's ``name:`` (else its
    file name without the extension) with every character MLflow or a ``models:/NAME@ALIAS`` URI cannot hold
    (``/``, ``:``, ``@``, spaces, ...) replaced by ``-``; any other task by its own name."""
    if name.endswith((".yaml", ".yml")):
        name = load_task_file(name, storage).name
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip("-.") or "task"


def parse_task(data: Any, source: str) -> TaskSpec:
    """Validate a custom task mapping (see the module docstring); raise listing every problem."""
    problems = []
    if not isinstance(data, dict):
        raise TaskSpecError(f"{source}: expected a mapping with 'classes' (and 'name', 'templates')")
    unknown = set(data) - {"name", "classes", "templates"}
    if unknown:
        problems.append(f"{source}: unknown key(s) {sorted(unknown)}; valid: name, classes, templates")
    classes, synonyms = [], {}
    for i, c in enumerate(data.get("classes") or []):
        if isinstance(c, str):
            name, syn = c, []
        elif isinstance(c, dict) and isinstance(c.get("name"), str):
            name, syn = c["name"], list(c.get("synonyms") or [])
        else:
            problems.append(f"{source}: classes[{i}] must be a name or {{name: ..., synonyms: [...]}}, got {c!r}")
            continue
        if not name.strip():
            problems.append(f"{source}: classes[{i}] has an empty name; fix: give it a name or remove it")
        # A line break or other control character inside a name would be filled into every prompt as it is
        # (and a name on two lines is almost always a YAML slip: a block scalar, a missing dash): refused.
        for text in (name, *syn):
            if any(unicodedata.category(ch).startswith("C") for ch in str(text).strip()):
                problems.append(
                    f"{source}: classes[{i}] {str(text)!r} contains a line break or another control character; "
                    "fix: write each name (and synonym) on one line"
                )
        classes.append(name.strip())
        if syn:
            synonyms[name.strip()] = [str(s) for s in syn]
    if not classes and not any("classes[" in p for p in problems):
        problems.append(f"{source}: the class list is empty; fix: list at least one class under 'classes'")
    seen: dict[str, int] = {}
    for name in classes:
        seen[name.lower()] = seen.get(name.lower(), 0) + 1
    dups = sorted(n for n, k in seen.items() if k > 1)
    if dups:
        problems.append(f"{source}: duplicate class names {dups}; fix: merge them (use synonyms) or rename")
    templates = data.get("templates")
    if templates is None:
        templates = imagenet_templates()
    elif not templates:
        problems.append(f"{source}: templates is empty; fix: remove it (CLIP's 80 templates) or list some")
    bad = [t for t in templates if not isinstance(t, str) or "{}" not in t]
    if bad:
        problems.append(
            f"{source}: template(s) without a '{{}}' slot for the class name: {bad}; fix: mark where the name goes "
            "with {}, e.g. 'a photo of a {}.'"
        )
    for t in templates:
        if isinstance(t, str) and t not in bad and (why := _template_problem(t)):
            problems.append(f"{source}: template {t!r} {why}")
    if problems:
        raise TaskSpecError("\n".join(problems))
    return TaskSpec(str(data.get("name") or Path(source).stem), classes, list(templates), synonyms)


@cache
def _elevater() -> dict[str, dict]:
    return yaml.safe_load((Path(__file__).parent / "resources" / "elevater.yaml").read_text())["datasets"]


def elevater_datasets() -> list[str]:
    """The 20 ELEVATER image-classification datasets, by the ELEVATER toolkit's names."""
    return list(_elevater())


def elevater_metric(name: str) -> str:
    """ELEVATER's metric for a dataset: accuracy, mean_per_class, roc_auc or map_11point."""
    return _elevater()[name]["metric"]


def elevater_task(name: str) -> TaskSpec:
    entry = _elevater()[name]
    return parse_task({"name": name, "classes": entry["classes"], "templates": entry["templates"]}, f"elevater:{name}")


def load_task_file(path: str, storage: Storage | None = None) -> TaskSpec:
    try:
        raw = (
            (storage or Storage(str(Path(path).parent))).read_bytes(path) if "://" in path else Path(path).read_bytes()
        )
        text = raw.decode("utf-8")
    except (FileNotFoundError, StorageError):
        raise TaskSpecError(f"{path}: no such task file") from None
    except UnicodeDecodeError as exc:
        raise TaskSpecError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); fix: save the file as "
            "UTF-8"
        ) from None
    try:
        return parse_task(yaml.safe_load(text), path)
    except yaml.YAMLError as exc:
        raise TaskSpecError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


def check_task(storage: Storage, name: str) -> None:
    """Raise the error :func:`resolve_task` would for ``name``, without needing the mini-web: an unknown name,
    a task YAML that is missing or invalid (every problem listed)."""
    if name.endswith((".yaml", ".yml")):
        load_task_file(name, storage)
    elif name not in (*MINIWEB_DATASETS, *IMAGENET_NAMES) and name not in _elevater():
        raise _unknown_task(name)


def _unknown_task(name: str) -> DatasetError:
    return DatasetError(
        f"unknown target task {name!r}; fix: use {', '.join(MINIWEB_DATASETS)}, imagenet-1k, an ELEVATER dataset "
        f"({', '.join(elevater_datasets())}) or a task YAML file"
    )


def resolve_task(storage: Storage, name: str, miniweb_uri: str | None, synonyms: bool = False) -> TaskSpec:
    """A target task by name: ``miniweb-*``, ``imagenet-1k``, or a path / URI of a custom YAML task. ``synonyms``:
    with a mini-web task's ``synonyms.json`` (REAL-Prompt's candidate names; retrieval uses the class names alone)."""
    if name.endswith((".yaml", ".yml")):
        return load_task_file(name, storage)
    if name in MINIWEB_DATASETS:
        if miniweb_uri is None:
            raise DatasetError(f"task {name!r} needs the mini-web; generate it first")
        # Class names only, as a user of an ELEVATER-style task has them (the mini-web's synonyms.json is not used).
        data = read_vision_dataset(storage, join(miniweb_uri, "tasks", name), "test")
        extra = join(miniweb_uri, "tasks", name, "synonyms.json")
        names = storage.read_json(extra) if synonyms and storage.exists(extra) else {}
        return TaskSpec(name, data.classnames, data.templates, names)
    if name in IMAGENET_NAMES:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return TaskSpec("imagenet-1k", list(IMAGENET_CLASSNAMES), imagenet_templates())
    if name in _elevater():
        return elevater_task(name)
    raise _unknown_task(name)


def registered_name(config: ReactConfig, storage: Storage) -> tuple[str, str]:
    """(task label, registered model name) of a customize run: ``tracking.registered_model`` with ``{task}`` the
    target tasks' labels (:func:`task_label`: a task file's ``name:`` or stem, never its path)
    joined by ``+``. Raises :class:`ConfigError` naming the field when MLflow would refuse the name."""
    task = "+".join(task_label(storage, t) for t in config.retrieval.target_tasks)
    template = config.tracking.registered_model or "react-{task}"
    model = re.sub(r"[/:@\s]+", "-", config.model.name).strip("-")  # hf-hub:org/name -> hf-hub-org-name
    try:
        name = template.format(task=task, model=model)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"tracking.registered_model={template!r} is not a valid name template ({type(exc).__name__}: {exc}); "
            "fix: use only the placeholders {task} and {model}, e.g. 'react-{task}'"
        ) from None
    bad = sorted({c for c in name if c in "/:@" or c.isspace() or unicodedata.category(c).startswith("C")})
    if not name.strip() or bad or name in (".", ".."):
        raise ConfigError(
            f"tracking.registered_model gives the model name {name!r}, which MLflow cannot hold (characters "
            f"{bad or 'none'}; '/', ':', '@', spaces and control characters are not allowed); fix: set "
            "tracking.registered_model to a name without them, e.g. 'react-{task}'"
        )
    return task, name


def check_comparable(champion: Mapping[str, str] | None, name: str, architecture: str) -> None:
    """Versions of one registered model are compared with each other (``champion`` moves to the better one) and
    loaded by one evaluation: a version of another architecture cannot join them. ``champion``: the champion's
    tags (None when there is none)."""
    theirs = (champion or {}).get("react.model")
    if theirs and theirs != architecture:
        raise ConfigError(
            f"tracking.registered_model: models:/{name}@champion is a {theirs} model and this run trains "
            f"{architecture}; the versions of one registered model must be comparable (and loadable by one "
            f"evaluation); fix: give this run a name of its own, e.g. -s 'tracking.registered_model=react-{{task}}-{{model}}'"
        )


def parse_registered(customized: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (MLflow's two forms of a
    registered model's URI); anything else under ``models:/`` is one line naming both."""
    rest = customized[len("models:/") :]
    name, sep, alias = rest.partition("@")
    if sep and name and alias:
        return name, alias, None
    name, sep, version = rest.rpartition("/")
    if sep and name and version.isdigit():
        return name, None, version
    raise ConfigError(
        f"customized={customized}: not a registered model's URI; fix: give models:/NAME@ALIAS "
        "(models:/react-miniweb-fine@champion) or models:/NAME/VERSION (models:/react-miniweb-fine/3)"
    )


def registered_tags(customized: str, model_registry: Any) -> dict[str, str] | None:
    """The tags of the version ``customized`` (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) names; None
    when there is no such version (or no registry)."""
    name, alias, version = parse_registered(customized)
    if model_registry is None:
        return None
    return model_registry.alias_tags(name, alias) if alias else model_registry.version_tags(name, version)


def resolve_registered(customized: str | None, model_registry: Any) -> tuple[str | None, float | None, str | None]:
    """(checkpoint, lambda, head) of a checkpoint URI or a registered model as ``models:/{name}@{alias}``
    (``models:/react-imagenet-1k@champion``) or ``models:/{name}/{version}`` (what a registration event names):
    the checkpoint its version records, its gate scale (``react.gate_scale``; 1 for versions registered before
    it) and its head stage (``react.head_stage``: a ``training.choose`` pick with a rival's head; None: none);
    lambda and head None for a plain checkpoint URI."""
    if not customized or not customized.startswith("models:/"):
        return customized, None, None
    tags = registered_tags(customized, model_registry)
    if not tags or "react.model_file" not in tags:
        name, alias, version = parse_registered(customized)
        which = f"has the alias {alias!r}" if alias else f"is version {version}"
        raise ConfigError(
            f"customized={customized}: no version of registered model {name!r} {which}; fix: run customize first, "
            "or name a checkpoint URI"
        )
    return tags["react.model_file"], float(tags.get("react.gate_scale", "1")), tags.get("react.head_stage") or None
