"""One typed, validated configuration tree for every REACT stage.

The same tree is read by the CLI, rendered by Prefect as flow-parameter forms, and stored in
``deployments/*.yaml`` presets. Every model is frozen and rejects unknown keys; :func:`load_config`
collects *all* problems into one :class:`ConfigError` whose lines each name the field and the fix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from react_core.errors import ReactError
from react_core.secrets import URL_PASSWORD, mask_urls, protect

_logger = logging.getLogger(__name__)


class ConfigError(ReactError, ValueError):
    """A configuration was rejected; the message has one line per problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Where a relative ``storage.root`` lives: under $REACT_STORAGE_ROOT when it is set (a folder or URI every worker
# reaches), else in the working folder. A flow run started from a deployment works in a temporary copy of the code
# that its worker deletes when the run ends, so there a relative root without $REACT_STORAGE_ROOT is refused: every
# stage would be written into the copy and lost with it.
STORAGE_ROOT_ENV = "REACT_STORAGE_ROOT"
_DEPLOYED: ContextVar[bool] = ContextVar("react_deployed", default=False)


@contextlib.contextmanager
def deployment_run() -> Iterator[None]:
    """Configs validated inside are a deployment run's: a relative ``storage.root`` needs $REACT_STORAGE_ROOT."""
    token = _DEPLOYED.set(True)
    try:
        yield
    finally:
        _DEPLOYED.reset(token)


def _absolute_root(v: str) -> str:
    """A URI as given; a local path made absolute: a relative one under $REACT_STORAGE_ROOT when set, else the
    working folder (refused in a deployment run). Absolute, so that two checkouts with the same preset never share
    cached results (Prefect's cache keys on this value)."""
    if "://" not in v and not Path(v).expanduser().is_absolute():
        base = os.environ.get(STORAGE_ROOT_ENV, "").strip().rstrip("/")
        rel = posixpath.normpath(v)
        if base and (rel == ".." or rel.startswith("../")):
            raise ValueError(
                f"{v!r} leaves {STORAGE_ROOT_ENV}={base}; fix: name a folder inside it, or an absolute root"
            )
        if base:
            v = base if rel == "." else f"{base}/{rel}"
        elif _DEPLOYED.get():
            raise ValueError(
                f"{v!r} is relative, and a deployment run works in a temporary copy of the code that is deleted when "
                f"it ends (every stage would go with it); fix: set {STORAGE_ROOT_ENV} in the worker's environment to "
                "a folder or s3:// URI every worker reaches (the relative root goes under it), or pass an absolute "
                "storage.root"
            )
    return v if "://" in v else str(Path(v).expanduser().resolve())


class StorageConfig(_Section):
    """Where artifacts live: an fsspec URI (``file://``, ``s3://``, ``memory://``) or a local path."""

    root: str = Field(
        "./react-artifacts",
        validate_default=True,
        description="artifact root: a local path or an fsspec URI; a relative path is under $REACT_STORAGE_ROOT when "
        "that is set (a deployment run needs one of the two: it works in a temporary copy of the code)",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec storage options, e.g. {endpoint_url: http://127.0.0.1:9000} for an S3-compatible server; "
        "credentials belong in the environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, an instance role), and any given "
        "here (key, secret, token) are kept secret: shown as ********** and never written or sent as parameters",
    )

    @field_validator("options")
    @classmethod
    def _secrets_stay_secret(cls, v: dict[str, Any]) -> dict[str, Any]:
        return protect(v)

    @field_validator("root")
    @classmethod
    def _root_not_empty(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("storage root is empty; set it to a folder such as ./react-artifacts or s3://bucket/react")
        return _absolute_root(v)


class PretrainConfig(_Section):
    """How the mini-web's tiny base CLIP is pretrained (only used when ``model.pretrained == 'miniweb'``)."""

    split: Literal["generic", "kb"] = Field(
        "generic", description="'generic' for the real base; 'kb' trains with the target concepts in view (the oracle)"
    )
    epochs: int = Field(6, ge=1, description="passes over the pretraining split")
    batch_size: int = Field(256, ge=2, description="pairs per step (the contrastive batch)")
    lr: float = Field(2e-3, gt=0, description="AdamW peak learning rate (cosine schedule after warmup)")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(100, ge=0, description="linear warmup steps before the cosine decay")
    seed: int = Field(0, description="seed of the initial weights and the data order")
    max_samples: int | None = Field(None, ge=1, description="cap on training pairs (None: the whole split)")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (None: torch's default)")


class ModelConfig(_Section):
    """The base CLIP: an open_clip architecture name and where its weights come from."""

    name: str = Field("react-tiny-vit", description="open_clip model name (ViT-B-32, ...) or one of react_core's")
    pretrained: str | None = Field(
        "miniweb",
        description="open_clip pretrained tag (openai, laion400m_e32, ...), a checkpoint URI, 'miniweb' "
        "(the tiny base pretrained here on the mini-web) or null for random weights",
    )
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)


class MiniWebConfig(_Section):
    """Sizes and seed of the generated mini-web world (corpus, knowledge base, target tasks)."""

    seed: int = Field(0, description="seed of everything generated: concepts, captions, images, splits")
    n_concepts: int = Field(160, ge=8, description="number of visual concepts (>= 8)")
    fine_grained_classes: int = Field(16, ge=2, description="classes of the fine-grained target task")
    coarse_classes: int = Field(12, ge=2, description="classes of the coarse target task")
    extra_classes: int = Field(
        0,
        ge=0,
        description="classes of a third target task, miniweb-extra (generic concepts made rare in the "
        "generic corpus, as the targets are: for multi-task retrieval); 0: no third task",
    )
    image_size: int = Field(32, ge=16, le=256, description="side of the square rendered images, in pixels")
    generic_size: int = Field(60_000, ge=1, description="pairs in the generic (pretraining) split")
    kb_size: int = Field(120_000, ge=1, description="pairs in the knowledge base")
    target_rate_generic: float = Field(
        0.03, ge=0, le=1, description="how often target concepts appear in the generic split, relative to others"
    )
    target_rate_kb: float = Field(
        3.0, ge=0, description="how often target concepts appear in the knowledge base, relative to others"
    )
    test_per_class: int = Field(50, ge=1, description="held-out test images per target class")
    train_per_class: int = Field(20, ge=0, description="held-out train images per target class (few-shot)")
    generic_classes: int = Field(
        40,
        ge=0,
        description="classes of miniweb-generic, the forgetting probe: concepts outside both target tasks "
        "that the base learnt (test_per_class / train_per_class images each); 0: not written",
    )
    caption_test_size: int = Field(
        1_000,
        ge=0,
        description="images of miniweb-captions, the image-text retrieval test set (2 captions each); 0: not written",
    )
    caption_noise: float = Field(0.2, ge=0, le=1, description="share of captions unrelated to their image")
    dead_link_rate: float = Field(
        0.01, ge=0, lt=1, description="share of knowledge-base urls whose image is missing (404), as on the real web"
    )
    shard_size: int = Field(5_000, ge=1, description="pairs per webdataset shard")
    write_image_files: bool = Field(True, description="also write the knowledge base as image files + url parquet")


class KnowledgeBaseConfig(_Section):
    """The image-text corpus to retrieve from."""

    source: str = Field("miniweb", description="'miniweb', or the URI of webdataset shards / a url parquet")
    batch_size: int = Field(256, ge=1, description="pairs per embedding batch")
    num_workers: int = Field(2, ge=0, description="DataLoader processes decoding shards for the embedding model")
    shards_per_task: int = Field(16, ge=1, description="shards per Prefect embedding task (the unit of fan-out)")
    max_damaged_shards: int = Field(
        0,
        ge=0,
        description="knowledge-base shards that may be damaged (truncated, unreadable, fewer samples than "
        "their _stats.json) with the embed stage still completing, their loss counted; above it the stage fails "
        "naming them",
    )
    require_index: bool = Field(
        False,
        description="refuse knowledge-base shards without their index ({shard}_stats.json, as img2dataset "
        "writes it): without one, a shard cut cleanly between two samples cannot be told from a whole one; false: "
        "such shards are embedded with a warning and counted (unindexed_shards)",
    )
    jpeg_draft: bool = Field(
        True,
        description="decode JPEGs much larger than the model input at a reduced DCT scale (PIL draft: 2x faster "
        "for 1024x768 -> 224, pixels within ~1 grey level); false: exactly open_clip's validation pixels",
    )
    dask_address: str | None = Field(
        None,
        description="scheduler of an existing Dask cluster (e.g. 'tcp://10.0.0.5:8786') whose workers run the "
        "embedding tasks (pip install 'react-customize[dask]'); null: the flow's process, one task at a time",
    )


class IndexConfig(_Section):
    index_key: str | None = Field(
        None, description="force a faiss index key (e.g. 'IVF256,Flat'); null lets autofaiss choose"
    )
    max_index_memory_usage: str = Field(
        "4G", description="autofaiss' budget for each index's size in memory (e.g. 4G, 100G); it picks the key to fit"
    )
    current_memory_available: str = Field(
        "8G", description="memory autofaiss may use while building (must exceed max_index_memory_usage)"
    )
    recall_queries: int = Field(200, ge=1, description="held-out queries used to measure recall@K")
    recall_target: float | None = Field(
        0.95,
        gt=0,
        le=1,
        description="raise the search parameter (efSearch / nprobe) until recall@K reaches this; null: keep autofaiss'",
    )


class OverlapAuditConfig(_Section):
    """Find retrieved images that are near-duplicates of the target task's evaluation images."""

    enabled: bool = Field(True, description="check retrieved images against the evaluation images")
    datasets: list[str] | None = Field(
        None, description="evaluation datasets to audit against (names as evaluation.tasks); null: retrieval.task"
    )
    split: str = Field("test", description="split of the audited datasets whose images are checked")
    threshold: float = Field(0.95, gt=0, le=1, description="image-embedding cosine at or above which a pair is a match")
    hash_distance: int = Field(10, ge=0, le=64, description="dHash Hamming distance at most which the hash agrees")
    decide: Literal["both", "embedding"] = Field(
        "both", description="both: an embedding match the hash confirms; embedding: every embedding match"
    )
    action: Literal["drop", "flag"] = Field(
        "drop", description="drop duplicates from the manifest, or keep and flag them"
    )


class RetrievalConfig(_Section):
    task: str = Field("miniweb-fine", description="the target task whose class names drive retrieval")
    tasks: list[str] | None = Field(
        None,
        description="several target tasks retrieved for at once (each with its own templates; class ids "
        "namespaced per task; one model for all); null: retrieval.task alone",
    )
    weights: list[float] | None = Field(
        None,
        description="each of retrieval.tasks' share of the retrieved set, in their order (normalised); "
        "null: equal shares",
    )
    k: int = Field(50, ge=1, description="neighbours per prompt and per index")
    modes: list[Literal["t2t", "t2i"]] = Field(
        default_factory=lambda: ["t2t", "t2i"],
        description="search modes: t2t (prompt to captions), t2i (prompt to images); the paper combines both",
    )
    cross_class: Literal["best", "drop"] = Field(
        "best", description="a pair retrieved for several classes: keep it for its best-scoring class, or drop it"
    )
    per_class_cap: int | None = Field(None, ge=1, description="keep at most this many best-scoring pairs per class")
    balance: bool = Field(False, description="trim every class to the smallest non-empty class's count")
    min_similarity: float | None = Field(None, description="drop hits whose cosine to their prompt is below this")
    dedup_captions: bool = Field(False, description="one pair per (class, normalised caption): its best-scoring")
    dedup_images: float | None = Field(
        None, gt=0, le=1, description="image-embedding cosine at or above which two pairs of a class are one"
    )
    min_pair_score: float | None = Field(
        None,
        description="drop pairs whose own image and caption score below this CLIP score (cosine of the "
        "knowledge base's image and text embeddings; the paper's Table 12 uses 0.30 and 0.32 for CLIP ViT-B/32); "
        "null: no filter",
    )
    pair_score_top: float | None = Field(
        None,
        gt=0,
        le=1,
        description="keep this share of each class's pairs, those whose image and caption agree "
        "best (CLIP score; a DataComp-style keep-top filter, independent of the model's score scale); null: all",
    )
    random_control: bool = Field(
        False,
        description="the random control: replace the retrieved pairs by as many knowledge-base pairs drawn "
        "uniformly (no class); training on them shows what training alone does, without retrieval",
    )
    target_size: int | None = Field(None, ge=1, description="exact total pairs, trimmed round-robin over classes")
    min_per_class: int = Field(0, ge=0, description="fail when a class ends with fewer pairs")
    audit: OverlapAuditConfig = Field(default_factory=OverlapAuditConfig)

    @field_validator("modes")
    @classmethod
    def _modes_not_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("modes is empty; use [t2t, t2i] (the paper's default), [t2t] or [t2i]")
        return v

    @field_validator("tasks")
    @classmethod
    def _tasks_listed_once(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("an empty list; fix: list the target tasks, or remove it and set retrieval.task")
        for name in v or []:
            if v.count(name) > 1:
                raise ValueError(f"{name!r} is listed {v.count(name)} times; fix: list each task once")
        return v

    @field_validator("weights")
    @classmethod
    def _weights_fit_the_tasks(cls, v: list[float] | None, info: ValidationInfo) -> list[float] | None:
        if v is None:
            return v
        tasks = info.data.get("tasks")
        if tasks is None:
            raise ValueError(
                "shares of retrieval.tasks, which is not set; fix: list the tasks "
                "in retrieval.tasks, or remove retrieval.weights"
            )
        if len(v) != len(tasks):
            raise ValueError(
                f"{len(v)} value(s) for the {len(tasks)} task(s) of retrieval.tasks; "
                "fix: one weight per task, in the same order"
            )
        if any(w <= 0 for w in v):
            raise ValueError(
                f"{v} has a weight <= 0; fix: positive shares (a task not wanted is removed from retrieval.tasks)"
            )
        return v

    @property
    def target_tasks(self) -> list[str]:
        """The tasks retrieval is for: ``tasks``, else ``[task]``."""
        return list(self.tasks) if self.tasks else [self.task]

    @property
    def label(self) -> str:
        """The tasks as one name (``miniweb-fine+miniweb-coarse``): registered model names, summaries."""
        return "+".join(self.target_tasks)


class DownloadConfig(_Section):
    mode: Literal["auto", "fetch", "extract"] = Field(
        "auto",
        description="fetch: img2dataset downloads the manifest's URLs; extract: read the pairs out of the "
        "knowledge base's own shards (no network); auto: extract when the manifest has no URLs",
    )
    processes_count: int = Field(2, ge=1, description="img2dataset download processes")
    thread_count: int = Field(16, ge=1, description="img2dataset download threads per process")
    timeout: int = Field(10, ge=1, description="seconds before a download attempt is given up")
    retries: int = Field(2, ge=0, description="retries of a failed download")
    image_size: int = Field(
        32, ge=8, description="side the downloaded images are resized to (img2dataset's center crop)"
    )
    samples_per_shard: int = Field(
        10_000, ge=1, description="img2dataset's number_sample_per_shard (the unit a re-run resumes by)"
    )


class AugmentConfig(_Section):
    """Training-time augmentation (the upstream recipe): random resized crop, flip, RandAugment."""

    enabled: bool = Field(
        True, description="augment training images; false: the same centre-cropped pixels every epoch"
    )
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="random resized crop's area range [low, high]")
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    randaugment_ops: int = Field(2, ge=0, description="RandAugment's N; 0 disables RandAugment")
    randaugment_magnitude: int = Field(9, ge=0, le=30, description="RandAugment's M (0..30)")

    @field_validator("crop_scale")
    @classmethod
    def _scale_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"crop_scale {list(v)} must satisfy 0 < low <= high <= 1, e.g. [0.08, 1.0]")
        return v


class KubernetesLaunchConfig(_Section):
    """The Indexed Job that ``launcher: kubernetes`` writes: one pod per node, each running ``torchrun``."""

    image: str = Field("react-worker:cuda", description="image with the project (infra/worker-cuda.Dockerfile)")
    namespace: str = Field("default", description="namespace of the Job and its headless Service")
    secret: str | None = Field(
        None,
        description="name of a Secret whose keys become the pods' environment (AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, or REACT_STORAGE_OPTIONS as JSON): the credentials never enter the manifest",
    )
    gpu_resource: str = Field("nvidia.com/gpu", description="the extended resource one process gets one of")
    node_selector: dict[str, str] = Field(default_factory=dict, description="nodeSelector of the pods")
    tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        description="tolerations of the pods (GPU nodes are usually tainted)",
    )
    shm_size: str = Field("16Gi", description="size of the in-memory /dev/shm (DataLoader workers share batches there)")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent", description="of the image")
    apply: bool = Field(True, description="run `kubectl apply` when kubectl is on PATH (else only write the manifest)")
    poll_s: float = Field(30.0, gt=0, description="seconds between looks at the stage while the job trains")
    timeout_h: float = Field(168.0, gt=0, description="hours to wait for the job's model before failing the stage")


class DistributedConfig(_Section):
    """How training is launched: one process, or ``torchrun`` with these rendezvous arguments."""

    nproc_per_node: int = Field(1, ge=1, description="processes on this node (GPUs, or CPU processes with gloo)")
    nnodes: int = Field(1, ge=1, description="nodes taking part (start the same flow on each)")
    node_rank: int = Field(0, ge=0, description="this node's rank, 0..nnodes-1")
    rdzv_endpoint: str = Field("127.0.0.1:29500", description="host:port of the rendezvous (node 0)")
    rdzv_id: str = Field("react", description="rendezvous id shared by the nodes of one training job")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="auto: nccl on GPUs, gloo on CPUs")
    launcher: Literal["torchrun", "kubernetes"] = Field(
        "torchrun",
        description="torchrun: this process starts torchrun as node node_rank (start the same flow on every node); "
        "kubernetes: the train stage writes an Indexed Job of nnodes pods (kubernetes.yaml), applies it with "
        "kubectl when it can, and waits for the job's model",
    )
    kubernetes: KubernetesLaunchConfig = Field(default_factory=KubernetesLaunchConfig)

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


