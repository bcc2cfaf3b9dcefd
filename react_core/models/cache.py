"""Models for inference as the stages load them: on the default device, in eval mode, and kept per process."""

from __future__ import annotations

import threading
from typing import Any

import torch

from react_core.config import ModelConfig
from react_core.models import create_model
from react_core.models.encode import default_device
from react_core.storage import Storage


def inference_model(model: ModelConfig, checkpoint: str | None, storage: Storage) -> tuple[torch.nn.Module, Any]:
    """The model and its tokenizer, on the default device, in eval mode."""
    m, tok = create_model(model.name, checkpoint, storage, device=default_device())
    return m.eval(), tok


_EMBEDDING_MODEL: dict[tuple[str, str], tuple[torch.nn.Module, Any]] = {}
_EMBEDDING_MODEL_LOCK = threading.Lock()


def cached_model(model: ModelConfig, checkpoint: str | None, storage: Storage) -> tuple[torch.nn.Module, Any]:
    """A model loaded once per process and kept (one at a time): the embedding stage's.

    Every embed-shards task of a run needs the same weights, one group of shards after another in the flow's
    process or on a Dask worker; loading a ViT-L checkpoint from S3 can take longer than embedding the group.
    """
    key = (model.model_dump_json(), checkpoint or "")
    with _EMBEDDING_MODEL_LOCK:
        if key not in _EMBEDDING_MODEL:
            _EMBEDDING_MODEL.clear()
            _EMBEDDING_MODEL[key] = inference_model(model, checkpoint, storage)
        return _EMBEDDING_MODEL[key]
