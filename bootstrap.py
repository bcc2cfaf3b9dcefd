#!/usr/bin/env python3
"""Set everything up from nothing but Python 3.11, then run the demo or the tests.

    python3 bootstrap.py demo   # the whole pipeline on the embedded mini-web
    python3 bootstrap.py test   # every test tier that fits (what CI runs)

Creates ``.venv`` beside this file, installs the project with pip (torch and torchvision pinned by
``constraints.txt``), removes the ``dataclasses`` backport that img2dataset drags in (it breaks Prefect's
server on Python 3.11, see shared/INSTALL-NOTES.md), and re-installs only when pyproject.toml or
constraints.txt change. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")


def _run(cmd: list[str], **kw) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def ensure_env(extras: str) -> None:
    if sys.version_info < (3, 10):  # noqa: UP036 - bootstrap runs under any python3
        sys.exit(f"bootstrap: Python >= 3.10 is needed (3.11 is tested); this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"bootstrap: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".react-installed-{extras or 'base'}"
    digest = hashlib.sha256(
        (HERE / "pyproject.toml").read_bytes() + (HERE / "constraints.txt").read_bytes() + extras.encode()
    ).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    target = f".[{extras}]" if extras else "."
    _run([PY, "-m", "pip", "install", "--disable-pip-version-check", "-c", "constraints.txt", "-e", target], cwd=HERE)
    # img2dataset depends on the 'dataclasses' backport, which shadows the standard library inside
    # Prefect's ephemeral server (python -m uvicorn --app-dir site-packages) and kills it on 3.11.
    _run([PY, "-m", "pip", "uninstall", "-y", "-q", "dataclasses"], cwd=HERE)
    stamp.write_text(digest)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "setup"):
        print(__doc__)
        return 2
    what, rest = argv[0], argv[1:]
    ensure_env("test" if what == "test" else "")
    env = dict(os.environ)
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if what == "setup":
        return 0
    if what == "demo":
        cmd = [BIN / "react", "demo", "--config", "deployments/demo.yaml", *rest]
    else:
        env.setdefault("HF_HUB_OFFLINE", "1")
        cmd = [PY, "-m", "pytest", *rest]
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=HERE, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
