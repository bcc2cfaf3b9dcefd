"""Every stage declared once: its name, the config fields that form its identity, its schema, its inputs, what
computes it and what it writes.

A stage is the folder ``{storage.root}/{name}/{version}``; ``version`` hashes the stage's identity (the config
fields listed here, values the caller derives from data, the constants), its upstream URIs and its schema
(:func:`react_core.storage.version_hash`). Only the fields listed count: a field added to the config tree changes
no stage's version until it is added to a list here, and ``tests/unit/test_stages.py`` fails while a field is in
no list and not in :data:`NOT_IDENTITY` with the reason. A field listed with ``unset`` values was added after the
stage's first version: left out while unset, stages made before it existed keep their versions.

ARCHITECTURE.md's stage table is generated from these declarations (``python -m react_core.stages --write
ARCHITECTURE.md``; a test fails when it is stale).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from react_core.storage import Stage, Storage

Dumped = Mapping[str, Any]  # the config sections a stage reads, as JSON (``model_dump(mode="json")``)


@dataclass(frozen=True)
class Key:
    """One config field in a stage's identity: ``field`` (its path in the config tree, ``training.lr``) at ``at``
    (its path in the identity), left out while its value is one of ``unset``, or when ``when`` (a condition on the
    sections) is false: a field only some modes read."""

    field: str
    at: str
    unset: tuple[Any, ...] = ()
    when: Callable[[Dumped], bool] | None = None
    only: str = ""  # ``when`` in words, for the table: "rival modes"


def keys(
    section: str,
    at: str,
    names: str,
    unset: tuple[Any, ...] = (),
    when: Callable[[Dumped], bool] | None = None,
    only: str = "",
) -> tuple[Key, ...]:
    """Keys for ``section``'s fields ``names`` (space-separated), under ``at`` in the identity (``""``: its top
    level)."""
    return tuple(Key(f"{section}.{n}", f"{at}.{n}" if at else n, unset, when, only) for n in names.split())


@dataclass(frozen=True)
class StageSpec:
    """A stage's declaration. ``derived``: identity values the caller computes from data (a shard count, a dataset's
    location), by name; ``inputs``: the upstream URIs (and weights) in the identity, by name (``*``: named by the
    caller, as a report's per-dataset stages)."""

    name: str
    identity: tuple[Key, ...]
    inputs: tuple[str, ...] = ()
    derived: tuple[str, ...] = ()
    constants: Mapping[str, Any] = field(default_factory=dict)
    schema: int = 1
    entry: str = ""
    computed_by: str = ""
    writes: str = ""
    notes: str = ""

    def config_identity(
        self, sections: Mapping[str, BaseModel | Dumped], derived: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The identity's config part from the sections the stage reads (a section's model, or a mapping of the
        fields it needs) and the derived values."""
        dumped = {k: v.model_dump(mode="json") if isinstance(v, BaseModel) else dict(v) for k, v in sections.items()}
        out: dict[str, Any] = dict(self.constants)
        for key in self.identity:
            value = _lookup(dumped, key.field)
            if value in key.unset or (key.when is not None and not key.when(dumped)):
                continue
            _put(out, key.at, value)
        unknown = set(derived or {}) - set(self.derived)
        if unknown:
            raise TypeError(f"stage {self.name}: {sorted(unknown)} are not among its derived values {self.derived}")
        out.update(derived or {})
        return out

    def stage(
        self,
        storage: Storage,
        sections: Mapping[str, BaseModel | Dumped],
        inputs: Mapping[str, str] | None = None,
        derived: Mapping[str, Any] | None = None,
        schema: int | None = None,
    ) -> Stage:
        """The stage's folder for these sections, upstream URIs and derived values."""
        unknown = set(inputs or {}) - set(self.inputs)
        if unknown and "*" not in self.inputs:
            raise TypeError(f"stage {self.name}: {sorted(unknown)} are not among its inputs {self.inputs}")
        config = self.config_identity(sections, derived)
        return storage.stage(self.name, config, inputs, self.schema if schema is None else schema)

    def fields(self) -> list[str]:
        return list(dict.fromkeys(k.field for k in self.identity))


def _lookup(tree: Mapping[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        node = node[part]
    return node


def _put(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def _rival(d: Dumped) -> bool:
    return d["training"]["mode"] in ("real-prompt", "real-linear", "cache-head")


def _recipe(seed: Callable[[Dumped], bool] | None = None) -> tuple[Key, ...]:
    """``training``'s fields that the trained weights depend on (the train and head stages' ``training``)."""
    return (
        *keys(
            "training", "training", "mode gated_layers loss batch_size lr weight_decay warmup_steps epochs precision"
        ),
        *keys("training", "training", "seed", when=seed, only="real-linear" if seed else ""),
        *keys("training", "training", "replay anchor holdout", unset=(0,)),
        *keys("training", "training", "subset", unset=(1,)),
        *keys("training", "training", "steps", unset=(None,)),
        *keys("training.augment", "training.augment", "enabled crop_scale hflip randaugment_ops randaugment_magnitude"),
        *keys(
            "training.rivals",
            "training.rivals",
            "linear_steps linear_lr linear_mix cache_alpha cache_beta",
            when=_rival,
            only="rival modes",
        ),
    )


# The version of what the caption sets' eval stages write: 2 since image-text recall follows the standard protocol
# (ties in index order), so results computed under the earlier rule (a tie counts for the positive) are never reused.
CAPTION_SET_SCHEMA = 2

MINIWEB = StageSpec(
    "miniweb",
    (
        *keys(
            "miniweb",
            "",
            "seed n_concepts fine_grained_classes coarse_classes image_size generic_size kb_size "
            "target_rate_generic target_rate_kb test_per_class train_per_class generic_classes caption_test_size "
            "caption_noise dead_link_rate shard_size write_image_files",
        ),
        *keys("miniweb", "", "extra_classes", unset=(0,)),
    ),
    # The generator's version: bump it when the generator's output changes for the same config.
    # 4: tasks/miniweb-generic and tasks/miniweb-captions.
    constants={"generator": 4},
    entry="run_miniweb",
    computed_by="miniweb/generate.py",
    writes="generic and kb shards, kb image files + `urls.parquet`, `tasks/` (ELEVATER layout), `concepts.json`",
)

BASE = StageSpec(
    "base",
    (
        Key("model.name", "model"),
        *keys(
            "model.pretrain",
            "pretrain",
            "split epochs batch_size lr weight_decay warmup_steps seed max_samples num_threads",
        ),
    ),
    inputs=("miniweb",),
    entry="run_pretrain_base",
    computed_by="training/pretrain.py",
    writes="`model.pt`, `model.json`",
)

EMBED = StageSpec(
    "embed",
    (
        Key("model.name", "model"),
        Key("knowledge_base.batch_size", "batch_size"),
        Key("knowledge_base.jpeg_draft", "jpeg_draft"),
    ),
    inputs=("checkpoint", "shards", "contents"),
    # 2 added stats/ with each shard's counts, worker and timings, and throughput.json.
    schema=2,
    entry="`embed_plan` -> `run_embed_shards` (one call per group of shards, any worker) -> `run_embed_finish`; "
    "`run_embed` in one process",
    computed_by="knowledge/embed.py",
    writes="`img_emb/`, `text_emb/`, `metadata/`, `stats/`, `throughput.json`",
    notes="`contents`: the shards' sizes and etags / modification times, so a replaced or repaired shard makes a "
    "new stage",
)

INDEX = StageSpec(
    "index",
    (
        *keys(
            "index", "index", "index_key max_index_memory_usage current_memory_available recall_queries recall_target"
        ),
        Key("retrieval.k", "k"),
    ),
    inputs=("embed",),
    entry="run_index",
    computed_by="knowledge/index.py (autofaiss)",
    writes="`image.index`, `text.index`, `*_infos.json` (key, recall)",
)

RETRIEVE = StageSpec(
    "retrieve",
    (
        *keys(
            "retrieval",
            "",
            "task k modes cross_class per_class_cap balance min_similarity dedup_captions "
            "dedup_images target_size min_per_class",
        ),
        *keys("retrieval", "", "tasks weights min_pair_score pair_score_top random_control", unset=(None, False)),
        *keys("retrieval.audit", "audit", "enabled datasets split threshold hash_distance decide action"),
    ),
    inputs=("embed", "index", "checkpoint", "audit"),
    entry="run_retrieve",
    computed_by="knowledge/retrieve.py, knowledge/audit.py",
    writes="`manifest.parquet`, `class_counts.json`, `overlap.json`",
    notes="`audit`: the audited evaluation sets' folders",
)

REPLAY = StageSpec(
    "replay",
    (Key("training.seed", "seed"),),
    inputs=("embed", "retrieve"),
    derived=("pairs",),
    entry="run_replay (only with `training.replay` > 0)",
    computed_by="knowledge/replay.py",
    writes="`manifest.parquet` (random knowledge-base pairs outside the retrieval, `class_id` -1, `mode` replay), "
    "downloaded by a second `download` stage",
    notes="`pairs`: as many as one epoch replays (from `training.replay` and the retrieval's size)",
)

DOWNLOAD = StageSpec(
    "download",
    keys("download", "", "mode processes_count thread_count timeout retries image_size samples_per_shard"),
    inputs=("retrieve",),
    entry="run_download",
    computed_by="knowledge/download.py (img2dataset), knowledge/extract.py",
    writes="webdataset shards, `download_summary.json`",
)

TEXT_FEATURES = StageSpec(
    "text-features",
    (Key("model.name", "model"),),
    inputs=("download", "checkpoint"),
    # 2 has the captions in key order within each shard (react_core.data.load_captions), the order the trainer
    # reads the pairs in.
    schema=2,
    entry="run_text_features (called by `run_train`)",
    computed_by="training/customize.py (`caption_features`)",
    writes="`features.npy` (captions' text features)",
)

TRAIN = StageSpec(
    "train",
    (Key("model.name", "model"), *_recipe()),
    inputs=("download", "checkpoint", "replay"),
    entry="run_train",
    computed_by="training/customize.py -> training/trainer.py (in process or under torchrun)",
    writes="`model.pt`, `checkpoints/`, `train_metrics.json`, `gates.png`",
    notes="`replay`: the replay sample's download, when replaying",
)

HEAD = StageSpec(
    "head",
    (Key("model.name", "model"), *_recipe(seed=lambda d: d["training"]["mode"] == "real-linear")),
    inputs=("checkpoint", "embed", "download", "gate_scale"),
    derived=("task",),
    entry="run_head (cheap rivals only: `training.mode` real-prompt, real-linear, cache-head; "
    "`training.choose` candidates' `head`)",
    computed_by="training/heads.py, knowledge/names.py (real-prompt's name counts)",
    writes="`head.pt`, `head.json` (pairs, steps, trainable parameters, seconds), `name_counts.json`",
    notes="the seed only for real-linear (the prompts and the cache are the same for every seed); real-prompt reads "
    "the embed stage, the others the download; `checkpoint`: the model it is fitted on (a candidate's own), "
    "`gate_scale` only when not 1",
)

EVAL = StageSpec(
    "eval",
    (
        Key("evaluation.split", "split"),
        *keys(
            "evaluation.linear_probe",
            "linear_probe",
            "enabled shots seeds lrs weight_decays steps val_per_class train_split",
            when=lambda d: d["evaluation"]["linear_probe"]["enabled"],
            only="the probe on",
        ),
    ),
    inputs=("model", "weights", "gate_scale", "head"),
    derived=("dataset", "location", "metrics", "linear_probe"),
    entry="run_evaluate_dataset (one per model and dataset)",
    computed_by="evaluation/suite.py",
    writes="`result.json`",
    notes=f"`linear_probe`: null when the probe is off; caption sets' schema is {CAPTION_SET_SCHEMA}; `gate_scale` "
    "only when not 1",
)

EVALUATE = StageSpec(
    "evaluate",
    (),
    inputs=("*",),
    derived=("models",),
    entry="run_report",
    computed_by="evaluation/report.py",
    writes="`metrics.json`, `table.md`, `table.json`, `deltas.png`",
    notes="inputs: each model's per-dataset eval stages",
)

EXPORT = StageSpec(
    "export",
    (Key("model.name", "model"),),
    inputs=("checkpoint", "gate_scale", "head"),
    derived=("task", "names", "check"),
    entry="run_export (a customized model, after its evaluation; registered as an MLflow model)",
    computed_by="serving/export.py",
    writes="`image_encoder.pt2`, `text_encoder.pt2` (torch.export programs), `classifier.npy`, `serving.json`, "
    "`export.json` (its check against the model: cosines, top-1 agreement, ms per image, sizes)",
    notes="`names`: the digest of the task's class names and templates; `check`: the evaluation set whose images "
    "the export is checked on",
)

CHOOSE = StageSpec(
    "choose",
    (Key("model.name", "model"), Key("training.holdout", "holdout"), *keys("training.choose", "", "keep label_modes")),
    inputs=("*",),
    derived=("task", "candidates"),
    entry="run_choose (only with `training.choose.candidates`)",
    computed_by="evaluation/choice.py, evaluation/selection.py",
    writes="`choice.json` (the base's and each candidate's proxies, the pick and its reason), `proxies.png`",
    notes="inputs: `base`, `heldout` (the retrieval's download), `retention` (the retention sample's download), "
    "`train {label}` for each candidate (its train stage, or its head stage when it has a head, which names the "
    "checkpoint it was fitted on); `candidates`: label -> lambda",
)

CHOICE_REPORT = StageSpec(
    "choice-report",
    (),
    inputs=("*",),
    derived=("roles",),
    entry="run_choice_report (with `training.choose.evaluate_all`)",
    computed_by="evaluation/choice.py",
    writes="`candidates.json`, `candidates.md` (proxies beside the true changes), `pareto.png`",
    notes="inputs: the choose stage and every candidate's and the base's eval stages; `roles`: each dataset's role",
)

ABLATION = StageSpec(
    "ablation",
    (),
    inputs=("*",),
    derived=("name", "seeds", "axes", "labels", "cells"),
    entry="run_ablation_report (the ablate flow)",
    computed_by="ablation.py",
    writes="`ablation.json`, `ablation.md`, `{axis}.png`",
    notes="the grid's cells and seeds; inputs: every cell's retrieve, download, train / head and eval stages",
)

STAGES: tuple[StageSpec, ...] = (
    MINIWEB,
    BASE,
    EMBED,
    INDEX,
    RETRIEVE,
    REPLAY,
    DOWNLOAD,
    TEXT_FEATURES,
    TRAIN,
    HEAD,
    EVAL,
    EVALUATE,
    EXPORT,
    CHOOSE,
    CHOICE_REPORT,
    ABLATION,
)

_OPERATIONAL_TRAINING = (
    "how training runs, not what it computes: resuming with more processes, another checkpoint "
    "interval or torch.compile continues the same train stage"
)

# The config fields in no stage's identity, and why: where a stage is written, how it is computed (processes,
# batching of inference), or a value that reaches stages as an input URI. A key ending in ``.*`` covers a section.
NOT_IDENTITY: dict[str, str] = {
    "storage.*": "where the stages are written, not what they hold",
    "tracking.*": "where runs are recorded, not what stages hold",
    "model.pretrained": "reaches the stages as their `checkpoint` input (the weights' URI) or eval's `weights`",
    "knowledge_base.source": "reaches the embed stage as its shards' folder and contents (inputs)",
    "knowledge_base.num_workers": "decoding processes",
    "knowledge_base.shards_per_task": "how the embedding is split into tasks",
    "knowledge_base.dask_address": "where the embedding tasks run",
    "knowledge_base.max_damaged_shards": "whether a damaged knowledge base may complete the stage (the loss is "
    "counted in it), not what is embedded",
    "knowledge_base.require_index": "whether shards without their index are refused, not what is embedded",
    "training.checkpoint_every": _OPERATIONAL_TRAINING,
    "training.keep_checkpoints": _OPERATIONAL_TRAINING,
    "training.resume": _OPERATIONAL_TRAINING,
    "training.num_workers": _OPERATIONAL_TRAINING,
    "training.log_every": _OPERATIONAL_TRAINING,
    "training.compile": _OPERATIONAL_TRAINING,
    "training.grad_checkpointing": _OPERATIONAL_TRAINING,
    "training.distributed.*": _OPERATIONAL_TRAINING,
    "training.choose.candidates": "reach the choose stage as its candidates' train stages (inputs) and lambdas",
    "training.choose.budget": "reaches the choose stage through the candidates' train stages (their steps)",
    "training.choose.retention_pairs": "reaches the choose stage as its retention sample (an input)",
    "training.choose.evaluate_all": "which eval stages exist (each candidate's), not what one holds",
    "evaluation.tasks": "which eval stages exist (each is one dataset's)",
    "evaluation.generic": "a dataset's role in the report, not its result",
    "evaluation.data_root": "reaches the eval stages as each dataset's `location`",
    "evaluation.locations": "reaches the eval stages as each dataset's `location`",
    "evaluation.batch_size": "how images are batched for inference",
    "evaluation.num_workers": "decoding processes",
    "evaluation.gate_scale": "reaches the eval stages as their `gate_scale` input",
}


def not_identity(path: str) -> str | None:
    """Why ``path`` is in no stage's identity (None: it must be in one)."""
    for key, why in NOT_IDENTITY.items():
        if path == key or (key.endswith(".*") and path.startswith(key[:-1])):
            return why
    return None


def _fields_cell(spec: StageSpec) -> str:
    groups: dict[tuple[str, str], list[str]] = {}
    for key in spec.identity:
        section, _, name = key.field.rpartition(".")
        groups.setdefault((section, f" (with {key.only})" if key.only else ""), []).append(name)
    unset = [k.field.rpartition(".")[2] for k in spec.identity if k.unset]
    cell = "; ".join(f"`{s}`{only}: {', '.join(n)}" for (s, only), n in groups.items()) or "-"
    return cell + (f" ({', '.join(unset)}: only when set)" if unset else "")


def markdown_table() -> str:
    """The stage table of ARCHITECTURE.md."""
    rows = [
        (
            "| stage folder | entry point (`pipeline.py`) | computed by | writes | identity: config fields | "
            "identity: inputs, derived values | schema |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for s in STAGES:
        other = [f"`{i}`" for i in s.inputs if i != "*"] + [f"`{d}`" for d in s.derived]
        other += [f"`{k}` = {v}" for k, v in s.constants.items()]
        rest = ", ".join(other) + (f"; {s.notes}" if s.notes else "")
        schema = str(s.schema) + (f" (caption sets: {CAPTION_SET_SCHEMA})" if s is EVAL else "")
        entry = (
            s.entry
            if s.entry.startswith("`")
            else f"`{s.entry.split(' ', 1)[0]}`" + (f" {s.entry.split(' ', 1)[1]}" if " " in s.entry else "")
        )
        rows.append(
            f"| `{s.name}` | {entry} | {s.computed_by} | {s.writes} | {_fields_cell(s)} | {rest or '-'} | {schema} |"
        )
    return "\n".join(rows)


BEGIN, END = "<!-- stages: generated by `python -m react_core.stages --write ARCHITECTURE.md` -->", "<!-- /stages -->"


def with_table(text: str) -> str:
    """``text`` (ARCHITECTURE.md) with the generated table between its markers."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"no {BEGIN} ... {END} block to replace")
    return pattern.sub(lambda _: f"{BEGIN}\n{markdown_table()}\n{END}", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print the stage table, or write it into a markdown file")
    parser.add_argument("--write", type=Path, help="the file whose generated block is replaced (ARCHITECTURE.md)")
    args = parser.parse_args(argv)
    if args.write is None:
        print(markdown_table())
        return 0
    args.write.write_text(with_table(args.write.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
