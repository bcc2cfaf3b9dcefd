"""A full disk under the storage root: one ``error:`` line naming the root, what is kept and the fix, exit 2, no
traceback; once there is room the run resumes. The disk is a tiny tmpfs mounted for the test (Linux, root); where
mounting is not allowed the test says so and skips."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY_PRESET

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path):
    """A 17 MiB filesystem: the tiny world's mini-web (~14 MiB) fits, its base model (~6 MiB) does not."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=17m", "tmpfs", str(mnt)], capture_output=True,
                          text=True, check=False)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()[:200]}): the disk-full test needs Linux and root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _demo(tmp_path, root):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "react_cli.main", "demo", "-q", "-c", str(TINY_PRESET), "-s", f"storage.root={root}"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200, check=False)


def test_a_full_disk_is_one_line_naming_the_root_and_what_is_kept(tmp_path, small_disk):
    root = small_disk / "r"
    run = _demo(tmp_path, root)
    out = run.stdout + run.stderr
    assert run.returncode == 2, out[-4000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out[-4000:]
    assert "no space left on the device holding" in errors[0] and str(root) in errors[0], errors[0]
    assert "free space there" in errors[0], errors[0]
    kept = sorted(p.parent.parent.name for p in root.glob("*/*/_SUCCESS"))
    assert kept and f"the finished stages ({', '.join(kept)}) are kept" in errors[0], (kept, errors[0])
    assert "Traceback" not in out, out[-6000:]

    # Room again (the same disk, grown): the run resumes from what was kept.
    mtimes = {p: p.stat().st_mtime_ns for p in root.glob("*/*/_SUCCESS")}
    subprocess.run(["mount", "-o", "remount,size=512m", str(small_disk)], check=True)
    again = _demo(tmp_path, root)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items()), "a kept stage was made again"
