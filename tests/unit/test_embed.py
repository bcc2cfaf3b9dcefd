import io
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds

from react_core.data import decode_image, iter_shard, normalize
from react_core.knowledge.embed import EmbeddingError, embed_knowledge_base, load_embeddings, load_metadata
from react_core.models import create_model
from react_core.storage import Storage, join


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    model, tok = create_model("react-micro-vit")
    return model.eval(), tok


def _kb_shards(tiny_world):
    _, storage, uri = tiny_world
    return storage, storage.ls(join(uri, "kb", "shards"), "*.tar")


def test_embeddings_and_metadata_are_aligned_normalised_float16(tiny_world, micro, tmp_path):
    model, tok = micro
    storage, shards = _kb_shards(tiny_world)
    out = Storage(str(tmp_path))
    stage = out.stage("embed", {"t": 1})
    uri = embed_knowledge_base(model, tok, storage, shards, stage, batch_size=64, progress=False)
    meta = load_metadata(out, uri)
    img, txt = load_embeddings(out, uri, "img"), load_embeddings(out, uri, "text")
    n = sum(1 for s in shards for _ in iter_shard(storage, s))
    assert len(meta) == len(img) == len(txt) == n == out.stage_manifest(uri)["counts"]["embedded"]
    assert img.dtype == np.float16 and img.shape[1] == 32
    assert np.allclose(np.linalg.norm(img.astype(np.float32), axis=1), 1, atol=1e-2)
    assert {"key", "caption", "shard", "offset", "url"} <= set(meta.columns)
    # row 123 really is the sample at (shard, offset): recompute it from the shard
    row = meta.iloc[123]
    sample = list(iter_shard(storage, row["shard"]))[row["offset"]]
    assert sample["__key__"] == row["key"] and sample["txt"].decode() == row["caption"]
    with torch.no_grad():
        x = normalize(torch.from_numpy(decode_image(sample["jpg"], 32)[None]).permute(0, 3, 1, 2))
        ref_img = F.normalize(model.encode_image(x), dim=-1)[0].numpy()
        ref_txt = F.normalize(model.encode_text(tok([row["caption"]])), dim=-1)[0].numpy()
    assert np.allclose(img[123], ref_img, atol=2e-3) and np.allclose(txt[123], ref_txt, atol=2e-3)


def test_resume_re_embeds_only_missing_shards(tiny_world, micro, tmp_path):
    model, tok = micro
    storage, shards = _kb_shards(tiny_world)
    out = Storage(str(tmp_path))
    stage = out.stage("embed", {"t": 2})
    embed_knowledge_base(model, tok, storage, shards, stage, progress=False)
    first = load_embeddings(out, stage.uri)
    out.rm(stage.file("_SUCCESS"))  # as if the run had died after shard 1 ...
    out.rm(stage.file("metadata", "metadata_2.parquet"))  # ... before finishing shard 2
    embed_knowledge_base(model, tok, storage, shards, stage, progress=False)
    counts = out.stage_manifest(stage.uri)["counts"]
    assert counts["resumed_shards"] == len(shards) - 1
    assert np.array_equal(load_embeddings(out, stage.uri), first)


def test_undecodable_samples_are_skipped_and_counted(micro, tmp_path):
    model, tok = micro
    st = Storage(str(tmp_path))
    good = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(good, format="JPEG")
    shard = tmp_path / "bad.tar"
    with open(shard, "wb") as f, wds.TarWriter(f, encoder=False) as w:
        w.write({"__key__": "a", "jpg": good.getvalue(), "txt": b"red square"})
        w.write({"__key__": "b", "jpg": b"<html>not an image</html>", "txt": b"html as jpg"})
        w.write({"__key__": "c", "jpg": good.getvalue()[:40], "txt": b"truncated"})
        w.write({"__key__": "d", "txt": b"no image at all"})
    assert tarfile.is_tarfile(shard)
    stage = st.stage("embed", {"t": 3})
    uri = embed_knowledge_base(model, tok, st, [st.uri("bad.tar")], stage, progress=False)
    c = st.stage_manifest(uri)["counts"]
    assert (c["embedded"], c["skipped"]) == (1, 3)
    assert list(load_metadata(st, uri)["key"]) == ["a"]


def test_nan_embeddings_are_rejected_naming_the_shard(tiny_world, tmp_path):
    storage, shards = _kb_shards(tiny_world)
    model, tok = create_model("react-micro-vit")
    with torch.no_grad():
        model.visual.proj.fill_(float("nan"))
    stage = Storage(str(tmp_path)).stage("embed", {"t": 4})
    with pytest.raises(EmbeddingError, match=r"image embeddings of .*00000\.tar contain NaN"):
        embed_knowledge_base(model.eval(), tok, storage, shards[:1], stage, progress=False)