RIVAL_MODES = ("real-prompt", "real-linear", "cache-head")  # training.mode values that fit a head, not the backbone


class RivalConfig(_Section):
    """Settings of the cheap rivals (``training.mode`` real-linear, cache-head); read only by those modes."""

    linear_steps: int = Field(300, ge=1, description="real-linear: full-batch AdamW steps of the linear head")
    linear_lr: float = Field(1e-3, gt=0, description="real-linear: the head's learning rate")
    linear_mix: float = Field(
        0.5, ge=0, le=1, description="real-linear: weight of the trained head's logits against zero-shot's (1-mix)"
    )
    cache_alpha: float = Field(1.0, ge=0, description="cache-head: weight of the cache's logits beside zero-shot's")
    cache_beta: float = Field(5.5, gt=0, description="cache-head: sharpness of the key affinity exp(-beta(1-cos))")


class ChoiceCandidate(_Section):
    """One model ``training.choose`` may pick: the run's training with ``set`` changed, used at ``gate_scale``."""

    label: str = Field(
        min_length=1,
        description="the candidate's name in the choice's table, tags and plot (letters, digits, spaces and _ - . :, "
        "as MLflow names allow)",
    )
    set: dict[str, Any] = Field(
        default_factory=dict,
        description="training fields this candidate changes, dotted (training.mode: locked-text, training.replay: "
        "0.25); {}: the run's own training",
    )
    gate_scale: float = Field(
        1.0, ge=0, le=1, description="lambda the candidate's gated blocks run at (evaluation.gate_scale); 1: as trained"
    )

    @field_validator("label")
    @classmethod
    def _label(cls, v: str) -> str:
        if bad := sorted(set(re.sub(r"[A-Za-z0-9_.: -]", "", v))):
            raise ValueError(
                f"{v!r} has {''.join(bad)!r}, which MLflow refuses in the tags and run names it becomes; fix: letters, "
                "digits, spaces and _ - . : only"
            )
        return v

    head: Literal["real-linear", "cache-head"] | None = Field(
        None,
        description="a cheap rival's head fitted on this candidate's own features (at its lambda) for the target "
        "task, as training.mode real-linear / cache-head fits one on the base's: the customized model with a head; "
        "null: none",
    )


