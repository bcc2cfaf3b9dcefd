"""Entry point of one ``torchrun`` training process: ``python -m react_core.training.worker JOB_URI OPTIONS``.

``JOB_URI`` is the :class:`~react_core.training.trainer.TrainJob` JSON that the launcher wrote into the
train stage's folder; ``OPTIONS`` the storage options (JSON) needed to read it. On a multi-node run,
start the same command with ``torchrun`` on every node (the launcher prints it).
"""

from __future__ import annotations

import json
import logging
import sys

from react_core.storage import Storage
from react_core.training.trainer import TrainJob, train


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job_uri, options = argv[0], json.loads(argv[1])
    storage = Storage(job_uri.rsplit("/", 1)[0], options)
    train(TrainJob.from_json(storage.read_bytes(job_uri).decode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
