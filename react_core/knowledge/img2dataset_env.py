"""img2dataset as react calls it: without wandb.

img2dataset imports wandb unconditionally (``img2dataset/logger.py``); its processes are *spawned*, so each imports
it again. With ``no_wandb/`` first on ``sys.path`` while img2dataset is imported and while its processes start
(they take the parent's ``sys.path``), ``import wandb`` finds an empty module there: wandb is never imported or
started, and leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

NO_WANDB = str(Path(__file__).with_name("no_wandb"))


@contextlib.contextmanager
def without_wandb() -> Iterator[None]:
    """Import and run img2dataset inside: ``import wandb`` finds the empty module, here and in its processes."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations (img2dataset's) asks PyPI at import
    added = NO_WANDB not in sys.path
    if added:
        sys.path.insert(0, NO_WANDB)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(NO_WANDB)
