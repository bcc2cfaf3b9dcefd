"""A user's own task file, end to end exactly as the README prints it, then damage that keeps files' sizes.

The README's "Your own task" block is run as printed (in a folder of its own, the repository's presets beside
it): it must register a model named after the task, not after the file's path. Then the customized model and
the retrieved manifest are overwritten with garbage of the same size, as a bad copy or a disk error leaves them:
evaluating the damaged model is one line naming it, and the next run names and rebuilds exactly those stages.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def readme_block(heading: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)


def run(cmd, cwd, env, shell=False):
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=env,
        shell=shell,
        capture_output=True,
        text=True,
        check=False,
        executable="/bin/bash" if shell else None,
        timeout=900,
    )


def test_the_readme_custom_task_runs_as_printed_and_same_size_damage_is_rebuilt(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "deployments").symlink_to(REPO / "deployments")
    (work / ".venv").symlink_to(Path(sys.executable).resolve().parents[1])
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO)}
    first = run(readme_block("Your own task"), work, env, shell=True)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "Traceback" not in first.stderr
    assert "retrieval for my-task.yaml" in first.stdout
    assert re.search(r"registered: +models:/react-my-task-react-micro-vit/1 \(now models:/react-my-task-react-micro-vit@",
                     first.stdout)  # fmt: skip
    table = first.stdout[first.stdout.index("dataset ") : first.stdout.index("customized model:")]

    root = work / "react-artifacts-tiny"
    model = next(root.glob("train/*/model.pt"))
    manifest = next(root.glob("retrieve/*/manifest.parquet"))
    good_model = model.read_bytes()
    model.write_bytes(os.urandom(len(good_model)))  # same size: the size check alone saw nothing

    evaluate = [str(work / ".venv/bin/react"), "evaluate", "-c", "deployments/tiny.yaml", "--customized", str(model)]
    bad = run(evaluate, work, env)
    assert bad.returncode == 2, bad.stdout[-2000:] + bad.stderr[-3000:]
    err = [line for line in bad.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(err) == 1 and f"{model} cannot be trusted" in err[0] and "fix: run the customize flow again" in err[0]
    assert "Traceback" not in bad.stderr

    manifest.write_bytes(os.urandom(manifest.stat().st_size))
    again = run(
        [str(work / ".venv/bin/react"), "demo", "-c", "deployments/tiny.yaml", "-s", "retrieval.task=my-task.yaml"],
        work,
        env,
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    assert f"{manifest}" in again.stderr and f"{model}" in again.stderr  # each damaged file named
    assert next(root.glob("train/*/model.pt")) == model  # rebuilt at the same place ...
    assert again.stdout[again.stdout.index("dataset ") : again.stdout.index("customized model:")] == table
    assert "registered by an earlier run" in again.stdout  # ... and the registered version still points at it
