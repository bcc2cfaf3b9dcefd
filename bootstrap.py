#!/usr/bin/env python3
"""Set everything up from nothing but Python 3.11, then run the demo or the tests.

    python3 bootstrap.py demo   # the whole pipeline on the embedded mini-web
    python3 bootstrap.py test   # every test tier that fits (what CI runs)
    python3 bootstrap.py setup  # only the install
    python3 bootstrap.py lock   # re-resolve requirements.lock.txt (maintainers; says what moved)

Creates ``.venv`` beside this file and installs exactly ``requirements.lock.txt`` into it (every package
pinned with its hashes; the same file the worker image installs), then the project itself without its
dependencies. When the lock changes, ``.venv`` is rebuilt from scratch, so it never holds what the lock
does not name; an install that fails part-way is rebuilt on the next run. Standard library only.

The lock covers CPython 3.11 on Linux x86_64 (its header says so). On another platform this script stops
with one line saying how to proceed: ``python3 bootstrap.py lock`` to resolve one for that platform, or a
plain ``pip install -e '.[test]'`` into your own environment, which follows pyproject.toml's ranges.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
LOCK = HERE / "requirements.lock.txt"
PYPROJECT = HERE / "pyproject.toml"
CONSTRAINTS = HERE / "constraints.txt"
STAMP = VENV / ".react-lock"
LOCK_COMMAND = "python3 bootstrap.py lock"
# The extras the lock resolves beside the base dependencies (not `gpu`: faiss-gpu is for CUDA images).
LOCKED_EXTRAS = ("test", "dask", "workers")
# pip-tools, not uv or poetry: pip-compile resolves through pip itself, so it sees the same indexes and
# local package files pip is configured with (here, the torch/torchvision wheels on this machine's disk;
# uv and poetry ignore pip's configuration and fetch a 3 GB CUDA torch on every fresh machine), and its
# output is a plain requirements file that pip installs with --require-hashes, in CI and in the image.
PIP_TOOLS = "pip-tools==7.6.2"
LOCK_VENV = HERE / ".venv-lock"
# img2dataset depends on the `dataclasses` backport, which shadows the standard library inside Prefect's
# ephemeral server (python -m uvicorn --app-dir site-packages) and kills it on 3.11. It is
# kept out of the lock (an "unsafe" package for pip-compile) and the lock is installed with --no-deps.
EXCLUDED = ("dataclasses",)
PLATFORM_LINE = "# lock-platform: "


class BootstrapError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def this_platform() -> str:
    """The tag a lock is made for: ``cp311-linux-x86_64`` (implementation, version, OS, machine)."""
    impl = {"cpython": "cp"}.get(sys.implementation.name, sys.implementation.name)
    return f"{impl}{sys.version_info[0]}{sys.version_info[1]}-{sys.platform}-{platform.machine().lower()}"


def lock_platform(lock: Path = LOCK) -> str | None:
    for line in lock.read_text().splitlines()[:20]:
        if line.startswith(PLATFORM_LINE):
            return line[len(PLATFORM_LINE) :].split()[0]
    return None


def lock_pins(lock: Path = LOCK) -> dict[str, str]:
    """``{canonical name: version}`` of every ``name==version`` line of a pip-compile output."""
    pins = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if m:
            pins[_canonical(m.group(1))] = m.group(2)
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _packaging():
    """packaging's Requirement, from the environment or pip's vendored copy (bootstrap stays stdlib-only)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip vendors packaging; every python3 that can make a venv with pip has it
        from pip._vendor.packaging.requirements import Requirement
    return Requirement


def declared_requirements(pyproject: Path = PYPROJECT, constraints: Path = CONSTRAINTS) -> list[tuple[str, str, str]]:
    """(requirement, where it is declared, extra) for what the lock must cover: the base dependencies, the locked
    extras, the build requirements (the project installs without build isolation) and the constraints."""
    import tomllib

    toml = tomllib.loads(pyproject.read_text())
    project, name = toml["project"], pyproject.name
    out = [(r, f"{name} dependencies", "") for r in project.get("dependencies", [])]
    for extra in LOCKED_EXTRAS:
        out += [(r, f"{name} [{extra}]", extra) for r in project.get("optional-dependencies", {}).get(extra, [])]
    out += [(r, f"{name} build-system", "") for r in toml.get("build-system", {}).get("requires", [])]
    if constraints.exists():
        for line in constraints.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                out.append((line, constraints.name, ""))
    return out


def lock_problems(lock: Path = LOCK, pyproject: Path = PYPROJECT, constraints: Path = CONSTRAINTS) -> list[str]:
    """Every declared dependency that the lock lacks or pins outside its range (empty when they agree)."""
    Requirement = _packaging()
    pins = lock_pins(lock)
    problems = []
    for text, where, extra in declared_requirements(pyproject, constraints):
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue  # not for this platform
        name = _canonical(req.name)
        if name in EXCLUDED:
            continue
        if name not in pins:
            problems.append(f"{req.name} (from {where}) is not in {lock.name}")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{lock.name} pins {req.name}=={pins[name]}, outside '{req.specifier}' (from {where})")
    return problems


