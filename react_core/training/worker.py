"""Entry point of one ``torchrun`` training process: ``python -m react_core.training.worker JOB_URI``.

``JOB_URI`` is the :class:`~react_core.training.trainer.TrainJob` JSON that the launcher wrote into the
train stage's folder. The storage options needed to read it, credentials included, come from the environment
variable ``REACT_STORAGE_OPTIONS`` (JSON), never from the command line or the job file. On a multi-node run,
start the same command with ``torchrun`` on every node (the launcher prints it) with that variable set, or
with the credentials in the node's standard places (AWS_ACCESS_KEY_ID, a profile, an instance role). Options
without credentials may come from ``REACT_STORAGE_PUBLIC_OPTIONS`` (the Kubernetes manifest sets it).

A process whose training raises writes ``failed/rank-{RANK}.json`` into the train stage (the error, scrubbed of
credentials) before it exits: how a launcher that cannot see the processes (a Kubernetes job) learns of it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys

from react_core.secrets import scrub
from react_core.storage import Storage, join
from react_core.training.kubernetes import PUBLIC_OPTIONS_ENV
from react_core.training.trainer import OPTIONS_ENV, TrainJob, train


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job_uri = argv[0]
    # Public options (an endpoint_url) from a Kubernetes manifest, then credentials from the launcher or a Secret.
    options = {
        **json.loads(os.environ.get(PUBLIC_OPTIONS_ENV) or "{}"),
        **json.loads(os.environ.get(OPTIONS_ENV) or "{}"),
    }
    storage = Storage(job_uri.rsplit("/", 1)[0], options)
    job = TrainJob.from_json(storage.read_bytes(job_uri).decode())
    job.storage_options = {**job.storage_options, **options}
    try:
        train(job)
    except Exception as e:  # recorded for a launcher that cannot see this process, then re-raised
        rank = os.environ.get("RANK", "0")
        marker = {"rank": int(rank), "host": socket.gethostname(), "error": scrub(f"{type(e).__name__}: {e}", options)}
        try:
            storage.write_json(join(job.stage_uri, "failed", f"rank-{rank}.json"), marker)
        except OSError:
            logging.getLogger(__name__).exception("could not record the failure of rank %s", rank)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
