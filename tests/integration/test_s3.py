"""The same storage code against a real S3 API (moto's server on 127.0.0.1)."""

import json
import time
import urllib.request

import pytest
import torch

from react_core.data.datasets import read_vision_dataset
from react_core.miniweb.serve import MiniWebServer
from react_core.pipeline import run_miniweb
from react_core.storage import Storage, StorageError, join
from tests.conftest import free_port, tiny_config

pytestmark = pytest.mark.integration


def test_stage_on_s3(s3_endpoint):
    st = Storage("s3://react-test/stages", {"endpoint_url": s3_endpoint})
    st.check_writable()
    stage = st.stage("x", {"a": 1})
    st.write_json(stage.file("data.json"), {"v": 1})
    assert not stage.done
    stage.complete(counts={"n": 1})
    assert stage.done and st.stage_manifest(stage.uri)["counts"] == {"n": 1}
    assert st.read_json(stage.file("data.json")) == {"v": 1}
    assert st.ls(stage.uri) == [stage.file("_SUCCESS"), stage.file("data.json")]
    many = [stage.file("many", f"{i}.json") for i in range(40)]
    for i, u in enumerate(many):
        st.write_json(u, {"i": i})
    assert [json.loads(b)["i"] for b in st.read_many(many[::-1])] == list(range(39, -1, -1))  # concurrent reads


def test_miniweb_generated_onto_s3_reads_back_and_serves(s3_endpoint):
    cfg = tiny_config(
        "s3://react-test/world",
        **{"storage.options": f"{{endpoint_url: {s3_endpoint}}}", "miniweb.kb_size": 300, "miniweb.generic_size": 300},
    )
    st = Storage(cfg.storage.root, cfg.storage.options)
    uri = run_miniweb(st, miniweb=cfg.miniweb, processes=1)
    assert uri.startswith("s3://react-test/world/miniweb/")
    assert st.stage_manifest(uri)["counts"]["kb.pairs"] == 300
    data = read_vision_dataset(st, join(uri, "tasks", "miniweb-fine"), "test")
    assert len(data) == cfg.miniweb.fine_grained_classes * cfg.miniweb.test_per_class
    image, label = data.torch_dataset(cfg.miniweb.image_size)[len(data) - 1]  # decoded from S3
    assert image.shape == (3, cfg.miniweb.image_size, cfg.miniweb.image_size) and image.dtype == torch.uint8
    assert int(label) == cfg.miniweb.fine_grained_classes - 1
    with MiniWebServer(st, uri) as server:
        row = server.urls().iloc[0]
        if st.exists(join(uri, "kb", row["url"][len(server.base_url) :])):
            with urllib.request.urlopen(row["url"], timeout=10) as r:
                assert r.read()[:2] == b"\xff\xd8"  # a JPEG


def test_unreachable_endpoint_fails_fast_with_the_fix():
    st = Storage("s3://react-test/x", {"endpoint_url": f"http://127.0.0.1:{free_port()}"})
    t0 = time.time()
    with pytest.raises(StorageError, match="not writable.*endpoint_url"):
        st.check_writable()
    assert time.time() - t0 < 60


def test_elevater_layout_with_zipped_images_is_read_from_s3(s3_endpoint):
    """ELEVATER's text index pointing into a zip, read over S3 (zip members by range reads through s3fs)."""
    from react_core.data.datasets import open_dataset
    from tests.unit.test_eval_datasets import level_of, write_text_index

    st = Storage("s3://react-test/elevater", {"endpoint_url": s3_endpoint})
    write_text_index(st, st.uri("toy"))
    ds = open_dataset(st, st.uri("toy"), "test")
    assert ds.classnames == ["cat", "dog", "owl"] and ds.images[0].startswith("s3://react-test/elevater/toy/")
    from react_core.data.datasets import loader

    batches = loader(ds, image_size=8, batch_size=4, num_workers=2, device=torch.device("cpu"))
    pairs = [(level_of(x), int(y)) for xb, yb in batches for x, y in zip(xb, yb)]
    assert len(pairs) == 6 and all(level == label for level, label in pairs)
