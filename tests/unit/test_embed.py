import io
import os
import socket
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds

from react_core.data import decode_image, iter_shard
from react_core.knowledge.embed import ShardBatches, embed_batches, embed_knowledge_base, embed_shards, finish
from react_core.knowledge.embeddings import EmbeddingError, load_embeddings, load_metadata
from react_core.models import create_model
from react_core.models.encode import normalize
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
    # throughput of the one process that embedded: every pair, over the span of its shards
    speed = out.read_json(join(uri, "throughput.json"))
    assert list(speed) == [f"{socket.gethostname()}:{os.getpid()}"]
    (mine,) = speed.values()
    assert mine["shards"] == len(shards) and mine["pairs"] == n and mine["seconds"] > 0
    assert mine["pairs_per_s"] == pytest.approx(n / mine["seconds"], rel=1e-2)
    counts = out.stage_manifest(uri)["counts"]
    assert counts["workers"] == 1 and counts["pairs_per_s_per_worker"] == pytest.approx(mine["pairs_per_s"])


def _embedded(tiny_world, micro, tmp_path):
    """A finished embed stage of the tiny knowledge base: (storage, stage, shards, a function running it again)."""
    model, tok = micro
    storage, shards = _kb_shards(tiny_world)
    out = Storage(str(tmp_path))
    stage = out.stage("embed", {"t": 2})
    embed_knowledge_base(model, tok, storage, shards, stage, progress=False)
    return out, stage, shards, lambda: embed_knowledge_base(model, tok, storage, shards, stage, progress=False)


def _embedded_then_unfinished(tiny_world, micro, tmp_path):
    """:func:`_embedded` with the stage's marker removed (as if the run had died before finishing)."""
    out, stage, shards, run_again = _embedded(tiny_world, micro, tmp_path)
    out.rm(stage.file("_SUCCESS"))
    return out, stage, shards, run_again


def test_resume_re_embeds_only_missing_shards(tiny_world, micro, tmp_path):
    out, stage, shards, run_again = _embedded_then_unfinished(tiny_world, micro, tmp_path)
    first = load_embeddings(out, stage.uri)  # as if the run had died after shard 1 ...
    out.rm(stage.file("metadata", "metadata_2.parquet"))  # ... before finishing shard 2
    run_again()
    counts = out.stage_manifest(stage.uri)["counts"]
    assert counts["resumed_shards"] == len(shards) - 1
    # every shard, the resumed ones included, is in the throughput of the process that embedded it
    speed = out.read_json(stage.file("throughput.json"))
    assert sum(w["shards"] for w in speed.values()) == len(shards)
    assert np.array_equal(load_embeddings(out, stage.uri), first)


def test_a_finished_shard_without_its_stats_is_named_with_the_fix(tiny_world, micro, tmp_path):
    out, stage, _, run_again = _embedded_then_unfinished(tiny_world, micro, tmp_path)
    out.rm(stage.file("stats", "stats_0.json"))
    with pytest.raises(EmbeddingError, match=r"stats/stats_0.json does not exist.*fix: delete that shard's metadata"):
        run_again()


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


def _stage_arrays(st, uri):
    return load_embeddings(st, uri, "img"), load_embeddings(st, uri, "text"), load_metadata(st, uri)


def test_rows_stay_aligned_whatever_order_batches_complete_in(tiny_world, micro, tmp_path):
    """Workers finish batches in any order; each shard's rows are written by sample offset."""
    model, tok = micro
    storage, shards = _kb_shards(tiny_world)
    out = Storage(str(tmp_path))
    ordered = out.stage("embed", {"order": "as read"})
    embed_knowledge_base(model, tok, storage, shards, ordered, batch_size=16, progress=False)
    batches = list(ShardBatches(storage, list(enumerate(shards)), 32, tok, 16))
    order = np.random.default_rng(0).permutation(len(batches))
    shuffled = [batches[i] for i in order]
    # the shuffle really interleaves shards and puts a shard's last batch before some of its others
    assert len({b["index"] for b in shuffled[:4]}) > 1
    first_last = next(i for i, b in enumerate(shuffled) if b["batches"])
    assert any(b["index"] == shuffled[first_last]["index"] for b in shuffled[first_last + 1 :])
    mixed = out.stage("embed", {"order": "shuffled"})
    results = embed_batches(model, out, mixed, shuffled)
    assert sorted(r.index for r in results) == list(range(len(shards)))
    finish(out, mixed, shards)
    img_a, txt_a, meta_a = _stage_arrays(out, ordered.uri)
    img_b, txt_b, meta_b = _stage_arrays(out, mixed.uri)
    assert meta_a.equals(meta_b)
    assert np.array_equal(img_a, img_b) and np.array_equal(txt_a, txt_b)
    assert (meta_b.groupby("shard")["offset"].diff().dropna() > 0).all()