class ChooseConfig(_Section):
    """Several candidate models trained on the same retrieved pairs, one picked without a target label
    (README "Choosing the model without labels")."""

    candidates: list[ChoiceCandidate] = Field(
        default_factory=list,
        description="the models to choose from; [] (the default): no choice, the run trains its own training",
    )
    budget: int | None = Field(
        None, ge=1, description="optimisation steps each candidate trains (training.steps); null: its own epochs"
    )
    keep: float = Field(
        0.9,
        gt=0,
        le=1,
        description="the rule: among the candidates keeping this share of the best proxy target gain, the one "
        "losing the least retention",
    )
    retention_pairs: int = Field(
        1000, ge=10, description="knowledge-base pairs, none retrieved, drawn for the retention proxy"
    )
    label_modes: list[Literal["t2t", "t2i"]] = Field(
        default_factory=lambda: ["t2t"],
        min_length=1,
        description="the held-out retrieved pairs the target proxy reads, by the search that gave them their class: "
        "t2t (their caption matched the class's prompts) or t2i (their image did); t2i classes are the base "
        "model's own reading of the image, which a head fitted on the base's features reproduces, so they favour "
        "heads over trainings",
    )
    evaluate_all: bool = Field(
        True,
        description="evaluate every candidate on evaluation.tasks too (where they have labels): its true changes "
        "beside its proxies (the choice reads none of them); false: only the pick is evaluated",
    )

    @field_validator("candidates")
    @classmethod
    def _candidates(cls, v: list[ChoiceCandidate]) -> list[ChoiceCandidate]:
        problems = []
        labels = [c.label for c in v]
        if dups := sorted({x for x in labels if labels.count(x) > 1}):
            problems.append(f"labels {dups} are given twice; fix: give each candidate its own label")
        allowed = {p for p in field_paths(TrainingConfig, "training.") if not p.startswith(CHOICE_FIXED)}
        for c in v:
            for key in c.set:
                if key not in allowed:
                    why = (
                        "is the same for every candidate (the proxies read its held-out pairs)"
                        if key.startswith(CHOICE_FIXED)
                        else "is not a training field"
                    )
                    problems.append(f"candidate {c.label!r}: {key} {why}; fix: name training fields other than "
                                    f"{', '.join(CHOICE_FIXED)}")  # fmt: skip
            mode = c.set.get("training.mode")
            if mode in RIVAL_MODES and c.head is not None:
                problems.append(
                    f"candidate {c.label!r}: training.mode={mode} is a head on the base model already, and head "
                    f"{c.head} would be a second; fix: head on a tuning mode (gated-image, ...), or no head"
                )
            if mode in RIVAL_MODES and c.gate_scale != 1:
                problems.append(
                    f"candidate {c.label!r}: training.mode={mode} keeps the base model, which has no gated blocks for "
                    f"gate_scale={c.gate_scale:g} to scale; fix: gate_scale 1 (the default)"
                )
        if v and all(c.set.get("training.mode") == "real-prompt" for c in v):
            problems.append(
                "every candidate is real-prompt, which retrieves nothing, and the held-out pairs the choice scores "
                "on are retrieved ones; fix: add a candidate that trains (e.g. {label: gated})"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return v


# training fields every candidate of a choice shares: the held-out pairs the proxies read, and the choice itself
CHOICE_FIXED = ("training.holdout", "training.choose")


class TrainingConfig(_Section):
    mode: Literal[
        "gated-image",
        "locked-text",
        "full",
        "locked-image",
        "gated-image+text",
        "real-prompt",
        "real-linear",
        "cache-head",
    ] = Field(
        "gated-image",
        description="what trains (the paper's Table 7): gated-image: new gated blocks in the frozen image tower "
        "(REACT's default); locked-text: the whole image tower; full: both towers; locked-image: the text tower "
        "alone (LiT); gated-image+text: the gated blocks and the text tower. Cheap rivals for the target task, "
        "compared by `react ablate` (the backbone stays the base): real-prompt: each class's most frequent name in "
        "the knowledge base's captions as its prompt (REAL); real-linear: a linear head on frozen image features of "
        "the retrieved pairs, ensembled with zero-shot (REAL); cache-head: the retrieved features as a key-value "
        "cache blended with zero-shot (Tip-Adapter, training-free)",
    )
    rivals: RivalConfig = Field(default_factory=lambda: RivalConfig())
    gated_layers: int = Field(6, ge=1, description="insert gated blocks before each of the last k image blocks")
    loss: Literal["clip", "unicl"] = Field("clip", description="unicl: pairs retrieved for one class are positives")
    batch_size: int = Field(256, ge=2, description="global batch, over all processes")
    lr: float = Field(5e-4, gt=0, description="AdamW peak learning rate (cosine schedule after warmup)")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(5000, ge=0, description="linear warmup steps before the cosine decay")
    epochs: int = Field(32, ge=1, description="passes over the retrieved pairs")
    seed: int = Field(0, description="seed of the new blocks' weights, the data order and the augmentation")
    precision: Literal["fp32", "bf16", "amp", "amp_bf16"] = Field(
        "amp_bf16",
        description="on CUDA: amp_bf16 / bf16 autocast in bfloat16, amp in float16, fp32 none; CPUs run fp32",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    replay: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of each batch drawn at random from the knowledge base (pairs not "
        "retrieved), so the new blocks keep seeing what the base saw (less forgetting; README 'Forgetting'); "
        "0: none, 0.25: one pair in four",
    )
    anchor: float = Field(
        0.0,
        ge=0,
        description="weight of the anchoring penalty: squared distance between the customized and the "
        "base model's image features on the replayed images (needs training.replay > 0); 0: none",
    )
    subset: float = Field(
        1.0,
        gt=0,
        le=1,
        description="share of the retrieved pairs trained on, chosen by key so that a smaller "
        "share lies inside a larger one (the paper's retrieval-size curve without retrieving again; with "
        "training.steps fixed, as the paper adjusts epochs); 1: all",
    )
    steps: int | None = Field(
        None,
        ge=1,
        description="optimisation steps in all (the passes over the pairs follow from it); null: "
        "training.epochs passes",
    )
    holdout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of the retrieved pairs kept out of training (chosen by key), on which "
        "settings such as evaluation.gate_scale and training.replay can be compared without target labels; 0: none",
    )
    grad_checkpointing: bool = Field(False, description="recompute the image blocks' activations in backward (memory)")
    compile: bool = Field(False, description="torch.compile the image tower")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes per training process")
    log_every: int = Field(10, ge=1, description="steps between logged metrics")
    checkpoint_every: int = Field(1000, ge=0, description="steps between checkpoints; 0: only at the end")
    keep_checkpoints: int = Field(3, ge=1, description="newest checkpoints kept under the stage's checkpoints/")
    resume: Literal["latest", "none"] = Field("latest", description="latest: continue from the newest checkpoint")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    choose: ChooseConfig = Field(default_factory=ChooseConfig)

    @model_validator(mode="after")
    def _choice_needs_holdout(self) -> TrainingConfig:
        if self.choose.candidates and self.holdout <= 0:
            raise ValueError(
                "training.choose picks a model by its accuracy on held-out retrieved pairs, but training.holdout is "
                "0; fix: set training.holdout (e.g. 0.1)"
            )
        problems = []
        for c in self.choose.candidates:
            try:
                self.candidate(c)
            except ValidationError as exc:
                for err in exc.errors():
                    where = "".join(f".{x}" for x in err["loc"])
                    msg = err["msg"].removeprefix("Value error, ")
                    if "fix:" not in msg:
                        msg += f" (got {err.get('input')!r}); fix: change the candidate's set"
                    problems.append(f"candidate {c.label!r}: " + (f"training{where}: {msg}" if where else msg))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def candidate(self, candidate: ChoiceCandidate) -> TrainingConfig:
        """This training with ``candidate.set`` changed and ``choose.budget`` as its steps; no choice of its own."""
        tree = self.model_dump()
        tree["choose"] = {}
        if self.choose.budget is not None:
            tree["steps"] = self.choose.budget
        for key, value in candidate.set.items():
            *parents, leaf = key.split(".")[1:]
            node = tree
            for part in parents:
                node = node[part]
            node[leaf] = value
        return TrainingConfig.model_validate(tree)

    @model_validator(mode="after")
    def _anchor_needs_replay(self) -> TrainingConfig:
        if self.anchor > 0 and self.replay == 0:
            raise ValueError(
                f"training.anchor={self.anchor:g} anchors the replayed images, but training.replay is 0; fix: set "
                "training.replay (e.g. 0.25) or training.anchor to 0"
            )
        return self


class LinearProbeConfig(_Section):
    """Few-shot linear probe with the head initialised from the zero-shot classifier (ELEVATER's text init)."""

    enabled: bool = Field(False, description="run the few-shot probe after zero-shot")
    shots: list[int] = Field(default_factory=lambda: [5, 20, 50], description="images per class")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], description="draws of the shots, one probe each")
    lrs: list[float] = Field(default_factory=lambda: [1e-3, 1e-2, 1e-1], description="learning-rate grid")
    weight_decays: list[float] = Field(default_factory=lambda: [0.0, 1e-4, 1e-2], description="weight-decay grid")
    steps: int = Field(200, ge=1, description="full-batch AdamW steps per head")
    val_per_class: int = Field(4, ge=1, description="training images per class held out to pick lr / wd")
    train_split: str = Field("train", description="split the shots are drawn from")


