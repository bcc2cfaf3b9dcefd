"""The CLI's Prefect never fails a run on a busy host: processes started together on one fresh PREFECT_HOME
while other work uses every core all start (no migration or block-registration race, no start timeout), and a
damaged Prefect database is one line naming the file."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY_PRESET

pytestmark = pytest.mark.integration

# What a `react` command does before its flow, then a flow run (which needs the migrated database).
PROBE = (
    "from react_cli.main import _env_defaults; _env_defaults()\n"
    "from react_cli.prefect_api import ensure_api; ensure_api()\n"
    "from prefect import flow\n"
    "print('flow result', flow(name='probe')(lambda: 41 + 1)())\n"
)


@pytest.fixture
def busy_cores():
    """Another process per core, spinning: the host is busy as a user's or a CI host can be."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    yield
    for b in burners:
        b.kill()
        b.wait()


def test_processes_started_together_on_a_fresh_prefect_home_all_start_on_a_busy_host(tmp_path, busy_cores):
    for round_ in range(5):
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / f"home-{round_}"), "PREFECT_LOGGING_LEVEL": "WARNING"}
        env.pop("PREFECT_API_URL", None)
        env.pop("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", None)  # the CLI's own default applies
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", PROBE],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=600)[0] for p in procs]
        for p, out in zip(procs, outs, strict=True):
            assert p.returncode == 0 and "flow result 42" in out, f"round {round_}: {out[-3000:]}"
            assert "Traceback" not in out, f"round {round_}: {out[-3000:]}"


def test_a_damaged_prefect_database_is_one_line_naming_it(tmp_path):
    home = tmp_path / "prefect"
    home.mkdir()
    db = home / "prefect.db"
    db.write_bytes(os.urandom(64 * 1024))  # what a disk error or a bad copy leaves
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "react_cli.main", "demo", "-c", str(TINY_PRESET), "-s", f"storage.root={tmp_path}/r"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: Prefect's database {db} is damaged"), out.stderr[-3000:]
    assert f"fix: move it aside (mv {db} {db}.damaged)" in lines[0]