def test_dataloader_workers_give_the_same_files(tiny_world, micro, tmp_path):
    model, tok = micro
    storage, shards = _kb_shards(tiny_world)
    out = Storage(str(tmp_path))
    alone = embed_knowledge_base(model, tok, storage, shards, out.stage("e", {"w": 0}), 64, 0, progress=False)
    workers = embed_knowledge_base(model, tok, storage, shards, out.stage("e", {"w": 2}), 64, 2, progress=False)
    img_a, txt_a, meta_a = _stage_arrays(out, alone)
    img_b, txt_b, meta_b = _stage_arrays(out, workers)
    assert meta_a.equals(meta_b) and np.array_equal(img_a, img_b) and np.array_equal(txt_a, txt_b)


def test_finish_names_shards_never_embedded(tiny_world, micro, tmp_path):
    model, tok = micro
    storage, shards = _kb_shards(tiny_world)
    out = Storage(str(tmp_path))
    stage = out.stage("embed", {"part": 1})
    results = embed_shards(model, tok, storage, shards, stage, indices=[0], progress=False)
    assert [r.index for r in results] == [0] and not stage.done
    with pytest.raises(EmbeddingError, match=rf"{len(shards) - 1} of {len(shards)} shards have no embeddings"):
        finish(out, stage, shards)
    embed_shards(model, tok, storage, shards, stage, indices=range(1, len(shards)), progress=False)
    assert out.stage_manifest(finish(out, stage, shards))["counts"]["shards"] == len(shards)


def test_jpeg_draft_decodes_near_the_exact_pixels_and_can_be_turned_off(micro, tmp_path):
    from PIL import Image

    from react_core.data.datasets import prepare

    _, tok = micro
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((1024, 768), Image.BICUBIC)
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=90)
    with open(tmp_path / "big.tar", "wb") as f, wds.TarWriter(f, encoder=False) as w:
        w.write({"__key__": "a", "jpg": buf.getvalue(), "txt": b"a large photo"})
    st = Storage(str(tmp_path))
    exact = prepare(Image.open(io.BytesIO(buf.getvalue())), 224)

    def pixels(draft):
        (batch,) = list(ShardBatches(st, [(0, st.uri("big.tar"))], 224, tok, 8, draft=draft))
        return batch["images"][0]

    assert torch.equal(pixels(False), exact)
    drafted = pixels(True)
    assert not torch.equal(drafted, exact)  # really decoded at a reduced scale ...
    assert (drafted.float() - exact.float()).abs().mean() < 2  # ... within about a grey level


def test_embed_tasks_of_a_run_load_the_model_once_per_process(tiny_world, tmp_path, monkeypatch):
    from react_core import pipeline
    from react_core.models import cache

    cfg, _, world = tiny_world
    loads = []
    real = cache.create_model
    monkeypatch.setattr(cache, "create_model", lambda *a, **k: loads.append(a[:2]) or real(*a, **k))
    monkeypatch.setattr(cache, "_EMBEDDING_MODEL", {})
    st = Storage(str(tmp_path))
    kb = cfg.knowledge_base.model_copy(update={"num_workers": 0})
    _, groups = pipeline.embed_plan(
        st,
        model=cfg.model,
        knowledge_base=kb.model_copy(update={"shards_per_task": 1}),
        checkpoint=None,
        miniweb_uri=world,
    )
    assert len(groups) >= 2
    for g in groups:
        assert (
            pipeline.run_embed_shards(
                st, model=cfg.model, knowledge_base=kb, checkpoint=None, miniweb_uri=world, indices=g
            )["shards"]
            == 1
        )
    assert loads == [(cfg.model.name, None)]
    assert (
        pipeline.embed_plan(st, model=cfg.model, knowledge_base=kb, checkpoint=None, miniweb_uri=world)[1] == []
    )  # every shard done, nothing left to plan


