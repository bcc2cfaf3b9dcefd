"""REACT's stages as functions of config sections and upstream URIs (what the Prefect tasks call).

Each ``run_*`` derives its stage's identity (``{root}/{stage}/{version}``) from exactly the config it
reads and the URIs it consumes, skips a finished stage, records the stage in a tracking run of its own
(``tracker``, nested under ``parent_run_id``) and returns its URI. Nothing here knows about Prefect; the
CLI, a notebook or another orchestrator can run the same sequence and get the same record.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from react_core import stages
from react_core.ablation import Grid
from react_core.ablation_report import cell_result, write_ablation
from react_core.config import (
    RIVAL_MODES,
    ConfigError,
    DownloadConfig,
    EvaluationConfig,
    IndexConfig,
    KnowledgeBaseConfig,
    MiniWebConfig,
    ModelConfig,
    RetrievalConfig,
    TrainingConfig,
)
from react_core.data import DatasetError
from react_core.data.datasets import EvalSet
from react_core.evaluation.heads import HEAD_FILE, load_head
from react_core.evaluation.report import headline, write_report
from react_core.evaluation.suite import dataset_uri, evaluate_dataset, is_caption_set, metrics_for, open_eval
from react_core.executor import execute
from react_core.knowledge import report as retrieval_report
from react_core.knowledge.download import download as fetch
from react_core.knowledge.download import downloaded_shards
from react_core.knowledge.embed import (
    embed_knowledge_base,
    embed_shards,
    embedded_shards,
    finish,
    knowledge_base_shards,
)
from react_core.knowledge.extract import extract, manifest_has_urls
from react_core.knowledge.index import build_indices
from react_core.knowledge.names import most_frequent_names
from react_core.knowledge.replay import replay_pool_size, sample_replay
from react_core.knowledge.retrieve import read_manifest, retrieve
from react_core.miniweb.generate import generate
from react_core.models import model_file
from react_core.models.cache import cached_model, inference_model
from react_core.models.gated import TEXT_MODES, set_gate_scale
from react_core.preflight import check_checkpoint
from react_core.registry import resolve_task
from react_core.storage import Stage, Storage, join, version_hash
from react_core.tracking import NullTracker, Tracker, metric_key
from react_core.training.customize import caption_features, customize
from react_core.training.heads import fit_head
from react_core.training.pretrain import pretrain_base

_logger = logging.getLogger(__name__)


def miniweb_stage(storage: Storage, miniweb: MiniWebConfig) -> Stage:
    """The mini-web's stage (:data:`react_core.stages.MINIWEB`)."""
    return stages.MINIWEB.stage(storage, {"miniweb": miniweb})


def run_miniweb(
    storage: Storage,
    *,
    miniweb: MiniWebConfig,
    processes: int | None = None,
    progress: bool = False,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
) -> str:
    """The mini-web: corpus, knowledge base and target tasks."""
    stage = miniweb_stage(storage, miniweb)
    return execute(
        stage,
        lambda _: generate(miniweb, storage, stage, processes, progress),
        tracker=tracker,
        parent_run_id=parent_run_id,
        params={"miniweb": miniweb.model_dump(mode="json")},
    )


def base_stage(storage: Storage, model: ModelConfig, miniweb_uri: str) -> Stage:
    """The mini-web base model's stage (:data:`react_core.stages.BASE`)."""
    return stages.BASE.stage(storage, {"model": model}, {"miniweb": miniweb_uri})


def run_pretrain_base(
    storage: Storage,
    *,
    model: ModelConfig,
    miniweb_uri: str,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
    progress: bool = False,
) -> str:
    """The tiny base CLIP pretrained on the mini-web (``model.pt`` in the stage)."""
    stage = base_stage(storage, model, miniweb_uri)
    return execute(
        stage,
        lambda run: pretrain_base(model, storage, stage, miniweb_uri, run, progress),
        tracker=tracker,
        parent_run_id=parent_run_id,
        run_name="pretrain-base",
        params={"model": model.model_dump(mode="json")},
    )


def base_checkpoint(model: ModelConfig, base_stage: str | None) -> str | None:
    """The weights the pipeline starts from: the mini-web base's checkpoint, or ``model.pretrained``."""
    if model.pretrained == "miniweb":
        if base_stage is None:
            raise ConfigError(
                "model.pretrained is 'miniweb' but no base stage was given; fix: run the base stage "
                "first (run_pretrain_base, or `react prepare-world`)"
            )
        return model_file(base_stage)
    return model.pretrained


