"""The lock (requirements.lock.txt) agrees with pyproject.toml, and every install path uses it.

A dependency added to pyproject.toml and not to the lock (or the other way round) fails here with the
command that fixes it; bootstrap.py refuses a lock that does not match, or one made for another platform,
with one line and before it creates anything.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
import bootstrap

FIX = "run `python3 bootstrap.py lock`"


def test_the_lock_covers_every_declared_dependency_within_its_range():
    problems = bootstrap.lock_problems()
    assert not problems, "\n".join(problems) + f"\n{FIX} to refresh requirements.lock.txt"


def test_the_lock_is_made_for_the_platform_ci_and_the_worker_image_run():
    assert bootstrap.lock_platform() == "cp311-linux-x86_64"
    text = bootstrap.LOCK.read_text()
    assert "--hash=sha256:" in text
    for line in text.splitlines():  # every pin is exact and carries hashes (pip's --require-hashes needs both)
        if line and not line.startswith((" ", "#")):
            assert "==" in line and line.rstrip().endswith("\\"), line
    assert "dataclasses" not in bootstrap.lock_pins(), "the backport shadows the stdlib in Prefect's server"


def _project(tmp_path: Path, dependencies: list[str], test_extra: list[str] | None = None) -> Path:
    extra = test_extra if test_extra is not None else ["pytest>=8"]
    path = tmp_path / "pyproject.toml"
    path.write_text(
        "[project]\nname = 'x'\nversion = '0'\n"
        f"dependencies = {dependencies!r}\n"
        f"[project.optional-dependencies]\ntest = {extra!r}\n"
    )
    return path


def _lock(tmp_path: Path, pins: dict[str, str], platform: str = "cp311-linux-x86_64") -> Path:
    path = tmp_path / "requirements.lock.txt"
    lines = [f"{bootstrap.PLATFORM_LINE}{platform}"]
    for name, version in pins.items():
        lines += [f"{name}=={version} \\", "    --hash=sha256:" + "0" * 64, "    # via x"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_dependency_missing_from_the_lock_is_named(tmp_path):
    project = _project(tmp_path, ["prefect>=3.9", "Open_Clip_Torch>=3"])
    lock = _lock(tmp_path, {"prefect": "3.9.1", "pytest": "8.0"})
    problems = bootstrap.lock_problems(lock, project, tmp_path / "none.txt")
    assert problems == ["Open_Clip_Torch (from pyproject.toml dependencies) is not in requirements.lock.txt"]


def test_a_pin_outside_the_declared_range_is_named(tmp_path):
    project = _project(tmp_path, ["fastapi<0.151", "open_clip_torch>=3"], ["pytest>=9"])
    lock = _lock(tmp_path, {"fastapi": "0.165.0", "open-clip-torch": "3.3.0", "pytest": "8.4"})
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# pair\ntorch==2.14.1\n")
    problems = bootstrap.lock_problems(lock, project, constraints)
    assert problems == [
        "requirements.lock.txt pins fastapi==0.165.0, outside '<0.151' (from pyproject.toml dependencies)",
        "requirements.lock.txt pins pytest==8.4, outside '>=9' (from pyproject.toml [test])",
        "torch (from constraints.txt) is not in requirements.lock.txt",
    ]


def _bootstrap_copy(tmp_path: Path, lock_pins: dict[str, str], platform: str) -> Path:
    """bootstrap.py beside this repo's pyproject.toml and a lock of our making, in a folder of its own."""
    shutil.copy(REPO / "bootstrap.py", tmp_path / "bootstrap.py")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copy(REPO / "constraints.txt", tmp_path / "constraints.txt")
    _lock(tmp_path, lock_pins, platform)
    return tmp_path / "bootstrap.py"


def _run_setup(script: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), "setup"],
        capture_output=True,
        text=True,
        cwd=script.parent,
        timeout=120,
        check=False,
    )


def test_bootstrap_refuses_a_lock_for_another_platform_in_one_line_and_creates_nothing(tmp_path):
    script = _bootstrap_copy(tmp_path, bootstrap.lock_pins(), "cp312-darwin-arm64")
    out = _run_setup(script)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "requirements.lock.txt is for cp312-darwin-arm64, this is cp311-linux-x86_64" in lines[0]
    assert "python3 bootstrap.py lock" in lines[0] and "pip install -e" in lines[0]
    assert not (tmp_path / ".venv").exists()


def test_bootstrap_refuses_a_lock_that_does_not_match_pyproject_and_creates_nothing(tmp_path):
    pins = {k: v for k, v in bootstrap.lock_pins().items() if k != "mlflow"}
    script = _bootstrap_copy(tmp_path, pins, bootstrap.this_platform())
    out = _run_setup(script)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        (
            "bootstrap: requirements.lock.txt does not match pyproject.toml: mlflow (from pyproject.toml dependencies)"
            " is not in requirements.lock.txt; run `python3 bootstrap.py lock` to refresh it"
        )
    ]
    assert not (tmp_path / ".venv").exists()


def test_prefect_yaml_and_the_worker_image_use_the_locked_versions():
    pins = bootstrap.lock_pins()
    assert str(yaml.safe_load((REPO / "prefect.yaml").read_text())["prefect-version"]) == pins["prefect"]
    docker = (REPO / "infra" / "worker.Dockerfile").read_text()
    copied = " ".join(line for line in docker.splitlines() if line.startswith("COPY"))
    assert "requirements.lock.txt" in copied and "bootstrap.py" in copied
    assert "bootstrap.py setup" in docker, "the image installs through the same path as CI and a checkout"


@pytest.mark.skipif(
    Path(sys.prefix).resolve() != (REPO / ".venv").resolve(), reason="not running in bootstrap.py's .venv"
)
def test_the_running_environment_is_exactly_the_lock():
    pins = bootstrap.lock_pins()
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})  # not setuptools' _vendor
    installed = {
        bootstrap._canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions(path=site)
    }
    installed.pop("react-customize")
    installed.pop("pip")  # the venv's own, from the interpreter's ensurepip
    assert {n: v for n, v in installed.items() if pins.get(n) != v} == {}
    assert set(pins) - set(installed) == set()
