import os
import uuid

import pytest

from react_core.config_loading import load_config
from react_core.storage import SUCCESS, Storage, StorageError, normalize_uri, version_hash


@pytest.fixture(params=["memory", "file"])
def storage(request, tmp_path):
    if request.param == "memory":
        return Storage(f"memory://react-{uuid.uuid4().hex[:8]}")
    return Storage(str(tmp_path / "root"))


def test_local_paths_become_absolute_file_uris(tmp_path):
    assert normalize_uri(str(tmp_path)) == f"file://{tmp_path}"
    assert normalize_uri("s3://bucket/x/") == "s3://bucket/x"
    with pytest.raises(StorageError, match="empty"):
        normalize_uri("  ")


def test_version_hash_is_stable_and_sensitive_to_config_and_inputs():
    a = load_config().miniweb
    b = load_config(overrides=["miniweb.seed=1"]).miniweb
    assert version_hash(a, {"x": "u"}) == version_hash(load_config().miniweb, {"x": "u"})
    assert version_hash(a, {"x": "u"}) != version_hash(b, {"x": "u"})
    assert version_hash(a, {"x": "u"}) != version_hash(a, {"x": "v"})
    assert len(version_hash(a)) == 12


def test_stage_lifecycle(storage):
    stage = storage.stage("embed", {"k": 1}, {"up": "file:///x"})
    assert stage.uri == storage.uri("embed", stage.version)
    assert not stage.done
    storage.write_bytes(stage.file("part-0.bin"), b"abc")
    assert not stage.done  # files without the marker are not a finished stage
    stage.complete(counts={"rows": 3})
    assert stage.done
    m = storage.stage_manifest(stage.uri)
    assert m["counts"] == {"rows": 3} and m["inputs"] == {"up": "file:///x"} and m["config"] == {"k": 1}
    assert storage.read_bytes(stage.file("part-0.bin")) == b"abc"


def test_clear_removes_leftovers_of_an_interrupted_attempt(storage):
    stage = storage.stage("s", {"k": 2})
    storage.write_bytes(stage.file("half.bin"), b"x")
    stage.clear()
    assert not storage.exists(stage.file("half.bin"))
    storage.write_bytes(stage.file("whole.bin"), b"y")
    stage.complete()
    stage.clear()  # a complete stage is never cleared
    assert storage.exists(stage.file("whole.bin"))


def test_incomplete_stage_manifest_is_a_clear_error(storage):
    with pytest.raises(StorageError, match=f"no {SUCCESS}"):
        storage.stage_manifest(storage.uri("x", "y"))


def test_atomic_local_write_leaves_no_temporary_files(tmp_path):
    st = Storage(str(tmp_path))
    for i in range(3):
        st.write_json(st.uri("a", "b.json"), {"i": i})
    assert os.listdir(tmp_path / "a") == ["b.json"]
    assert st.read_json(st.uri("a", "b.json")) == {"i": 2}


def test_missing_artifact_names_uri(storage):
    with pytest.raises(StorageError, match="does not exist"):
        storage.read_bytes(storage.uri("nope.bin"))


def test_read_many_keeps_the_order_asked_for_and_names_a_missing_file(storage):
    uris = [storage.uri("s", f"stats_{i}.json") for i in (3, 1, 2)]
    for i, u in enumerate(uris):
        storage.write_bytes(u, f"{i}".encode())
    assert storage.read_many(uris) == [b"0", b"1", b"2"]
    assert storage.read_many(uris[:1]) == [b"0"] and storage.read_many([]) == []
    with pytest.raises(StorageError, match="stats_9.json does not exist"):
        storage.read_many([*uris, storage.uri("s", "stats_9.json")])


def test_unwritable_root_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    st = Storage(str(blocker / "sub"))  # a folder below a regular file cannot exist
    with pytest.raises(StorageError, match="not writable.*fix:"):
        st.check_writable()


def test_ls_lists_sorted_uris(storage):
    for n in ("b", "a", "c"):
        storage.write_bytes(storage.uri("d", f"{n}.tar"), b"")
    storage.write_bytes(storage.uri("d", "x.txt"), b"")
    assert [u.rsplit("/", 1)[1] for u in storage.ls(storage.uri("d"), "*.tar")] == ["a.tar", "b.tar", "c.tar"]


def test_a_stage_s_schema_is_part_of_its_identity(tmp_path):
    st = Storage(str(tmp_path))
    old = st.stage("embed", {"model": "m"}, {"shards": "s"})
    old.complete(counts={"n": 1})
    assert st.stage("embed", {"model": "m"}, {"shards": "s"}, schema=1).version == old.version  # schema 1: as before
    new = st.stage("embed", {"model": "m"}, {"shards": "s"}, schema=2)
    assert new.version != old.version and not new.done  # a folder in the older layout is never adopted
    new.complete()
    assert st.stage_manifest(new.uri)["schema"] == 2


