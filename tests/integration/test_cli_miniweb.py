"""`react miniweb generate` and `react miniweb serve` as a user runs them."""

import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import TINY_PRESET, free_port

pytestmark = pytest.mark.integration
REACT = [sys.executable, "-m", "react_cli.main"]


def test_generate_then_serve_for_img2dataset(tmp_path):
    common = ["-c", str(TINY_PRESET), "-s", f"storage.root={tmp_path}", "-q"]
    gen = subprocess.run([*REACT, "miniweb", "generate", *common], capture_output=True, text=True, check=False)
    assert gen.returncode == 0, gen.stderr
    uri = gen.stdout.splitlines()[0]
    assert uri.startswith(f"file://{tmp_path}/miniweb/")
    assert "kb.pairs" in gen.stdout and "800" in gen.stdout

    port = free_port()
    urls = tmp_path / "urls.parquet"
    proc = subprocess.Popen(
        [*REACT, "miniweb", "serve", *common, "--port", str(port), "--write-urls", str(urls)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]  # blocks until the server says it is up
        assert f"http://127.0.0.1:{port}/" in lines[1], lines
        df = pd.read_parquet(urls)
        assert len(df) == 800 and df["url"].str.startswith(f"http://127.0.0.1:{port}/images/").all()
        served = 0
        for url in df["url"].iloc[:20]:
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    served += r.read()[:2] == b"\xff\xd8"
            except urllib.error.HTTPError as e:
                assert e.code == 404  # a dead link, as the corpus intends
        assert served >= 15
    finally:
        proc.send_signal(signal.SIGINT)
        try:  # communicate, not wait: it drains the pipes, so a chatty server cannot block on a full one
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the server did not stop on SIGINT; its stderr ends with: {err[-3000:]}")
        assert proc.returncode == 0, err[-3000:]
    assert Path(urls).exists()