def embed_stage(
    storage: Storage,
    model: ModelConfig,
    knowledge_base: KnowledgeBaseConfig,
    checkpoint: str | None,
    miniweb_uri: str | None,
) -> tuple[Stage, list[str]]:
    """The embed stage and the shards it embeds (its identity: model, batch size, checkpoint, shard folder, and
    the shards' contents by size and etag / modification time, so a replaced or repaired shard makes a new stage)."""
    shards = knowledge_base_shards(storage, knowledge_base.source, miniweb_uri)
    inputs = {
        "checkpoint": checkpoint or "",
        "shards": shards[0].rsplit("/", 1)[0],
        "contents": storage.fingerprint(shards),
    }
    stage = stages.EMBED.stage(storage, {"model": model, "knowledge_base": knowledge_base}, inputs)
    return stage, shards


def embed_plan(
    storage: Storage,
    model: ModelConfig,
    knowledge_base: KnowledgeBaseConfig,
    checkpoint: str | None,
    miniweb_uri: str | None,
) -> tuple[str, list[list[int]]]:
    """The embed stage's URI, and the indices of the shards still to embed, ``knowledge_base.shards_per_task`` per group (one
    task each; [] when done)."""
    stage, shards = embed_stage(storage, model, knowledge_base, checkpoint, miniweb_uri)
    if stage.done:
        return stage.uri, []
    finished = embedded_shards(storage, stage)
    todo = [i for i in range(len(shards)) if i not in finished]
    n = knowledge_base.shards_per_task
    return stage.uri, [todo[j : j + n] for j in range(0, len(todo), n)]


def run_embed_shards(
    storage: Storage,
    *,
    model: ModelConfig,
    knowledge_base: KnowledgeBaseConfig,
    checkpoint: str | None,
    miniweb_uri: str | None,
    indices: Sequence[int],
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
) -> dict[str, int]:
    """Embed one group of shards (on whichever worker runs it); returns its counts. Tracked as a run of its own
    (``embed shards {first}..{last}``, nested under ``parent_run_id``) with its counts and the worker's use of the
    machine sampled while it runs (system metrics: where the embed stage's GPU time goes)."""
    stage, shards = embed_stage(storage, model, knowledge_base, checkpoint, miniweb_uri)
    name = f"embed shards {indices[0]}..{indices[-1]}"
    tags = {"react.stage": "embed-shards", "react.stage_uri": stage.uri}
    with (tracker or NullTracker()).run(name, tags, parent_run_id, system_metrics=tracker is not None) as run:
        m, tok = cached_model(model, checkpoint, storage)
        results = embed_shards(
            m,
            tok,
            storage,
            shards,
            stage,
            indices,
            knowledge_base.batch_size,
            knowledge_base.num_workers,
            draft=knowledge_base.jpeg_draft,
        )
        counts = {
            "shards": len(results),
            "embedded": sum(r.embedded for r in results),
            "skipped": sum(r.skipped for r in results),
        }
        run.log_metrics({f"embed-shards/{k}": v for k, v in counts.items()})
    return counts


