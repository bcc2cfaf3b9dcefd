import shutil
from pathlib import Path

import react_core
from react_core.config import ConfigError
from react_core.storage import StorageError
from tasks.common import CACHE, LibraryCode, is_transient, source_hash


def test_only_transient_errors_are_retried():
    assert is_transient(ConnectionError("reset")) and is_transient(TimeoutError())
    assert is_transient(OSError(104, "Connection reset by peer"))
    assert not is_transient(ConfigError("training.lr: bad")) and not is_transient(StorageError("no root"))
    assert not is_transient(ValueError("bad input")) and not is_transient(OSError(2, "No such file"))


def test_cache_keys_follow_the_library_source(tmp_path):
    assert any(isinstance(p, LibraryCode) for p in CACHE.inner.policies)
    copy = tmp_path / "react_core"
    shutil.copytree(Path(react_core.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = source_hash(copy)
    assert before == source_hash(Path(react_core.__file__).parent)
    (copy / "miniweb" / "render.py").write_text((copy / "miniweb" / "render.py").read_text() + "\n# changed\n")
    assert source_hash(copy) != before
