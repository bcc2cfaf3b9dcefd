"""REACT's runs as plans: the order of the stages and the decisions between them (a rival's head or training, the
replay sample, which models are evaluated where), runnable from Python without Prefect::

    from react_core.config_loading import load_config
    from react_core.plans import customize

    result = customize(load_config("deployments/tiny.yaml"))
    result["table"]  # dataset -> base, customized, delta

A plan calls each stage's entry point (``react_core.pipeline.run_*``) through a :class:`Runner`. :class:`Local`
runs them in this process; the Prefect flows pass a runner that makes each stage a task run named after it
(cached on the stage's identity, retried), so a flow, the CLI and a notebook run the same sequence and leave the
same stages and the same tracking record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from react_core import parent_run, pipeline, preflight, promotion
from react_core.ablation import Grid
from react_core.config import RIVAL_MODES, ReactConfig
from react_core.evaluation.selection import candidate
from react_core.models import model_file
from react_core.registry import resolve_registered
from react_core.storage import Storage
from react_core.summary import dataset_roles
from react_core.tracking import Tracker, make_tracker

_logger = logging.getLogger(__name__)

T = TypeVar("T")


class Runner(Protocol):
    """How a plan's steps run.

    ``stage(name, fn, **inputs)``: a stage's entry point, ``fn(storage, **inputs, tracker=, parent_run_id=)``;
    ``step(name, fn, **inputs)``: a function of the storage that is not a stage (the embed plan, a stage's table),
    ``fn(storage, **inputs)``; ``shards(groups, **inputs)``: the embed stage's groups of shards, each
    ``pipeline.run_embed_shards``; ``log(text)``: a line for whoever watches the run. ``name`` is what a person sees
    (a task run's name)."""

    def stage(self, name: str, fn: Callable[..., T], /, **inputs: Any) -> T: ...

    def step(self, name: str, fn: Callable[..., T], /, **inputs: Any) -> T: ...

    def shards(self, groups: list[list[int]], /, **inputs: Any) -> None: ...

    def log(self, text: str) -> None: ...


class Local:
    """This process, one stage after the other, recorded by ``tracker`` under ``parent_run_id``."""

    def __init__(self, storage: Storage, tracker: Tracker | None = None, parent_run_id: str | None = None) -> None:
        self.storage, self.tracker, self.parent_run_id = storage, tracker, parent_run_id

    def stage(self, name: str, fn: Callable[..., T], /, **inputs: Any) -> T:
        return fn(self.storage, **inputs, tracker=self.tracker, parent_run_id=self.parent_run_id)

    def step(self, name: str, fn: Callable[..., T], /, **inputs: Any) -> T:
        return fn(self.storage, **inputs)

    def shards(self, groups: list[list[int]], /, **inputs: Any) -> None:
        for indices in groups:
            pipeline.run_embed_shards(
                self.storage, **inputs, indices=indices, tracker=self.tracker, parent_run_id=self.parent_run_id
            )

    def log(self, text: str) -> None:
        _logger.info("%s", text)


def world_stages(config: ReactConfig, run: Runner) -> tuple[str | None, str | None]:
    """The mini-web (when a stage reads it) and the mini-web base (when ``model.pretrained`` is ``miniweb``): their
    stage URIs (None when not needed)."""
    miniweb = (
        run.stage("generate-miniweb", pipeline.run_miniweb, miniweb=config.miniweb) if config.uses_miniweb else None
    )
    base = None
    if config.model.pretrained == "miniweb":
        base = run.stage("pretrain-base", pipeline.run_pretrain_base, model=config.model, miniweb_uri=miniweb)
    return miniweb, base


def world(config: ReactConfig, run: Runner) -> tuple[str | None, str | None]:
    """The mini-web and the weights the run starts from: the mini-web base, trained if need be, or
    ``model.pretrained``. Returns (mini-web URI, checkpoint)."""
    miniweb, base = world_stages(config, run)
    return miniweb, pipeline.base_checkpoint(config.model, base)


def embed(config: ReactConfig, run: Runner, checkpoint: str | None, miniweb: str | None) -> str:
    """The embed stage: the shards still to embed, in groups (``knowledge_base.shards_per_task``), then its marker."""
    inputs = {
        "model": config.model,
        "knowledge_base": config.knowledge_base,
        "checkpoint": checkpoint,
        "miniweb_uri": miniweb,
    }
    _, groups = run.step("embed-plan", pipeline.embed_plan, **inputs)
    run.shards(groups, **inputs)
    return run.stage("embed", pipeline.run_embed_finish, **inputs, groups=groups)


def retrieve_and_train(
    config: ReactConfig,
    run: Runner,
    checkpoint: str | None,
    miniweb: str | None,
    embedded: str,
    out: dict[str, Any],
    label: str | None = None,
) -> dict[str, Any]:
    """Index (for ``retrieval.k``), retrieve, download, the replay sample when ``training.replay`` is set, train:
    the stages after the embedding, their URIs into ``out`` as they finish (a failure leaves what was reached). A
    cheap rival (``training.mode`` in RIVAL_MODES) fits its head instead (``out["train"]`` is then the head stage);
    real-prompt reads the knowledge base's captions only. ``label`` names the train or head step (an ablation's
    cell)."""
    c, tag = config, f" {label}" if label else ""
    base = {"model": c.model, "checkpoint": checkpoint}
    head = {**base, "training": c.training, "retrieval": c.retrieval, "embed_uri": embedded, "miniweb_uri": miniweb}
    if c.training.mode == "real-prompt":
        out["train"] = run.stage(f"head{tag}", pipeline.run_head, **head, download_uri="")
        return out
    out["index"] = run.stage("index", pipeline.run_index, index=c.index, k=c.retrieval.k, embed_uri=embedded)
    out["retrieve"] = run.stage(
        "retrieve",
        pipeline.run_retrieve,
        **base,
        retrieval=c.retrieval,
        embed_uri=embedded,
        index_uri=out["index"],
        miniweb_uri=miniweb,
        evaluation=c.evaluation,
    )
    out["download"] = run.stage(
        "download", pipeline.run_download, download=c.download, retrieve_uri=out["retrieve"], miniweb_uri=miniweb
    )
    if c.training.mode in RIVAL_MODES:
        out["train"] = run.stage(f"head{tag}", pipeline.run_head, **head, download_uri=out["download"])
        return out
    if c.training.replay > 0:  # a random share of the knowledge base, trained on beside the retrieval
        out["replay"] = run.stage(
            "replay-sample",
            pipeline.run_replay,
            share=c.training.replay,
            seed=c.training.seed,
            embed_uri=embedded,
            retrieve_uri=out["retrieve"],
        )
        out["replay_download"] = run.stage(
            "download replay",
            pipeline.run_download,
            download=c.download,
            retrieve_uri=out["replay"],
            miniweb_uri=miniweb,
        )
    out["train"] = run.stage(
        f"train{tag}",
        pipeline.run_train,
        **base,
        training=c.training,
        download_uri=out["download"],
        replay_uri=out.get("replay_download"),
    )
    return out


def choose_and_train(
    config: ReactConfig, run: Runner, checkpoint: str | None, miniweb: str | None, embedded: str, out: dict[str, Any]
) -> dict[str, Any]:
    """``training.choose``: every candidate made on the one retrieval (:func:`retrieve_and_train` with its training,
    then its ``head`` fitted on its features; the stages they share run once), the retention sample, and the choose
    stage, which picks one without a target label. ``out["train"]`` is the stage that made the pick (its train
    stage, or its head stage: ``train {label}`` / ``head {label}`` for each candidate), ``out["choice"]`` the pick and
    its reason; returns the pick (:func:`selection.candidate`: checkpoint, lambda, head)."""
    choose = config.training.choose
    made: dict[str, dict[str, Any]] = {}
    for cand in choose.candidates:
        c = config.model_copy(update={"training": config.training.candidate(cand)})
        uris = retrieve_and_train(c, run, checkpoint, miniweb, embedded, {}, label=cand.label)
        out.update({k: uris[k] for k in ("index", "retrieve", "download") if k in uris})  # real-prompt: none
        if c.training.mode in RIVAL_MODES:  # a head on the base model
            made[cand.label] = candidate(uris["train"], checkpoint, 1.0, uris["train"])
            out[f"head {cand.label}"] = uris["train"]
            continue
        out[f"train {cand.label}"] = uris["train"]
        made[cand.label] = candidate(uris["train"], model_file(uris["train"]), cand.gate_scale)
        if cand.head is not None:  # a rival's head on this candidate's own features
            head_training = c.training.model_copy(update={"mode": cand.head})
            head = run.stage(
                f"head {cand.label}",
                pipeline.run_head,
                model=config.model,
                checkpoint=model_file(uris["train"]),
                training=head_training,
                retrieval=config.retrieval,
                embed_uri=embedded,
                download_uri=out["download"],
                miniweb_uri=miniweb,
                gate_scale=cand.gate_scale,
            )
            out[f"head {cand.label}"] = head
            made[cand.label] = candidate(head, model_file(uris["train"]), cand.gate_scale, head)
    out["retention"] = run.stage(
        "retention-sample",
        pipeline.run_retention_sample,
        pairs=choose.retention_pairs,
        embed_uri=embedded,
        retrieve_uri=out["retrieve"],
    )
    out["retention_download"] = run.stage(
        "download retention",
        pipeline.run_download,
        download=config.download,
        retrieve_uri=out["retention"],
        miniweb_uri=miniweb,
    )
    out["choose"] = run.stage(
        "choose",
        pipeline.run_choose,
        model=config.model,
        checkpoint=checkpoint,
        training=config.training,
        evaluation=config.evaluation,
        task=config.retrieval.target_tasks[0],
        candidates=made,
        download_uri=out["download"],
        retention_uri=out["retention_download"],
        miniweb_uri=miniweb,
    )
    choice = run.step("choice", pipeline.read_choice, choose_uri=out["choose"])
    if choose.evaluate_all:  # where labels exist: what each candidate truly gained and cost, beside its proxies
        evals = {
            label: evaluate_datasets(config, run, c["checkpoint"], miniweb, label, c["gate_scale"], c["head"])
            for label, c in made.items()
        }
        out["choice_report"] = run.stage(
            "choice-report",
            pipeline.run_choice_report,
            choose_uri=out["choose"],
            base_evals=evaluate_datasets(config, run, checkpoint, miniweb, "base"),
            candidate_evals=evals,
            roles=dataset_roles(config),
        )
    picked = made[choice["picked"]]
    out["train"] = picked["stage"]
    out["choice"] = {"picked": choice["picked"], "reason": choice["reason"], **picked}
    run.log(f"choice (no target label read): {choice['reason']}")
    return picked


def evaluate_datasets(
    config: ReactConfig,
    run: Runner,
    checkpoint: str | None,
    miniweb: str | None,
    label: str,
    gate_scale: float = 1.0,
    head_uri: str | None = None,
) -> dict[str, str]:
    """One eval stage per dataset of ``evaluation.tasks`` for one model (with a rival's head: ``head_uri``): dataset
    -> its stage. ``label`` names the steps (``eval miniweb-fine (base)``)."""
    return {
        name: run.stage(
            f"eval {name} ({label})",
            pipeline.run_evaluate_dataset,
            model=config.model,
            checkpoint=checkpoint,
            evaluation=config.evaluation,
            dataset=name,
            miniweb_uri=miniweb,
            gate_scale=gate_scale,
            head_uri=head_uri,
        )
        for name in config.evaluation.tasks
    }


def evaluate_models(
    config: ReactConfig,
    run: Runner,
    checkpoints: Mapping[str, str | None],
    miniweb: str | None,
    registered_scale: float | None = None,
    head: str | None = None,
) -> str:
    """Every (model, dataset), then the report. The customized model is evaluated at ``evaluation.gate_scale``, else
    ``registered_scale`` (a registered version's lambda), else 1, with ``head`` (a head stage) on its target task;
    the base at 1, with none."""
    scale = config.evaluation.customized_scale(registered_scale)
    results = {
        label: list(
            evaluate_datasets(
                config, run, ckpt, miniweb, label, *((scale, head) if label == "customized" else (1.0, None))
            ).values()
        )
        for label, ckpt in checkpoints.items()
    }
    uri = run.stage("evaluation-report", pipeline.run_report, results=results, checkpoints=dict(checkpoints))
    run.log("evaluation:\n" + run.step("evaluation-table", pipeline.report_markdown, evaluate_uri=uri))
    return uri


def customize_stages(config: ReactConfig, run: Runner, out: dict[str, Any]) -> dict[str, Any]:
    """The customize run's stages, into ``out``: the world, the embedding, retrieval and training (with
    ``training.choose``: every candidate's, and the choice), the evaluation of the base and the customized model, the table, and the export of the customized model for the registry (when a
    model is registered: ``tracking.registered_model``)."""
    out["miniweb"], out["base"] = miniweb, checkpoint = world(config, run)
    out["embed"] = embedded = embed(config, run, checkpoint, miniweb)
    if config.training.choose.candidates:  # the pick: its checkpoint, lambda and head
        picked = choose_and_train(config, run, checkpoint, miniweb, embedded, out)
    else:
        retrieve_and_train(config, run, checkpoint, miniweb, embedded, out)
        picked = candidate(out["train"], model_file(out["train"]))
    chosen = picked["gate_scale"] if config.training.choose.candidates else None
    checkpoints = {"base": checkpoint, "customized": picked["checkpoint"]}
    out["evaluate"] = evaluated = evaluate_models(config, run, checkpoints, miniweb, chosen, picked["head"])
    out["table"] = run.step("report", pipeline.evaluation_table, evaluate_uri=evaluated)
    if config.tracking.enabled and config.tracking.registered_model and config.training.mode not in RIVAL_MODES:
        out["export"] = run.stage(
            "export",
            pipeline.run_export,
            model=config.model,
            checkpoint=picked["checkpoint"],
            evaluation=config.evaluation,
            task=config.retrieval.target_tasks[0],
            miniweb_uri=miniweb,
            gate_scale=config.evaluation.customized_scale(chosen),
            head_uri=picked["head"],
        )
    return out


def evaluate_stages(
    config: ReactConfig,
    run: Runner,
    out: dict[str, Any],
    customized: str | None,
    registered_scale: float | None,
    head: str | None = None,
) -> dict[str, Any]:
    """The evaluate run's stages, into ``out``: the base (and ``customized``, a checkpoint URI, with ``head``, a
    registered version's head stage) on every dataset."""
    miniweb, base = world(config, run)
    checkpoints = {"base": base} if customized is None else {"base": base, "customized": customized}
    out["evaluate"] = evaluated = evaluate_models(config, run, checkpoints, miniweb, registered_scale, head)
    out["table"] = run.step("report", pipeline.evaluation_table, evaluate_uri=evaluated)
    return out


def _tracked(
    config: ReactConfig,
    flow_name: str,
    storage: Storage,
    body: Callable[[Local, dict[str, Any]], Any],
    subject: str | None = None,
) -> dict[str, Any]:
    """``body`` under a parent tracking run (ended with the outcome, the stages and the headline numbers), given a
    :class:`Local` runner whose tracker records under it."""
    tracker = make_tracker(config.tracking, storage)
    title = parent_run.run_title(config, flow_name, subject)
    out: dict[str, Any] = {"mlflow_run_id": parent_run.start_run(config, flow_name, tracker, title=title)}
    status = "FAILED"
    try:
        body(Local(storage, tracker, out["mlflow_run_id"]), out)
        status = "FINISHED"
    finally:
        stages = {k: v for k, v in out.items() if isinstance(v, str)}
        metrics = parent_run.headline_metrics(out.get("table"), dataset_roles(config))
        model_id = (out.get("registered") or {}).get("model_id")
        datasets = parent_run.datasets_used(storage, stages)
        parent_run.end_run(tracker, out["mlflow_run_id"], status, stages, metrics, datasets, model_id)
    return out


def customize(config: ReactConfig) -> dict[str, Any]:
    """REACT for ``config`` in this process, as the ``customize`` flow runs it: the checks made before any stage,
    every stage (finished ones reused), the evaluation table, the registered version. Returns the stage URIs, the
    table (``table``: dataset -> metric, base, customized, delta), the parent tracking run and the version."""
    storage = Storage(config.storage.root, config.storage.options)
    preflight.check_customize(config, storage)

    def body(run: Local, out: dict[str, Any]) -> None:
        customize_stages(config, run, out)
        out["registered"] = promotion.register(storage, config, out, run.tracker)

    return _tracked(config, "customize", storage, body)


def evaluate(config: ReactConfig, customized: str | None = None) -> dict[str, Any]:
    """The ``evaluate`` flow in this process: the base model, and ``customized`` (a checkpoint URI or
    ``models:/NAME@ALIAS``) against it, on ``evaluation.tasks``."""
    storage = Storage(config.storage.root, config.storage.options)
    preflight.check_evaluate(config, storage, customized)
    checkpoint, scale, head = resolve_registered(customized, make_tracker(config.tracking, storage).model_registry)
    subject = customized or f"{config.model.name} (base)"
    return _tracked(
        config,
        "evaluate",
        storage,
        lambda run, out: evaluate_stages(config, run, out, checkpoint, scale, head),
        subject,
    )


def ablate_stages(config: ReactConfig, grid: Grid, run: Runner, out: dict[str, Any]) -> dict[str, Any]:
    """The ablate run's stages, into ``out``: the world and the embedding once, every cell of ``grid`` for every seed
    (retrieval, training or a rival's head, its evaluation), the base model's evaluation, and the report."""
    out["miniweb"], out["base"] = miniweb, checkpoint = world(config, run)
    out["embed"] = embedded = embed(config, run, checkpoint, miniweb)
    base_evals = evaluate_datasets(config, run, checkpoint, miniweb, "base")
    cells: dict[str, dict[int, dict[str, Any]]] = {}
    for cell in grid.cells:  # one after the other: each training takes every core of a CPU worker
        for seed in grid.seeds:
            c = cell.config.model_copy(update={"training": cell.config.training.model_copy(update={"seed": seed})})
            label = f"{cell.id} seed {seed}"
            uris = retrieve_and_train(c, run, checkpoint, miniweb, embedded, {}, label=label)
            if c.training.mode in RIVAL_MODES:  # the base model with the rival's head on the target task
                uris["evals"] = evaluate_datasets(c, run, checkpoint, miniweb, label, head_uri=uris["train"])
            else:
                scale = c.evaluation.customized_scale()
                uris["evals"] = evaluate_datasets(c, run, model_file(uris["train"]), miniweb, label, scale)
            cells.setdefault(cell.id, {})[seed] = uris
    out["ablation"] = uri = run.stage(
        "ablation-report",
        pipeline.run_ablation_report,
        grid=grid,
        cells=cells,
        base_evals=base_evals,
        roles=dataset_roles(config),
    )
    run.log("ablation:\n" + run.step("ablation-table", pipeline.ablation_markdown, ablation_uri=uri))
    return out