@pytest.mark.parametrize("root", ["file", "memory"])
def test_a_stage_with_a_deleted_or_truncated_file_is_not_done_and_is_named(tmp_path, root):
    st = Storage(str(tmp_path) if root == "file" else f"memory://gone-{uuid.uuid4().hex[:8]}")
    stage = st.stage("train", {"lr": 1})
    st.write_bytes(stage.file("model.pt"), b"x" * 100)
    st.write_bytes(stage.file("checkpoints", "step-1.pt"), b"y")
    uri = stage.complete(counts={"pairs": 3})
    assert stage.manifest()["files"] == {"model.pt": 100}  # the top level only
    value = {"train": uri, "model": stage.file("model.pt"), "elsewhere": "s3://other/train/0123456789ab", "n": 3}
    assert stage.done and st.gone(value) == []

    st.write_bytes(stage.file("model.pt"), b"x" * 60)  # truncated
    assert not stage.done and st.gone(value) == [stage.file("model.pt")] * 2
    st.rm(stage.file("model.pt"))  # deleted
    assert not stage.done and st.gone([uri]) == [stage.file("model.pt")]
    st.write_bytes(stage.file("model.pt"), b"x" * 100)
    assert stage.done
    st.rm(stage.file(SUCCESS))
    assert not stage.done and st.gone((uri,)) == [stage.file(SUCCESS)]
    with pytest.raises(StorageError, match="run the flow again.*PREFECT_TASKS_REFRESH_CACHE=true"):
        st.stage_manifest(uri)


@pytest.mark.parametrize("root", ["file", "memory"])
def test_damage_that_keeps_a_file_s_size_is_found_by_its_content(tmp_path, root):
    import os

    st = Storage(str(tmp_path) if root == "file" else f"memory://same-size-{uuid.uuid4().hex[:8]}")
    stage = st.stage("retrieve", {"k": 1})
    good = os.urandom(4096)
    st.write_bytes(stage.file("manifest.parquet"), good)
    uri = stage.complete()
    assert set(stage.manifest()["digests"]["manifest.parquet"]) == {"tag", "sha256"}
    assert stage.done

    st.write_bytes(stage.file("manifest.parquet"), os.urandom(4096))  # garbage of the same size
    assert not stage.done and st.gone({"retrieve": uri}) == [stage.file("manifest.parquet")]
    st.write_bytes(stage.file("manifest.parquet"), good)  # written again with the same bytes (a copy, a restore)
    assert stage.done and st.gone([uri]) == []


def test_a_stage_finished_before_digests_were_recorded_is_checked_by_size(tmp_path):
    st = Storage(str(tmp_path))
    stage = st.stage("train", {"lr": 1})
    st.write_bytes(stage.file("model.pt"), b"x" * 10)
    stage.complete()
    manifest = stage.manifest()
    del manifest["digests"]
    st.write_json(stage.file(SUCCESS), manifest)
    st.write_bytes(stage.file("model.pt"), b"y" * 10)
    assert stage.done  # nothing to compare the content with: as before
    st.write_bytes(stage.file("model.pt"), b"y" * 9)
    assert not stage.done


def test_a_stage_lock_is_held_against_other_processes_and_reentrant_in_this_one(tmp_path):
    import subprocess
    import sys

    stage = Storage(str(tmp_path)).stage("download", {"a": 1})
    probe = (
        "import fcntl, sys\n"
        "f = open(sys.argv[1], 'a+')\n"
        "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
        "except BlockingIOError:\n    print('held')\n"
    )
    lock_file = str(tmp_path / ".locks" / f"download-{stage.version}.lock")

    def other_process() -> str:
        return subprocess.run(
            [sys.executable, "-c", probe, lock_file], check=True, capture_output=True, text=True
        ).stdout

    with stage.lock(), stage.lock():  # re-entered by the same thread (embed's finish inside embed_knowledge_base)
        assert other_process().strip() == "held"
    assert other_process().strip() == "free"


def test_an_s3_endpoint_that_accepts_but_never_answers_is_named_by_the_probe():
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # connections are accepted by the kernel; nothing ever answers
    port = listener.getsockname()[1]
    st = Storage("s3://react-silent/root", {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s"})
    caught: list[BaseException] = []
    probe = threading.Thread(target=lambda: _call(st.check_writable, caught), daemon=True)
    probe.start()
    probe.join(120)  # a guard, not a speed goal: without the probe's own timeouts this took 15 minutes
    listener.close()
    assert not probe.is_alive(), "the storage probe is still waiting for a silent endpoint"
    assert len(caught) == 1 and isinstance(caught[0], StorageError)
    assert f"the endpoint http://127.0.0.1:{port} accepted the connection but did not answer" in str(caught[0])
    assert "fix:" in str(caught[0])


def _call(fn, caught: list) -> None:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread
        caught.append(exc)
