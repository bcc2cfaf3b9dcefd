import shutil
from pathlib import Path

import react_core
from react_core.config import ConfigError, DownloadConfig, StorageConfig
from react_core.storage import StorageError
from tasks.common import StageIdentity, is_transient, source_hash


def test_only_transient_errors_are_retried():
    assert is_transient(ConnectionError("reset")) and is_transient(TimeoutError())
    assert is_transient(OSError(104, "Connection reset by peer"))
    assert not is_transient(ConfigError("training.lr: bad")) and not is_transient(StorageError("no root"))
    assert not is_transient(ValueError("bad input")) and not is_transient(OSError(2, "No such file"))


def test_cache_keys_follow_the_library_source(tmp_path):
    copy = tmp_path / "react_core"
    shutil.copytree(Path(react_core.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = source_hash(copy)
    assert before == source_hash(Path(react_core.__file__).parent)
    (copy / "miniweb" / "render.py").write_text((copy / "miniweb" / "render.py").read_text() + "\n# changed\n")
    assert source_hash(copy) != before


class _Records:
    """A result store holding the given keys (what Prefect's task context hands a cache policy)."""

    def __init__(self, keys=()):
        self.result_store, self.task = self, type("T", (), {"name": "download"})
        self.keys = set(keys)

    def exists(self, key):
        return key in self.keys


def test_a_stage_task_is_keyed_by_the_stage_it_builds(tmp_path):
    policy, storage = StageIdentity(), StorageConfig(root=str(tmp_path))

    def key(ctx=None, **download):
        inputs = {"download": DownloadConfig(**download), "retrieve_uri": "file:///r/v", "miniweb_uri": None}
        return policy.compute_key(
            ctx or _Records(), {"entry": "run_download", "storage": storage, "inputs": inputs}, {}
        )

    assert key() == key() and key(timeout=11) != key()  # an identity field changes the key
    from react_core import pipeline
    from react_core.executor import identity
    from react_core.storage import Storage

    st = Storage(str(tmp_path))
    stage = identity(pipeline.run_download, st, download=DownloadConfig(), retrieve_uri="file:///r/v", miniweb_uri=None)
    assert stage.uri.startswith(st.uri("download")) and not stage.done
    # a record under the key whose stage is gone (never built, deleted) is not served: the task runs
    assert key(_Records({key()})) is None
    stage.complete()
    assert key(_Records({key()})) == key()
    # an entry point that cannot derive its stage (bad inputs) is run uncached, to raise its own error
    bad = {
        "entry": "run_download",
        "storage": storage,
        "inputs": {"download": None, "retrieve_uri": "x", "miniweb_uri": None},
    }
    assert policy.compute_key(_Records(), bad, {}) is None