def test_rows_stay_aligned_when_a_shard_file_is_missing_or_short(tiny_world, micro, tmp_path):
    from react_core.knowledge.embeddings import load_metadata_rows, load_rows

    out, stage, _, _ = _embedded(tiny_world, micro, tmp_path)
    meta, emb = load_metadata(out, stage.uri), load_embeddings(out, stage.uri)
    per_shard = [e["rows"] for e in out.read_json(stage.file("shards.json"))]
    assert len(per_shard) >= 3 and sum(per_shard) == len(meta)
    after = np.array([per_shard[0] + per_shard[1] + 5, len(meta) - 1])  # rows in the shards after shard 1
    out.rm(stage.file("metadata", "metadata_1.parquet"))
    out.rm(stage.file("img_emb", "img_emb_1.npy"))
    # rows after the gap are still the right rows (not shifted by shard 1's count)
    assert load_metadata_rows(out, stage.uri, after)["key"].tolist() == meta["key"].iloc[after].tolist()
    assert np.array_equal(load_rows(out, stage.uri, after), emb[after])
    # a row inside the missing shard: the file is named, with the fix
    inside = np.array([per_shard[0] + 1])
    with pytest.raises(EmbeddingError, match=r"metadata/metadata_1.parquet is missing from the embed stage; fix:"):
        load_metadata_rows(out, stage.uri, inside)
    with pytest.raises(EmbeddingError, match=r"img_emb/img_emb_1.npy is missing"):
        load_rows(out, stage.uri, inside)
    assert load_rows(out, stage.uri, np.array([], dtype=np.int64)).shape == (0, emb.shape[1])
    # a short file (rows lost) is named too
    buf = io.BytesIO()
    meta.iloc[: per_shard[0] - 3].to_parquet(buf)
    out.write_bytes(stage.file("metadata", "metadata_0.parquet"), buf.getvalue())
    with pytest.raises(EmbeddingError, match=rf"metadata_0.parquet has {per_shard[0] - 3} rows where the embed stage"):
        load_metadata_rows(out, stage.uri, np.array([0]))
    # an unfinished stage has no record of its shards: a gap in the files is named rather than skipped
    out.rm(stage.file("shards.json"))
    with pytest.raises(EmbeddingError, match=r"metadata/metadata_1.parquet is missing"):
        load_metadata(out, stage.uri)


def _copy_kb(tiny_world, folder) -> tuple[Storage, list[str]]:
    """The tiny world's knowledge-base shards and their indices, copied into ``folder`` to be damaged there."""
    storage, shards = _kb_shards(tiny_world)
    st = Storage(str(folder))
    for uri in shards:
        name = uri.rsplit("/", 1)[1]
        st.write_bytes(st.uri(name), storage.read_bytes(uri))
        st.write_bytes(st.uri(name[:-4] + "_stats.json"), storage.read_bytes(uri[:-4] + "_stats.json"))
    return st, st.ls(st.root, "*.tar")


def _member_offsets(path) -> list[tuple[int, int]]:
    with tarfile.open(path) as t:
        return [(m.offset, m.offset_data) for m in t.getmembers()]


@pytest.mark.parametrize("cut", ["mid-member", "between-samples"])
def test_a_truncated_shard_is_counted_named_and_fails_the_stage_by_default(tiny_world, micro, tmp_path, cut):
    model, tok = micro
    st, shards = _copy_kb(tiny_world, tmp_path / "kb")
    expected = [st.read_json(u[:-4] + "_stats.json")["successes"] for u in shards]
    path = st.path(shards[1])
    members = _member_offsets(path)  # three members (jpg, txt, json) per sample
    at = members[3 * 100][0] if cut == "between-samples" else members[3 * 100][1] + 10
    with open(path, "r+b") as f:
        f.truncate(at)
    out = Storage(str(tmp_path / "out"))
    stage = out.stage("embed", {"t": cut})
    with pytest.raises(EmbeddingError, match=r"1 damaged knowledge-base shard.*00001\.tar.*max_damaged_shards=0"):
        embed_knowledge_base(model, tok, st, shards, stage, progress=False)
    stats = out.read_json(stage.file("stats", "stats_1.json"))
    # Cut inside sample 100's first member: sample 99, whose end the reader had not confirmed, is counted unread.
    read = 99 if cut == "mid-member" else 100
    assert stats["read"] == read and stats["expected"] == expected[1] and stats["unread"] == expected[1] - read
    assert ("damaged after 99 samples" if cut == "mid-member" else f"says {expected[1]}") in stats["error"]
    assert not stage.done

    # Accepting one damaged shard completes the stage with the loss counted: embedded + skipped + unread = index.
    uri = embed_knowledge_base(model, tok, st, shards, stage, progress=False, max_damaged_shards=1)
    c = out.stage_manifest(uri)["counts"]
    assert c["damaged_shards"] == 1 and c["embedded"] + c["skipped"] + c["unread"] == sum(expected)
    assert c["unread"] == expected[1] - read