def run_embed_finish(
    storage: Storage,
    *,
    model: ModelConfig,
    knowledge_base: KnowledgeBaseConfig,
    checkpoint: str | None,
    miniweb_uri: str | None,
    groups: Sequence[Sequence[int]] = (),
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Mark the embed stage complete once every shard is embedded; ``groups``: what this run embedded."""
    stage, shards = embed_stage(storage, model, knowledge_base, checkpoint, miniweb_uri)
    resumed = len(shards) - sum(len(g) for g in groups)
    return execute(
        stage,
        lambda _: finish(
            storage, stage, shards, resumed, knowledge_base.max_damaged_shards, knowledge_base.require_index
        ),
        tracker=tracker,
        parent_run_id=parent_run_id,
        params={"knowledge_base": knowledge_base.model_dump(mode="json")},
        reports=("throughput.json",),
    )


def run_embed(
    storage: Storage,
    *,
    model: ModelConfig,
    knowledge_base: KnowledgeBaseConfig,
    checkpoint: str | None,
    miniweb_uri: str | None,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
) -> str:
    """The whole embed stage in this process (what the flow fans out as embed_plan / run_embed_shards / finish)."""
    stage, shards = embed_stage(storage, model, knowledge_base, checkpoint, miniweb_uri)

    def compute(_: Tracker) -> str:
        m, tok = inference_model(model, checkpoint, storage)
        return embed_knowledge_base(
            m,
            tok,
            storage,
            shards,
            stage,
            knowledge_base.batch_size,
            knowledge_base.num_workers,
            draft=knowledge_base.jpeg_draft,
            max_damaged_shards=knowledge_base.max_damaged_shards,
            require_index=knowledge_base.require_index,
        )

    return execute(
        stage,
        compute,
        tracker=tracker,
        parent_run_id=parent_run_id,
        params={"knowledge_base": knowledge_base.model_dump(mode="json")},
        reports=("throughput.json",),
        system_metrics=True,
    )


def run_index(
    storage: Storage,
    *,
    index: IndexConfig,
    k: int,
    embed_uri: str,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
) -> str:
    stage = stages.INDEX.stage(storage, {"index": index, "retrieval": {"k": k}}, {"embed": embed_uri})
    return execute(
        stage,
        lambda _: build_indices(storage, embed_uri, stage, index, k),
        tracker=tracker,
        parent_run_id=parent_run_id,
        params={"index": index.model_dump(mode="json"), "k": k},
        reports=("image_infos.json", "text_infos.json"),
    )


def audit_datasets(
    retrieval: RetrievalConfig, evaluation: EvaluationConfig, miniweb_uri: str | None
) -> tuple[list[tuple[str, str]], str | None]:
    """(name, folder) of each evaluation set the overlap audit checks, or why there are none.

    Only names and folders: they are part of the retrieve stage's identity, computed on every run, so
    nothing is listed or read here (an ImageNet val folder holds 50,000 files).
    """
    if not retrieval.audit.enabled:
        return [], None
    found = []
    for name in retrieval.audit.datasets or retrieval.target_tasks:
        if name.endswith((".yaml", ".yml")):
            return [], f"task {name} is a class list with no evaluation images; set retrieval.audit.datasets"
        try:
            found.append((name, dataset_uri(evaluation, name, miniweb_uri)))
        except DatasetError as exc:
            return [], f"{name}: {exc}"
    return found, None


def run_retrieve(
    storage: Storage,
    *,
    model: ModelConfig,
    checkpoint: str | None,
    retrieval: RetrievalConfig,
    embed_uri: str,
    index_uri: str,
    miniweb_uri: str | None,
    evaluation: EvaluationConfig | None = None,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
) -> str:
    evaluation = evaluation or EvaluationConfig()
    audited, why_not = audit_datasets(retrieval, evaluation, miniweb_uri)
    inputs = {
        "embed": embed_uri,
        "index": index_uri,
        "checkpoint": checkpoint or "",
        "audit": ",".join(uri for _, uri in audited),
    }
    stage = stages.RETRIEVE.stage(storage, {"retrieval": retrieval}, inputs)

    def compute(_: Tracker) -> str:
        sets: list[EvalSet] | str = why_not or "no evaluation set given"
        if audited:
            try:
                sets = [open_eval(storage, evaluation, name, miniweb_uri, retrieval.audit.split) for name, _ in audited]
            except DatasetError as exc:
                sets = str(exc)
        m, tok = inference_model(model, checkpoint, storage)
        tasks = [resolve_task(storage, name, miniweb_uri) for name in retrieval.target_tasks]
        target = tasks if retrieval.tasks else tasks[0]
        return retrieve(m, tok, storage, embed_uri, index_uri, target, retrieval, stage, sets)

    def figures(run: Tracker) -> None:
        import matplotlib.pyplot as plt

        counts = storage.read_json(stage.file("class_counts.json"))
        fig = retrieval_report.class_count_figure(counts)
        run.log_figure(fig, "class_counts.png")
        plt.close(fig)  # pyplot keeps every figure until closed: a long process would hold them all
        run.log_image(retrieval_report.sample_grid(storage, read_manifest(storage, stage.uri)), "retrieved_samples.png")

    return execute(
        stage,
        compute,
        tracker=tracker,
        parent_run_id=parent_run_id,
        params={"retrieval": retrieval.model_dump(mode="json")},
        reports=("overlap.json", "class_counts.json"),
        record=figures,
    )


def run_replay(
    storage: Storage,
    *,
    share: float,
    seed: int,
    embed_uri: str,
    retrieve_uri: str,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
) -> str | None:
    """The replay sample for a replay ``share`` of each batch (``training.replay`` > 0): knowledge-base pairs at
    random, none retrieved, as many as one epoch replays (:func:`react_core.knowledge.replay.replay_pool_size`),
    drawn with ``seed`` (``training.seed``). Its manifest is downloaded by :func:`run_download` like a
    retrieval's. None when replay is off."""
    if share <= 0:
        return None
    retrieved = int(storage.stage_manifest(retrieve_uri)["counts"]["pairs"])
    n = replay_pool_size(retrieved, share)
    inputs = {"embed": embed_uri, "retrieve": retrieve_uri}
    stage = stages.REPLAY.stage(storage, {"training": {"seed": seed}}, inputs, derived={"pairs": n})
    return execute(
        stage,
        lambda _: sample_replay(storage, embed_uri, retrieve_uri, n, seed, stage),
        tracker=tracker,
        parent_run_id=parent_run_id,
        params={"replay": {"share": share, "pairs": n, "seed": seed}},
    )


RETENTION_SEED = 10_000  # the retention sample's draw (training.choose), apart from any training seed in use


def run_retention_sample(
    storage: Storage,
    *,
    pairs: int,
    embed_uri: str,
    retrieve_uri: str,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
) -> str:
    """``pairs`` knowledge-base pairs at random, none retrieved (``training.choose.retention_pairs``): what the
    choose stage's retention proxy reads, downloaded by :func:`run_download`. A replay sample's stage (the same
    draw), with its own seed."""
    inputs = {"embed": embed_uri, "retrieve": retrieve_uri}
    stage = stages.REPLAY.stage(storage, {"training": {"seed": RETENTION_SEED}}, inputs, derived={"pairs": pairs})
    return execute(
        stage,
        lambda _: sample_replay(storage, embed_uri, retrieve_uri, pairs, RETENTION_SEED, stage),
        tracker=tracker,
        parent_run_id=parent_run_id,
        params={"retention": {"pairs": pairs, "seed": RETENTION_SEED}},
    )


def run_download(
    storage: Storage,
    *,
    download: DownloadConfig,
    retrieve_uri: str,
    miniweb_uri: str | None,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
) -> str:
    stage = stages.DOWNLOAD.stage(storage, {"download": download}, {"retrieve": retrieve_uri})
    return execute(
        stage,
        lambda _: _fetch_or_extract(storage, download, retrieve_uri, miniweb_uri, stage),
        tracker=tracker,
        parent_run_id=parent_run_id,
        params={"download": download.model_dump(mode="json")},
        reports=("download_summary.json",),
    )


def _fetch_or_extract(
    storage: Storage, download: DownloadConfig, retrieve_uri: str, miniweb_uri: str | None, stage: Stage
) -> str:
    auto_extract = download.mode == "auto" and not manifest_has_urls(read_manifest(storage, retrieve_uri))
    if download.mode == "extract" or auto_extract:
        return extract(storage, retrieve_uri, stage, download)  # a corpus of local shards: no network needed
    if miniweb_uri is None:
        return fetch(storage, retrieve_uri, stage, download)
    from react_core.miniweb.serve import MiniWebServer

    with MiniWebServer(storage, miniweb_uri) as server:  # the mini-web's images, over HTTP on 127.0.0.1
        return fetch(storage, retrieve_uri, stage, download, base_url=server.base_url)


def run_text_features(
    storage: Storage,
    *,
    model: ModelConfig,
    checkpoint: str | None,
    download_uri: str,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
) -> str:
    """The downloaded captions' text features: the URI of ``features.npy``, computed once per (download, text
    tower)."""
    inputs = {"download": download_uri, "checkpoint": checkpoint or ""}
    stage = stages.TEXT_FEATURES.stage(storage, {"model": model}, inputs)
    execute(
        stage,
        lambda _: caption_features(storage, stage, model.name, checkpoint, downloaded_shards(storage, download_uri)),
        tracker=tracker,
        parent_run_id=parent_run_id,
        params={"model": model.name, "download": download_uri},
    )
    return stage.file("features.npy")


def run_train(
    storage: Storage,
    *,
    model: ModelConfig,
    checkpoint: str | None,
    training: TrainingConfig,
    download_uri: str,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
    replay_uri: str | None = None,
) -> str:
    """Train on the downloaded pairs (and, with ``training.replay``, on the replay sample's download
    ``replay_uri``: :func:`run_replay` then :func:`run_download`)."""
    if training.replay > 0 and not replay_uri:
        raise ConfigError(
            f"training.replay={training.replay:g} trains on a replay sample, but no replay_uri was "
            "given; fix: run_replay, then run_download on its manifest, and pass its URI"
        )
    replay_input = {"replay": replay_uri} if training.replay > 0 else {}
    inputs = {"download": download_uri, "checkpoint": checkpoint or "", **replay_input}
    stage = stages.TRAIN.stage(storage, {"model": model, "training": training}, inputs)
    shards = downloaded_shards(storage, download_uri)
    frozen_text = training.mode not in TEXT_MODES  # a training text tower encodes the captions' tokens each step
    track = {"tracker": tracker, "parent_run_id": parent_run_id}

    def captions() -> tuple[str, Any]:
        """The captions' text features (a text-features stage each, its run nested in this one's)."""
        text = (
            run_text_features(storage, model=model, checkpoint=checkpoint, download_uri=download_uri, **track)
            if shards and frozen_text
            else ""
        )
        replay = None
        if replay_uri and replay_input:
            replay_shards = downloaded_shards(storage, replay_uri)
            replay = (
                replay_shards,
                run_text_features(storage, model=model, checkpoint=checkpoint, download_uri=replay_uri, **track)
                if replay_shards and frozen_text
                else "",
            )
        return text, replay

    def compute(run: Tracker) -> str:
        text, replay = captions()
        return customize(
            model.name,
            checkpoint,
            training,
            storage,
            shards,
            stage,
            text,
            run,
            progress=False,
            download_uri=download_uri,
            replay=replay,
        )

    return execute(stage, compute, params={"training": training.model_dump(mode="json")}, system_metrics=True, **track)


def run_head(
    storage: Storage,
    *,
    model: ModelConfig,
    checkpoint: str | None,
    training: TrainingConfig,
    retrieval: RetrievalConfig,
    embed_uri: str,
    download_uri: str,
    miniweb_uri: str | None,
    gate_scale: float = 1.0,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
) -> str:
    """A cheap rival's head for the retrieval's target task (``training.mode`` real-prompt, real-linear, cache-head;
    :mod:`react_core.training.heads`): on the downloaded pairs, or (real-prompt) on the knowledge base's captions.
    ``checkpoint``: the model whose features it is fitted on (the base's; ``training.choose``'s candidate heads: a
    customized model's, at ``gate_scale``)."""
    if training.mode not in RIVAL_MODES:
        raise ConfigError(
            f"training.mode={training.mode}: run_head fits the rivals {RIVAL_MODES}; fix: run_train for a tuning mode"
        )
    if retrieval.tasks and len(retrieval.tasks) > 1:
        raise ConfigError(
            f"training.mode={training.mode} fits a head for one target task, but retrieval.tasks lists "
            f"{len(retrieval.tasks)}; fix: one task, or a tuning mode (gated-image)"
        )
    prompts = training.mode == "real-prompt"
    task = resolve_task(storage, retrieval.target_tasks[0], miniweb_uri, synonyms=prompts)
    inputs = {"checkpoint": checkpoint or "", **({"embed": embed_uri} if prompts else {"download": download_uri})}
    if gate_scale != 1.0:
        inputs["gate_scale"] = float(gate_scale)
    stage = stages.HEAD.stage(storage, {"model": model, "training": training}, inputs, derived={"task": task.name})

    def compute(_: Tracker) -> str:
        names = None
        if prompts:
            names, counts = most_frequent_names(storage, embed_uri, task.classnames, task.synonyms)
            storage.write_json(stage.file("name_counts.json"), counts)
        shards = [] if prompts else downloaded_shards(storage, download_uri)
        return fit_head(
            model.name,
            checkpoint,
            training,
            storage,
            task.name,
            task.classnames,
            task.templates,
            shards,
            stage,
            names,
            gate_scale=gate_scale,
        )

    return execute(
        stage,
        compute,
        tracker=tracker,
        parent_run_id=parent_run_id,
        params={"training": training.model_dump(mode="json")},
    )


def model_weights(model: ModelConfig, checkpoint: str | None) -> str:
    """What identifies a model's weights in a stage's inputs: its checkpoint, else the pretrained tag."""
    return checkpoint or f"{model.name}:{model.pretrained or 'random'}"


def run_evaluate_dataset(
    storage: Storage,
    *,
    model: ModelConfig,
    checkpoint: str | None,
    evaluation: EvaluationConfig,
    dataset: str,
    miniweb_uri: str | None,
    progress: bool = False,
    gate_scale: float = 1.0,
    head_uri: str | None = None,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
) -> str:
    """One model on one dataset (``result.json``); a stage of its own, so adding a dataset re-runs only it.
    ``gate_scale``: lambda of the gated blocks (:func:`react_core.models.gated.set_gate_scale`); the flows pass
    ``evaluation.gate_scale`` for the customized model and 1 for the base. ``head_uri``: a rival's head stage
    (:func:`run_head`); it scores its own task, every other dataset is the model's alone (the same stage)."""
    probe = evaluation.linear_probe
    scaled = {"gate_scale": float(gate_scale)} if gate_scale != 1.0 else {}  # 1: the stages made before lambda
    head, headed = None, {}
    if head_uri is not None and storage.read_json(join(head_uri, "head.json"))["task"] == dataset:
        head = load_head(storage, join(head_uri, HEAD_FILE))
        headed = {"head": head_uri}
    derived = {
        "dataset": dataset,
        "location": dataset_uri(evaluation, dataset, miniweb_uri),
        "metrics": metrics_for(dataset),
        **({} if probe.enabled else {"linear_probe": None}),
    }
    inputs = {"model": model.name, "weights": model_weights(model, checkpoint), **scaled, **headed}
    schema = stages.CAPTION_SET_SCHEMA if is_caption_set(dataset) else stages.EVAL.schema
    stage = stages.EVAL.stage(storage, {"evaluation": evaluation}, inputs, derived, schema)
    if checkpoint:  # a damaged checkpoint's results, cached or not, would not be this checkpoint's
        check_checkpoint(storage, checkpoint)

    def compute(_: Tracker) -> str:
        m, tok = inference_model(model, checkpoint, storage)
        if gate_scale != 1.0 and not set_gate_scale(m, gate_scale):
            _logger.warning(
                "gate_scale %s asked for %s, which has no gated blocks: evaluated as it is", gate_scale, checkpoint
            )
        result = evaluate_dataset(m, tok, storage, evaluation, dataset, miniweb_uri, progress, head)
        result.update(model=model.name, checkpoint=checkpoint, **scaled, **{f"{k}_stage": v for k, v in headed.items()})
        storage.write_json(stage.file("result.json"), result)
        return stage.complete(counts={"images": result["n"]}, zero_shot=result["zero_shot"])

    def scores(run: Tracker) -> None:
        zero_shot = storage.read_json(stage.file("result.json"))["zero_shot"]
        run.log_metrics({metric_key("eval", dataset, k): v for k, v in zero_shot.items() if isinstance(v, int | float)})

    return execute(
        stage,
        compute,
        tracker=tracker,
        parent_run_id=parent_run_id,
        run_name=f"eval {dataset}",
        params={"dataset": dataset, "weights": inputs["weights"], "gate_scale": gate_scale, "split": evaluation.split},
        record=scores,
    )


# The images an export is checked on: the first of the check set (enough to catch a tower that computes otherwise,
# few enough that the check costs seconds beside the export).
EXPORT_CHECK_IMAGES = 256


def _export_names(
    storage: Storage, evaluation: EvaluationConfig, task: str, miniweb_uri: str | None
) -> tuple[list[str], list[str], str | None]:
    """(class names, templates, check set): the target task's names as its evaluation scores them (the eval set's,
    when the task is evaluated; else the task's own), and the evaluation set the export is checked on (the task's,
    else the first classification set evaluated; None: none)."""
    classes = [t for t in evaluation.tasks if not is_caption_set(t)]
    if task in classes:
        evalset = open_eval(storage, evaluation, task, miniweb_uri, evaluation.split)
        return list(evalset.classnames), list(evalset.templates), task
    spec = resolve_task(storage, task, miniweb_uri)
    return list(spec.classnames), list(spec.templates), classes[0] if classes else None


def run_choose(
    storage: Storage,
    *,
    model: ModelConfig,
    checkpoint: str | None,
    training: TrainingConfig,
    evaluation: EvaluationConfig,
    task: str,
    candidates: Mapping[str, Mapping[str, Any]],
    download_uri: str,
    retention_uri: str,
    miniweb_uri: str | None,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
) -> str:
    """One of ``candidates`` (label -> :func:`react_core.evaluation.selection.candidate`: the stage that made it,
    its checkpoint, lambda and head) picked without a target label
    (:mod:`react_core.evaluation.choice`): each, and the base model (``checkpoint``), scored on the held-out pairs
    of the retrieval's download (``training.holdout``) and on the retention sample's download; ``choice.json``
    names the pick."""
    from react_core.evaluation.choice import choose_model

    spec = resolve_task(storage, task, miniweb_uri)
    inputs = {"base": checkpoint or "", "heldout": download_uri, "retention": retention_uri}
    inputs.update({f"train {label}": c["stage"] for label, c in candidates.items()})
    derived = {"task": spec.name, "candidates": {label: float(c["gate_scale"]) for label, c in candidates.items()}}
    stage = stages.CHOOSE.stage(storage, {"model": model, "training": training}, inputs, derived)
    return execute(
        stage,
        lambda run: choose_model(
            storage,
            stage,
            model=model,
            base_checkpoint=checkpoint,
            candidates=candidates,
            heldout_shards=downloaded_shards(storage, download_uri),
            holdout=training.holdout,
            label_modes=training.choose.label_modes,
            retention_shards=downloaded_shards(storage, retention_uri),
            classnames=spec.classnames,
            templates=spec.templates,
            batch_size=evaluation.batch_size,
            keep=training.choose.keep,
            tracker=run,
        ),
        tracker=tracker,
        parent_run_id=parent_run_id,
        params={
            "choose": {
                "keep": training.choose.keep,
                "label_modes": training.choose.label_modes,
                "candidates": derived["candidates"],
            }
        },
        reports=("choice.json",),
    )


def run_choice_report(
    storage: Storage,
    *,
    choose_uri: str,
    base_evals: Mapping[str, str],
    candidate_evals: Mapping[str, Mapping[str, str]],
    roles: Mapping[str, str],
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Every candidate's true changes beside its proxies (:func:`react_core.evaluation.choice.write_choice_report`),
    from the eval stages of the base (``base_evals``: dataset -> stage) and of each candidate."""
    from react_core.evaluation.choice import write_choice_report

    inputs = {"choose": choose_uri, **{f"base {d}": u for d, u in base_evals.items()}}
    for label, evals in candidate_evals.items():
        inputs.update({f"{label} {d}": u for d, u in evals.items()})
    stage = stages.CHOICE_REPORT.stage(storage, {}, inputs, derived={"roles": dict(roles)})
    return execute(
        stage,
        lambda run: write_choice_report(storage, stage, choose_uri, base_evals, candidate_evals, roles, run),
        tracker=tracker,
        parent_run_id=parent_run_id,
        reports=("candidates.json",),
        record=lambda run: run.log_text(storage.read_bytes(stage.file("candidates.md")).decode(), "candidates.md"),
    )


def read_choice(storage: Storage, *, choose_uri: str) -> dict[str, Any]:
    """What the choose stage picked: ``choice.json`` (``picked``, ``reason``, every candidate's proxies)."""
    from react_core.evaluation.choice import read_choice as read

    return read(storage, choose_uri)


def run_export(
    storage: Storage,
    *,
    model: ModelConfig,
    checkpoint: str,
    evaluation: EvaluationConfig,
    task: str,
    miniweb_uri: str | None,
    gate_scale: float = 1.0,
    head_uri: str | None = None,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
) -> str:
    """The customized model at ``gate_scale`` (with ``head_uri``: a head stage, a ``training.choose`` pick's) exported (:mod:`react_core.serving.export`): both towers as
    ``torch.export`` programs, the zero-shot head of ``task`` (a target task) and ``serving.json``, checked against
    the model on up to :data:`EXPORT_CHECK_IMAGES` evaluation images (``export.json``: the lowest cosine, top-1
    agreement, ms per image eager and exported, sizes). What the registered MLflow model serves."""
    import tempfile

    from react_core.serving.export import export_model, verify

    classnames, templates, check = _export_names(storage, evaluation, task, miniweb_uri)
    names = version_hash({"classes": classnames, "templates": templates}, {}, 1)
    scaled = {"gate_scale": float(gate_scale)} if gate_scale != 1.0 else {}
    inputs = {"checkpoint": checkpoint, **scaled, **({"head": head_uri} if head_uri else {})}
    derived = {"task": task, "names": names, "check": check}
    stage = stages.EXPORT.stage(storage, {"model": model}, inputs, derived)
    check_checkpoint(storage, checkpoint)

    def compute(_: Tracker) -> str:
        m, tok = inference_model(model, checkpoint, storage)
        if gate_scale != 1.0:
            set_gate_scale(m, gate_scale)
        m = m.float().cpu().eval()
        with tempfile.TemporaryDirectory(prefix="react-export-") as out:
            head = load_head(storage, join(head_uri, HEAD_FILE)) if head_uri else None
            serving = export_model(m, tok, classnames, templates, out, head)
            found: dict[str, Any] = {"task": task, "check_set": check, "images": 0}
            if check is not None:
                evalset = open_eval(storage, evaluation, check, miniweb_uri, evaluation.split)
                subset = torch.utils.data.Subset(
                    evalset.torch_dataset(serving["image_size"]), range(min(len(evalset), EXPORT_CHECK_IMAGES))
                )
                found.update(verify(m, out, torch.utils.data.DataLoader(subset, batch_size=64)))
            sizes = {
                f"{name.split('.')[0]}_mb": os.path.getsize(os.path.join(out, name)) / 2**20 for name in os.listdir(out)
            }
            found.update(sizes)
            for name in os.listdir(out):
                storage.put_file(os.path.join(out, name), stage.file(name))
        storage.write_json(stage.file("export.json"), found)
        counts = {k: v for k, v in found.items() if isinstance(v, int | float) and k != "task"}
        return stage.complete(counts=counts)

    return execute(
        stage,
        compute,
        tracker=tracker,
        parent_run_id=parent_run_id,
        params={"checkpoint": checkpoint, "gate_scale": gate_scale, "task": task, "check_set": check},
        reports=("export.json",),
    )


def run_report(
    storage: Storage,
    *,
    results: Mapping[str, Sequence[str]],
    checkpoints: Mapping[str, str | None],
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
) -> str:
    """``metrics.json``, ``table.md`` and ``deltas.png`` from per-dataset stages of two models (base, customized)."""
    inputs = {f"{which}/{i}": uri for which, uris in results.items() for i, uri in enumerate(uris)}
    stage = stages.EVALUATE.stage(storage, {}, inputs, derived={"models": list(results)})

    def compute(run: Tracker) -> str:
        per_model = {w: [storage.read_json(join(u, "result.json")) for u in uris] for w, uris in results.items()}
        return write_report(storage, stage, per_model, checkpoints, run)

    return execute(stage, compute, tracker=tracker, parent_run_id=parent_run_id)


def run_ablation_report(
    storage: Storage,
    *,
    grid: Grid,
    cells: Mapping[str, Mapping[int, Mapping[str, Any]]],
    base_evals: Mapping[str, str],
    roles: Mapping[str, str],
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
) -> str:
    """``ablation.json``, ``ablation.md`` and a plot per axis (:mod:`react_core.ablation`) from every (cell, seed)'s
    stages (``cells[cell id][seed]``: ``retrieve``, ``download``, ``train`` URIs and ``evals``, dataset -> eval stage)
    and the base model's eval stages; a stage of its own, logged in an ``ablation`` run under ``parent_run_id``."""
    inputs = {
        f"{cid}/{seed}/{k}": v
        for cid, seeds in cells.items()
        for seed, uris in seeds.items()
        for k, v in {**{k: u for k, u in uris.items() if k != "evals"}, **uris["evals"]}.items()
    }
    inputs.update({f"base/{d}": u for d, u in base_evals.items()})
    stage = stages.ABLATION.stage(storage, {}, inputs, derived=grid.describe())

    def compute(run: Tracker) -> str:
        results = {
            cid: {int(seed): cell_result(storage, uris) for seed, uris in seeds.items()} for cid, seeds in cells.items()
        }
        return write_ablation(storage, stage, grid, results, headline(storage, base_evals), roles, run)

    return execute(stage, compute, tracker=tracker, parent_run_id=parent_run_id)


def evaluation_table(storage: Storage, evaluate_uri: str) -> dict[str, Any]:
    """The base / customized / delta table of an evaluate stage (dataset -> metric, base, customized, delta)."""
    return storage.stage_manifest(evaluate_uri)["table"]


def report_markdown(storage: Storage, evaluate_uri: str) -> str:
    """An evaluate stage's table as markdown (``table.md``), what a run prints."""
    return storage.read_bytes(join(evaluate_uri, "table.md")).decode()


def ablation_markdown(storage: Storage, ablation_uri: str) -> str:
    """An ablation stage's tables as markdown (``ablation.md``), what a run prints."""
    return storage.read_bytes(join(ablation_uri, "ablation.md")).decode()