class EvaluationConfig(_Section):
    """Datasets to evaluate on, by name: ``miniweb-*``, ``imagenet-1k``, ELEVATER names, or a folder URI."""

    tasks: list[str] = Field(
        default_factory=lambda: ["miniweb-fine", "miniweb-coarse", "miniweb-generic", "miniweb-captions"],
        description="datasets: miniweb-*, imagenet-1k, ELEVATER names (cifar-10, ...), caption sets for image-text "
        "retrieval (miniweb-captions, coco-captions, flickr30k-captions: Karpathy's test split) or folder URIs",
    )
    generic: list[str] | None = Field(
        None,
        description="which of evaluation.tasks measure what the base model already knew (the run's table and summary "
        "show their change as the price of the target gain), e.g. [imagenet-1k] when customizing for another task; "
        "null: miniweb-generic when it is evaluated",
    )
    data_root: str | None = Field(
        None, description="folder holding datasets by name ({data_root}/{name}); not needed for the mini-web"
    )
    locations: dict[str, str] = Field(
        default_factory=dict, description="dataset name -> its folder (overrides data_root)"
    )
    batch_size: int = Field(256, ge=1, description="images per encoding batch")
    num_workers: int = Field(2, ge=0, description="image-decoding DataLoader workers")
    split: str = Field("test", description="split evaluated zero-shot")
    gate_scale: float | None = Field(
        None,
        ge=0,
        le=1,
        description="lambda: the customized model's gated blocks' output times this at inference; 0 is exactly the "
        "base model, 1 as trained (trades target gain for what the base knew; README 'Forgetting'); the registered "
        "version keeps it; null: a registered version's own (models:/NAME@ALIAS), else 1",
    )

    def customized_scale(self, registered: float | None = None) -> float:
        """The lambda the customized model is evaluated at: ``gate_scale``, else the registered version's, else 1."""
        if self.gate_scale is not None:
            return self.gate_scale
        return 1.0 if registered is None else registered

    linear_probe: LinearProbeConfig = Field(default_factory=LinearProbeConfig)

    @field_validator("generic")
    @classmethod
    def _generic_among_tasks(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        tasks = info.data.get("tasks", [])
        for name in v or []:
            if name not in tasks:
                raise ValueError(
                    f"{name!r} is not in evaluation.tasks; fix: add it to evaluation.tasks or remove it from "
                    "evaluation.generic"
                )
        return v

    @property
    def generic_tasks(self) -> list[str]:
        """The generic probes: ``generic``, or miniweb-generic when it is among ``tasks``."""
        if self.generic is not None:
            return list(self.generic)
        return [t for t in self.tasks if t == "miniweb-generic"]


class PromotionThresholds(_Section):
    """The evidence a new version needs to become ``champion`` (``tracking.promote: if-better``), from its evaluation
    (customized - base, each dataset's headline metric). The defaults are the forgetting goal: a gain on the
    target, at most 0.02 lost on what the base knew and on the other tasks evaluated."""

    min_gain: float = Field(0.0, description="the target tasks' mean change must be above this")
    max_generic_loss: float = Field(
        0.02, ge=0, description="each generic probe (evaluation.generic) may lose at most this much"
    )
    max_other_loss: float = Field(
        0.02, ge=0, description="each other evaluated task (not target, generic or a caption set) may lose at most this"
    )


class TrackingConfig(_Section):
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; null: $MLFLOW_TRACKING_URI, else a sqlite file under a local storage root "
        "(./react-mlflow.db in the working folder for an object-store root, where sqlite cannot live)",
    )
    experiment: str = Field("react", description="MLflow experiment name")
    enabled: bool = Field(True, description="log to MLflow; false: nothing is tracked")
    registered_model: str | None = Field(
        "react-{task}",
        description="MLflow registered model each customized model becomes a version of ({task}: the "
        "retrieval task; {model}: model.name); its versions must share one architecture; null: not registered",
    )
    promote: Literal["if-better", "always", "never"] = Field(
        "if-better",
        description="when a new version (alias 'candidate') also becomes 'champion': when it passes "
        "tracking.thresholds and its target task score beats the champion's, always, or never",
    )
    thresholds: PromotionThresholds = Field(
        default_factory=PromotionThresholds,
        description="what a version must show to become champion under promote: if-better",
    )