def test_a_damaged_shard_is_embedded_again_once_put_right_and_contents_are_identity(tiny_world, micro, tmp_path):
    from react_core import pipeline

    model, tok = micro
    cfg, _, _ = tiny_world
    st, shards = _copy_kb(tiny_world, tmp_path / "kb")
    whole = st.read_bytes(shards[0])
    kb = cfg.knowledge_base.model_copy(update={"source": st.root})
    before, _ = pipeline.embed_stage(st, cfg.model, kb, None, None)
    st.write_bytes(shards[0], whole[: len(whole) // 2])
    damaged, _ = pipeline.embed_stage(st, cfg.model, kb, None, None)
    assert damaged.version != before.version  # a truncated (or replaced) shard is another knowledge base

    stage = st.stage("embed-test", {"t": 1})
    with pytest.raises(EmbeddingError, match="00000.tar"):
        embed_knowledge_base(model, tok, st, shards, stage, progress=False)
    st.write_bytes(shards[0], whole)  # put right: only that shard is embedded again, and the stage completes
    uri = embed_knowledge_base(model, tok, st, shards, stage, progress=False)
    c = st.stage_manifest(uri)["counts"]
    assert c["damaged_shards"] == 0 and c["unread"] == 0 and c["resumed_shards"] == len(shards) - 1
    assert c["embedded"] == sum(st.read_json(u[:-4] + "_stats.json")["successes"] for u in shards)


def test_training_data_read_from_a_truncated_shard_is_an_error_naming_it(tiny_world, tmp_path):
    from react_core.data import ShardReadError, load_captions

    st, shards = _copy_kb(tiny_world, tmp_path / "kb")
    captions, _ = load_captions(st, shards[:1])
    path = st.path(shards[0])
    with open(path, "r+b") as f:
        f.truncate(_member_offsets(path)[3 * 10][0])  # between samples 9 and 10: a valid, shorter tar
    with pytest.raises(ShardReadError, match=rf"00000.tar holds 10 samples but its index .* says {len(captions)}"):
        load_captions(st, shards[:1])


def test_a_shard_without_its_index_is_named_counted_and_refused_on_request(tiny_world, micro, tmp_path, caplog):
    model, tok = micro
    st, shards = _copy_kb(tiny_world, tmp_path / "kb")
    path = st.path(shards[1])
    with open(path, "r+b") as f:  # cut cleanly between samples 99 and 100: a tar a reader cannot tell is short
        f.truncate(_member_offsets(path)[3 * 100][0])
    os.remove(path[: -len(".tar")] + "_stats.json")  # ... and its index gone with it
    out = Storage(str(tmp_path / "out"))
    with pytest.raises(
        EmbeddingError, match=r"1 knowledge-base shard\(s\) have no index \(.*00001\.tar.*require_index"
    ):
        embed_knowledge_base(model, tok, st, shards, out.stage("embed", {"t": 1}), progress=False, require_index=True)
    with caplog.at_level("WARNING"):
        uri = embed_knowledge_base(model, tok, st, shards, out.stage("embed", {"t": 2}), progress=False)
    assert "1 knowledge-base shard(s) have no index" in caplog.text and "00001.tar" in caplog.text
    c = out.stage_manifest(uri)["counts"]
    assert (
        c["unindexed_shards"] == 1
        and c["damaged_shards"] == 0
        and c["embedded"] == sum(len(list(iter_shard(st, u))) for u in shards)
    )


def test_preflight_refuses_shards_without_an_index_when_required(tiny_world, tmp_path):
    from react_core.data import DatasetError
    from react_core.preflight import check_shard_indices

    st, shards = _copy_kb(tiny_world, tmp_path / "kb")
    check_shard_indices(st, shards)
    os.remove(st.path(shards[0])[: -len(".tar")] + "_stats.json")
    with pytest.raises(DatasetError, match=r"1 knowledge-base shard\(s\) have no index \(.*00000\.tar"):
        check_shard_indices(st, shards)
