"""The overlap audit finds evaluation images planted in the knowledge base."""

import io
import json

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from react_core.config import IndexConfig, RetrievalConfig
from react_core.data.datasets import read_vision_dataset
from react_core.knowledge.embed import embed_knowledge_base
from react_core.knowledge.index import build_indices
from react_core.knowledge.retrieve import read_manifest, retrieve
from react_core.models import create_model, model_file
from react_core.registry import TaskSpec
from react_core.storage import join

pytestmark = pytest.mark.integration


def reencoded(data: bytes) -> bytes:
    """The same picture as a re-upload would have it: upscaled, JPEG at quality 60."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    buf = io.BytesIO()
    img.resize((img.width * 2, img.height * 2), Image.BICUBIC).save(buf, format="JPEG", quality=60)
    return buf.getvalue()


@pytest.fixture(scope="module")
def planted(tiny_chain, tmp_path_factory):
    """The tiny knowledge base plus one shard of 8 miniweb-fine test images (4 exact, 4 re-encoded)."""
    st, world = tiny_chain["storage"], tiny_chain["world"]
    test = read_vision_dataset(st, join(world, "tasks", "miniweb-fine"), "test")
    out = tmp_path_factory.mktemp("planted")
    picks = list(range(0, len(test), max(1, len(test) // 8)))[:8]
    with wds.TarWriter(str(out / "planted.tar")) as sink:
        for j, i in enumerate(picks):
            data = st.read_bytes(test.images[i])
            name = test.classnames[test.targets[i][0]]
            sink.write({"__key__": f"planted{j:02d}", "jpg": data if j < 4 else reencoded(data),
                        "txt": f"a photo of a {name}.".encode(), "json": json.dumps({"url": f"p/{j}.jpg"}).encode()})  # fmt: skip
    shards = [*st.ls(join(world, "kb", "shards"), "*.tar"), f"file://{out}/planted.tar"]
    model, tok = create_model(tiny_chain["config"].model.name, model_file(tiny_chain["base"]), storage=st)
    emb = embed_knowledge_base(model, tok, st, shards, st.stage("embed-planted", {}), progress=False)
    idx = build_indices(st, emb, st.stage("index-planted", {}), IndexConfig(index_key="Flat", recall_queries=20), k=40)
    task = TaskSpec("miniweb-fine", test.classnames, test.templates)
    return st, model, tok, emb, idx, task, test, {f"planted{j:02d}" for j in range(len(picks))}


def test_planted_duplicates_are_found_and_dropped(planted):
    st, model, tok, emb, idx, task, test, keys = planted
    uri = retrieve(model, tok, st, emb, idx, task, RetrievalConfig(k=40), st.stage("r-drop", {}), [test])
    overlap = st.read_json(join(uri, "overlap.json"))
    found = {d["key"] for d in overlap["duplicates"]}
    assert keys <= found, f"missed {sorted(keys - found)}"
    summary = st.stage_manifest(uri)["overlap"]
    assert summary["duplicates"] == summary["dropped"] == len(found)
    # The micro model puts most images of a concept above 0.95 (embedding matches are many); the hash
    # tells the planted copies (distance 0 exact, <= 10 re-encoded) from look-alikes (>= 12 here).
    assert found == keys and summary["embedding_matches"] > len(keys)
    exact = [d for d in overlap["duplicates"] if int(d["key"][-2:]) < 4]
    assert len(exact) == 4 and all(d["similarity"] > 0.999 and d["hash_distance"] == 0 for d in exact)
    assert not set(read_manifest(st, uri)["key"]) & keys
    assert st.stage_manifest(uri)["counts"]["overlap.duplicates"] == len(found)


def test_flag_keeps_the_pairs_and_marks_them(planted):
    st, model, tok, emb, idx, task, test, keys = planted
    cfg = RetrievalConfig(k=40, audit={"action": "flag"})
    m = read_manifest(st, retrieve(model, tok, st, emb, idx, task, cfg, st.stage("r-flag", {}), [test]))
    marked = set(m.loc[m["overlap"], "key"])
    assert keys <= marked and m["overlap_similarity"].between(-1.01, 1.01).all()
    assert np.all(m.loc[m["key"].isin(keys), "overlap_similarity"] > 0.8)
