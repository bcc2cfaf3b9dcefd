"""Progress of long work, seen where the person is looking.

On a terminal: a tqdm bar on stderr. Anywhere else (a Prefect worker, whose stderr nobody watches, a CI log, a
notebook's captured output): the same bar as a log line of ``react_core.progress`` at most every
``REACT_PROGRESS_EVERY_S`` seconds (30 by default), plus one at the start and one at the end. Those lines reach
a flow run's logs in the Prefect UI like every other ``react_core`` line (``PREFECT_LOGGING_EXTRA_LOGGERS``):
``pretrain react-micro-vit on generic:  45%|####5     | 450/1000 [02:00<02:26, 3.74step/s]``.

tqdm already throttles by time (``mininterval``); this only gives it a file that writes log records.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from tqdm.auto import tqdm

_logger = logging.getLogger(__name__)
ENV = "REACT_PROGRESS_EVERY_S"


class _LogLines:
    """A file for tqdm that turns each refresh into one log record."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def write(self, text: str) -> None:
        line = text.strip("\r\n ")
        if line:
            self.logger.info(line)

    def flush(self) -> None:
        pass


def bar(
    total: int | None,
    desc: str,
    unit: str,
    *,
    show: bool = True,
    enabled: bool = True,
    initial: int = 0,
    every_s: float | None = None,
    logger: logging.Logger = _logger,
    **kw: Any,
) -> tqdm:
    """A progress bar: drawn on a terminal when ``show``, else logged every ``every_s`` seconds.

    ``enabled=False`` silences it entirely (a rank other than 0 of a distributed job)."""
    if not enabled:
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=True, **kw)
    if show and sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, **kw)
    every = float(os.environ.get(ENV, "30")) if every_s is None else every_s
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        file=_LogLines(logger),
        mininterval=every,
        maxinterval=max(every, 1.0),
        miniters=1,
        ascii=True,
        ncols=100,
        **kw,
    )
