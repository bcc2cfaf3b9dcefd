"""What the mini-web benchmarks share: the pipeline's stages up to the downloaded pairs, and the three
zero-shot tasks they evaluate (the target, the other mini-web task, the generic concepts the base knew)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from react_core import pipeline
from react_core.config import ReactConfig
from react_core.data.datasets import open_dataset, read_vision_dataset
from react_core.miniweb.generate import TASK_NAMES
from react_core.registry import MINIWEB_CAPTIONS, MINIWEB_GENERIC
from react_core.storage import Storage, join


@dataclass
class Chain:
    storage: Storage
    world: str
    base: str | None
    embed: str
    retrieved: str
    downloaded: str


def prepare(cfg: ReactConfig) -> Chain:
    """The stages up to download (each cached in ``storage.root``: a finished demo there is reused)."""
    storage = Storage(cfg.storage.root, cfg.storage.options)
    world = pipeline.run_miniweb(storage, miniweb=cfg.miniweb)
    base = pipeline.base_checkpoint(cfg.model, pipeline.run_pretrain_base(storage, model=cfg.model, miniweb_uri=world))
    embed = pipeline.run_embed(
        storage, model=cfg.model, knowledge_base=cfg.knowledge_base, checkpoint=base, miniweb_uri=world
    )
    index = pipeline.run_index(storage, index=cfg.index, k=cfg.retrieval.k, embed_uri=embed)
    retrieved = pipeline.run_retrieve(
        storage,
        model=cfg.model,
        checkpoint=base,
        retrieval=cfg.retrieval,
        embed_uri=embed,
        index_uri=index,
        miniweb_uri=world,
        evaluation=cfg.evaluation,
    )
    downloaded = pipeline.run_download(storage, download=cfg.download, retrieve_uri=retrieved, miniweb_uri=world)
    return Chain(storage, world, base, embed, retrieved, downloaded)


def caption_set(chain: Chain) -> Any:
    """``miniweb-captions``, the image-text retrieval test set (an EvalSet with captions)."""
    return open_dataset(chain.storage, join(chain.world, "tasks", MINIWEB_CAPTIONS), "test", MINIWEB_CAPTIONS)


def eval_tasks(cfg: ReactConfig, chain: Chain) -> dict[str, Any]:
    """``{name: EvalSet}``: the target task, the other mini-web task and ``miniweb-generic``."""
    target = cfg.retrieval.task
    other = next(t for t in TASK_NAMES.values() if t != target)
    return {
        target: read_vision_dataset(chain.storage, join(chain.world, "tasks", target), "test"),
        other: read_vision_dataset(chain.storage, join(chain.world, "tasks", other), "test"),
        MINIWEB_GENERIC: read_vision_dataset(chain.storage, join(chain.world, "tasks", MINIWEB_GENERIC), "test"),
    }