class ReactConfig(_Section):
    """The whole tree."""

    storage: StorageConfig = Field(default_factory=StorageConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    miniweb: MiniWebConfig = Field(default_factory=MiniWebConfig)
    knowledge_base: KnowledgeBaseConfig = Field(default_factory=KnowledgeBaseConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _choice_reads_a_searched_mode(self) -> ReactConfig:
        choose = self.training.choose
        if choose.candidates and not set(choose.label_modes) & set(self.retrieval.modes):
            raise ValueError(
                f"training.choose.label_modes={choose.label_modes} reads held-out pairs of searches that "
                f"retrieval.modes={self.retrieval.modes} does not run, so no pair would be scored; fix: "
                f"training.choose.label_modes={self.retrieval.modes}, or add t2t to retrieval.modes"
            )
        return self

    @model_validator(mode="after")
    def _no_password_in_a_url(self) -> ReactConfig:
        """A URL with a password (``http://user:pass@host``) anywhere but ``storage.options`` (where it is kept secret)
        would be printed, logged, sent as a Prefect parameter and written as an MLflow param: refused."""

        def walk(value: Any, path: str) -> None:
            if isinstance(value, BaseModel):
                for name in type(value).model_fields:
                    if path + name != "storage.options":
                        walk(getattr(value, name), f"{path}{name}.")
            elif isinstance(value, Mapping):
                for k, v in value.items():
                    walk(v, f"{path}{k}.")
            elif isinstance(value, list | tuple):
                for i, v in enumerate(value):
                    walk(v, f"{path}{i}.")
            elif isinstance(value, str) and URL_PASSWORD.search(value):
                field = path.rstrip(".")
                env = (
                    " (MLflow reads MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
                    if field == "tracking.tracking_uri"
                    else ""
                )
                raise ValueError(
                    f"{field} holds a URL with a password ({mask_urls(value)}), "
                    f"which would be printed, logged and sent as a parameter; fix: drop the user and password from "
                    f"the URL and give the credentials through the environment{env}"
                )

        walk(self, "")
        return self

    @property
    def uses_miniweb(self) -> bool:
        """Whether any stage reads the generated mini-web (base weights, knowledge base or tasks)."""
        return (
            self.model.pretrained == "miniweb"
            or self.knowledge_base.source == "miniweb"
            or any(t.startswith("miniweb-") for t in self.retrieval.target_tasks)
            or any(t.startswith("miniweb-") for t in self.evaluation.tasks)
        )


def field_paths(model: type[BaseModel] = ReactConfig, prefix: str = "") -> list[str]:
    """Every field of the config tree that is not itself a section, by dotted path (``training.augment.hflip``)."""
    out = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += field_paths(ann, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out