def check_lock() -> None:
    """The lock exists, is for this platform and agrees with pyproject.toml, else one line with the fix."""
    if not LOCK.exists():
        raise BootstrapError(f"{LOCK.name} is missing; run `{LOCK_COMMAND}` to create it")
    made_for, here = lock_platform(), this_platform()
    if made_for != here:
        raise BootstrapError(
            f"{LOCK.name} is for {made_for or 'an unknown platform'}, this is {here} "
            f"(Python {platform.python_version()} on {platform.system()} {platform.machine()}): use Python 3.11 on "
            f"Linux x86_64, or run `{LOCK_COMMAND}` to resolve a lock for this platform, or install without "
            f"the lock into your own environment: pip install -e '.[test]'"
        )
    problems = lock_problems()
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BootstrapError(
            f"{LOCK.name} does not match {PYPROJECT.name}: {problems[0]}{more}; run `{LOCK_COMMAND}` to refresh it"
        )


def ensure_env() -> None:
    """``.venv`` holds exactly the lock (rebuilt from scratch when the lock changed) and the project."""
    check_lock()
    lock_digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    project_digest = hashlib.sha256(PYPROJECT.read_bytes()).hexdigest()
    installed = STAMP.read_text().split() if STAMP.exists() else []
    if installed[:1] != [lock_digest]:
        if VENV.exists():
            why = "the lock changed" if installed else "it was not installed from the lock, or not completely"
            print(f"bootstrap: rebuilding {VENV.name} ({why})", flush=True)
            shutil.rmtree(VENV)
        print(f"bootstrap: creating {VENV} from {LOCK.name}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
        pip = [PY, "-m", "pip", "--disable-pip-version-check"]
        _run([*pip, "install", "--require-hashes", "--no-deps", "-r", LOCK], cwd=HERE)
        _verify_complete()
        installed = [lock_digest]
    if installed[1:2] != [project_digest]:
        # The project itself: no dependencies (the lock has them all), built with the lock's setuptools.
        _run([PY, "-m", "pip", "--disable-pip-version-check", "install", "--no-deps", "--no-build-isolation",
              "-e", "."], cwd=HERE)  # fmt: skip
        STAMP.write_text(f"{lock_digest} {project_digest}\n")


def _verify_complete() -> None:
    """pip check: every installed package's dependencies are installed, except the excluded backport."""
    out = subprocess.run([PY, "-m", "pip", "check"], capture_output=True, text=True, cwd=HERE, check=False)
    missing = [
        line
        for line in out.stdout.splitlines()
        if line.strip() and not any(f"requires {x}," in line for x in EXCLUDED) and "No broken" not in line
    ]
    if missing:
        raise BootstrapError(f"{LOCK.name} is incomplete: {missing[0]}; run `{LOCK_COMMAND}` to refresh it")


def lock(args: list[str]) -> int:
    """Re-resolve the lock with pip-compile and print what moved. Extra arguments go to pip-compile
    (e.g. ``--upgrade-package prefect`` to move one package; without arguments everything is re-resolved)."""
    if sys.version_info[:2] != (3, 11):
        print(f"bootstrap: note: resolving for Python {platform.python_version()}, not 3.11 as the committed lock")
    py = LOCK_VENV / "bin" / "python"
    if not py.exists():
        venv.EnvBuilder(with_pip=True).create(LOCK_VENV)
    _run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", PIP_TOOLS])
    before = lock_pins() if LOCK.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / LOCK.name
        if LOCK.exists() and args:
            shutil.copy(LOCK, out)  # a targeted upgrade keeps every other pin
        cmd = [
            py, "-m", "piptools", "compile", "--quiet", "--generate-hashes", "--strip-extras",
            *[f"--extra={e}" for e in LOCKED_EXTRAS],
            "--build-deps-for=editable",  # setuptools and wheel: the project installs without build isolation
            *[f"--unsafe-package={x}" for x in EXCLUDED],
            f"--constraint={CONSTRAINTS.name}", "--no-emit-index-url", "--no-emit-find-links",
            f"--output-file={out}", *(args or ["--upgrade"]), PYPROJECT.name,
        ]  # fmt: skip
        env = dict(os.environ, CUSTOM_COMPILE_COMMAND=LOCK_COMMAND)
        _run(cmd, cwd=HERE, env=env)
        text = out.read_text()
    header = (
        f"{PLATFORM_LINE}{this_platform()}\n"
        "# The complete dependency set (base, test, dask and workers extras) with hashes. bootstrap.py installs exactly\n"
        "# this with `pip install --require-hashes --no-deps`; so does infra/worker.Dockerfile.\n"
    )
    LOCK.write_text(header + text)
    after = lock_pins()
    _report_moves(before, after)
    problems = lock_problems()
    for p in problems:
        print(f"bootstrap: still disagrees: {p}")
    return 1 if problems else 0


def _report_moves(before: dict[str, str], after: dict[str, str]) -> None:
    moved = [f"  {n}: {before[n]} -> {after[n]}" for n in sorted(after) if n in before and before[n] != after[n]]
    added = [f"  + {n}=={after[n]}" for n in sorted(set(after) - set(before))]
    removed = [f"  - {n}=={before[n]}" for n in sorted(set(before) - set(after))]
    if not (moved or added or removed):
        print(f"bootstrap: {LOCK.name}: nothing moved ({len(after)} packages)")
        return
    print(f"bootstrap: {LOCK.name}: {len(moved)} moved, {len(added)} added, {len(removed)} removed")
    print("\n".join(moved + added + removed))


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "setup", "lock"):
        print(__doc__)
        return 2
    what, rest = argv[0], argv[1:]
    try:
        if what == "lock":
            return lock(rest)
        ensure_env()
    except BootstrapError as e:
        print(f"bootstrap: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"bootstrap: {e.cmd[0]} ... failed with exit code {e.returncode}; {VENV.name} will be rebuilt "
              "on the next run", file=sys.stderr)  # fmt: skip
        return e.returncode or 1
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
