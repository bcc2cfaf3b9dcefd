"""bench/gpu.py, the one command that measures every GPU figure, keeps working while no GPU is at hand.

``--dry`` runs the same code paths on the CPU at toy sizes; every section must produce its table (a section
that fails, e.g. because a library call it makes changed, fails this test), and without ``--dry`` on a
machine without CUDA the script refuses with one line.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu.py"


def test_dry_run_measures_every_section(tmp_path):
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry", "--json", str(out)],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry"] is True and report["environment"]["device"] == "cpu"
    for section in ("embed", "train", "retrieval", "eval"):
        assert "error" not in report[section], report[section]
        assert report[section]["rows"], section
        assert f"### {section}" in proc.stdout
    # embed: both models at both sizes, every throughput positive, ours measured against both bounds' lower
    embed = report["embed"]["rows"]
    assert len(embed) == 4
    for row in embed:
        ours, plain, decode = row[3], row[4], row[6]
        assert ours > 0 and plain > 0 and decode > 0
        assert row[9].endswith("of decode")  # no peak known on the CPU: the decode bound is the one
    # train: the four variants, each measured in its own process
    variants = {r[0]: r for r in report["train"]["rows"]}
    assert set(variants) == {"upstream", "upstream-no-ckpt", "ours", "ours+ckpt"}
    assert all(r[1] > 0 and r[4] is not None for r in variants.values())
    # retrieval: the approximate CPU index and exact search on the device both reach recall against exact search
    searches = {r[0]: r for r in report["retrieval"]["rows"]}
    assert searches["faiss, CPU"][4] >= 0.95
    assert searches["exact (torch matmul, cpu)"][4] == pytest.approx(1.0, abs=1e-6)
    # eval: our loader path predicts what the plain loop predicts
    assert report["eval"]["rows"][0][5] == "1.000"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal cannot happen")
def test_refuses_without_cuda_unless_dry(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA device") and "--dry" in lines[0]
    assert proc.stderr.strip() == ""
