"""What a worker's Python environment is, against the lock of the code it runs.

A deployment run executes the deployed commit's code (a fresh clone) with the packages installed on the worker; a
worker set up from an older lock runs new code on old packages. :func:`lock_drift` says so in one line."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock.txt"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(lock: Path) -> dict[str, str]:
    """``{canonical name: version}`` of the ``name==version`` lines of a pip-compile lock (the same rule as
    bootstrap.py, which stays standard-library only and outside the package)."""
    pins = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        if m := _PIN.match(line):
            pins[_canonical(m.group(1))] = m.group(2)
    return pins


def installed_versions() -> dict[str, str]:
    """The version ``import`` finds for each distribution: the first on ``sys.path`` (setuptools puts its vendored
    copies, e.g. an older importlib-metadata, on the path after site-packages: they must not win)."""
    out: dict[str, str] = {}
    for d in importlib.metadata.distributions():
        out.setdefault(_canonical(d.metadata["Name"] or ""), d.version)
    return out


def lock_drift(lock: Path = LOCK, installed: dict[str, str] | None = None) -> str | None:
    """One line naming the packages whose installed version is not the lock's (up to 5, then a count), or None
    when they agree or there is no lock beside the code (an installed wheel)."""
    if not lock.is_file():
        return None
    have = installed_versions() if installed is None else installed
    pins = lock_pins(lock)
    moved = [f"{n} {have[n]} (lock: {v})" for n, v in sorted(pins.items()) if n in have and have[n] != v]
    missing = [f"{n} (lock: {v})" for n, v in sorted(pins.items()) if n not in have]
    if not moved and not missing:
        return None
    shown = [*moved, *(f"{m} not installed" for m in missing)]
    more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
    return (
        f"this environment differs from {lock.name} of the code it runs: {', '.join(shown[:5])}{more}; fix: run "
        "`python3 bootstrap.py setup` in a checkout of this commit on the worker (or rebuild its image), then "
        "restart the worker"
    )
