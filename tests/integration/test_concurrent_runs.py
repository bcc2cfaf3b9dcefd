"""Two runs started at once on one fresh storage root (two terminals, two schedules firing together)."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY_PRESET

pytestmark = pytest.mark.integration


def test_two_processes_on_one_fresh_root_both_succeed_with_the_same_results(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_LOGGING_LEVEL": "WARNING"}
    cmd = [
        sys.executable,
        "-m",
        "react_cli.main",
        "demo",
        "-c",
        str(TINY_PRESET),
        "-s",
        f"storage.root={tmp_path}/root",
    ]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    tables = [re.findall(r"^miniweb-\S+ +\w+ +\w+ +[\d.]+ +[\d.]+ +[-+][\d.]+$", out, re.MULTILINE) for out in outs]
    assert len(tables[0]) == 4 and tables[0] == tables[1]  # fine, coarse, generic, captions
    models = [re.search(r"customized model: (\S+)", out).group(1) for out in outs]
    assert models[0] == models[1]
    assert len(os.listdir(tmp_path / "root" / "train")) == 1  # one stage, built once
