"""Training checkpoints: ``{stage}/checkpoints/step-{step:09d}.pt``, written atomically, the last N kept.

A checkpoint holds only what training changes (the trainable parameters, the optimiser state) and the
step; the data order and the augmentation are functions of (seed, epoch, sample), so the step alone
says where to continue, mid-epoch included. ``config.json`` beside them records the training config.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from typing import Any

import torch

from react_core.storage import Storage, join

_logger = logging.getLogger(__name__)

FOLDER = "checkpoints"


def checkpoint_uri(stage_uri: str, step: int) -> str:
    return join(stage_uri, FOLDER, f"step-{step:09d}.pt")


def list_checkpoints(storage: Storage, stage_uri: str) -> list[str]:
    """Checkpoint URIs, oldest first (unfinished temporary files are not listed)."""
    return storage.ls(join(stage_uri, FOLDER), "step-*.pt")


def save(storage: Storage, stage_uri: str, step: int, payload: dict[str, Any], keep: int) -> str:
    """Write a checkpoint atomically, then delete all but the newest ``keep``."""
    uri = checkpoint_uri(stage_uri, step)
    with tempfile.NamedTemporaryFile(suffix=".pt", delete=False) as f:
        tmp = f.name
    try:
        torch.save({"step": step, **payload}, tmp)
        storage.put_file(tmp, uri)
    finally:
        os.unlink(tmp)
    for old in list_checkpoints(storage, stage_uri)[:-keep]:
        storage.rm(old, recursive=False)
    return uri


def load_latest(storage: Storage, stage_uri: str) -> dict[str, Any] | None:
    """The newest checkpoint that loads; a truncated or unreadable one is skipped with a warning."""
    for uri in reversed(list_checkpoints(storage, stage_uri)):
        try:
            payload = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)
            if not isinstance(payload, dict) or "step" not in payload:
                raise ValueError("not a training checkpoint")
        except Exception as exc:  # noqa: BLE001 - any unreadable file: fall back to the one before
            _logger.warning("skipping checkpoint %s: it does not load (%s: %s)", uri, type(exc).__name__, exc)
            continue
        _logger.info("resuming from %s (step %d)", uri, payload["step"])
        payload["uri"] = uri
        return payload
    return None
