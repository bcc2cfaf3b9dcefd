import numpy as np
import pytest
import torch

from react_core.config import IndexConfig
from react_core.knowledge.embed import embed_knowledge_base
from react_core.knowledge.embeddings import load_embeddings, metadata_rows
from react_core.knowledge.index import (
    IndexBuildError,
    IndexMismatchError,
    build_indices,
    build_one,
    ground_truth,
    load_index,
    recall_at_k,
)
from react_core.models import create_model
from react_core.storage import Storage, join


@pytest.fixture(scope="module")
def embedded(tiny_world, tmp_path_factory):
    _, storage, uri = tiny_world
    torch.manual_seed(0)
    model, tok = create_model("react-micro-vit")
    out = Storage(str(tmp_path_factory.mktemp("emb")))
    shards = storage.ls(join(uri, "kb", "shards"), "*.tar")
    return out, embed_knowledge_base(model.eval(), tok, storage, shards, out.stage("embed", {}), progress=False)


def test_flat_indices_have_perfect_recall_and_pass_load_checks(embedded):
    st, emb_uri = embedded
    stage = st.stage("index", {"k": "Flat"})
    uri = build_indices(st, emb_uri, stage, IndexConfig(index_key="Flat", recall_queries=50), k=10)
    for name in ("image", "text"):
        infos = st.read_json(join(uri, f"{name}_infos.json"))
        assert infos["recall_at_k"] == 1.0 and infos["k"] == 10 and infos["recall_queries"] == 50
        assert infos["rows"] == metadata_rows(st, emb_uri) and infos["dim"] == 32
        index = load_index(st, uri, name, metadata_rows(st, emb_uri), 32)
        assert index.ntotal == 800
    assert st.stage_manifest(uri)["counts"]["image.recall_at_10"] == 1.0


def test_an_approximate_index_reports_recall_below_one(embedded):
    st, emb_uri = embedded
    emb = load_embeddings(st, emb_uri, "img").astype(np.float32)
    import faiss

    index = faiss.index_factory(emb.shape[1], "IVF16,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(emb)
    index.add(emb)
    index.nprobe = 1
    r = recall_at_k(index, emb, load_embeddings(st, emb_uri, "text")[:50].astype(np.float32), 20)
    assert 0.0 < r < 1.0


def test_load_checks_name_the_mismatch(embedded):
    st, emb_uri = embedded
    uri = build_indices(st, emb_uri, st.stage("index", {"k": "Flat2"}), IndexConfig(index_key="Flat"), k=5)
    with pytest.raises(IndexMismatchError, match="800 rows but the metadata has 798"):
        load_index(st, uri, "image", 798, 32)
    with pytest.raises(IndexMismatchError, match="dimension 32 but the model embeds in 512"):
        load_index(st, uri, "text", 800, 512)


def test_failed_autofaiss_build_raises(tmp_path):
    emb = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    with pytest.raises(IndexBuildError, match="index_key"):
        build_one(emb, IndexConfig(index_key="NotAnIndex,Flat"), str(tmp_path), "image")


def _trained_index(embedded, key):
    """(index, database, 50 caption queries) over the tiny world's image embeddings."""
    import faiss

    st, emb_uri = embedded
    emb = load_embeddings(st, emb_uri, "img").astype(np.float32)
    queries = load_embeddings(st, emb_uri, "text")[:50].astype(np.float32)
    index = faiss.index_factory(emb.shape[1], key, faiss.METRIC_INNER_PRODUCT)
    index.train(emb)
    index.add(emb)
    return index, emb, queries


@pytest.mark.parametrize("key, knob", [("IVF16,Flat", "nprobe"), ("HNSW4", "efSearch")])
def test_search_parameter_is_raised_until_the_recall_target(embedded, key, knob):
    import faiss

    from react_core.knowledge.index import tune_recall

    index, emb, queries = _trained_index(embedded, key)
    faiss.ParameterSpace().set_index_parameters(index, f"{knob}=1")
    before = recall_at_k(index, emb, queries, 20)
    recall, param = tune_recall(index, queries, ground_truth(queries, [emb], 20), target=0.97)
    assert before < 0.97 <= recall and param.startswith(f"{knob}=") and int(param.split("=")[1]) > 1
    assert recall_at_k(index, emb, queries, 20) == recall  # the setting stays on the index


@pytest.mark.parametrize("key,knob", [("IVF16,Flat", "nprobe"), ("HNSW8", "efSearch")])
def test_a_search_parameter_above_the_floor_is_lowered_to_the_cheapest_that_meets_it(embedded, key, knob):
    import faiss

    from react_core.knowledge.index import tune_recall

    index, emb, queries = _trained_index(embedded, key)
    space = faiss.ParameterSpace()
    start = {"nprobe": 16, "efSearch": 128}[knob]  # nprobe = nlist: exact
    space.set_index_parameters(index, f"{knob}={start}")
    assert recall_at_k(index, emb, queries, 20) >= 0.9
    recall, param = tune_recall(index, queries, ground_truth(queries, [emb[:300], emb[300:]], 20), target=0.9)
    value = int(param.split("=")[1])
    assert recall >= 0.9 and value < start
    assert knob == "nprobe" or value >= 20  # HNSW searches with max(efSearch, k): never set below k
    assert recall_at_k(index, emb, queries, 20) == recall
    if knob == "nprobe" and value > 1:  # the next cheaper setting misses the floor
        space.set_index_parameters(index, f"{knob}={value // 2}")
        assert recall_at_k(index, emb, queries, 20) < 0.9


def test_index_stage_saves_the_tuned_parameter(embedded):
    import faiss

    st, emb_uri = embedded
    uri = build_indices(st, emb_uri, st.stage("index", {"k": "IVF"}),
                        IndexConfig(index_key="IVF16,Flat", recall_queries=50, recall_target=0.99), k=10)  # fmt: skip
    infos = st.read_json(join(uri, "image_infos.json"))
    assert infos["recall_at_k"] >= 0.99 and infos["search_param"].startswith("nprobe=")
    index = load_index(st, uri, "image", metadata_rows(st, emb_uri), 32)
    assert faiss.extract_index_ivf(index).nprobe == int(infos["search_param"].split("=")[1])


class _Answers:
    """Stands in for an index that returns fixed rows (faiss' ``search`` signature)."""

    def __init__(self, rows):
        self.rows = np.asarray(rows, dtype=np.int64)

    def search(self, queries, k):
        return np.zeros(self.rows.shape, np.float32), self.rows


def test_recall_counts_tied_rows_as_found_not_only_the_ids_exact_search_listed():
    a, b = np.eye(4, dtype=np.float32)[:2]
    database = np.stack([a, a, a, b])  # three copies of one caption's embedding
    q = a[None]
    assert recall_at_k(_Answers([[2, 1]]), database, q, 2) == 1.0  # any two of the tied copies
    assert recall_at_k(_Answers([[0, 3]]), database, q, 2) == 0.5  # b is not among the top 2
    assert recall_at_k(_Answers([[0, -1]]), database, q, 2) == 0.5  # a missing result is a miss


def test_exact_search_in_blocks_equals_faiss_and_keeps_every_tie():
    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    rng = np.random.default_rng(0)
    db = rng.standard_normal((1000, 16)).astype(np.float32)
    q = rng.standard_normal((30, 16)).astype(np.float32)
    truth = ground_truth(q, (db[i : i + 128] for i in range(0, 1000, 128)), 10)  # 8 blocks, the last short
    _, exact = knn_ground_truth(q, [db], 10, metric_type=faiss.METRIC_INNER_PRODUCT)
    assert truth.k == 10 and [sorted(a) for a in truth.acceptable] == [sorted(e) for e in exact.tolist()]
    # copies of a query's 10th neighbour, in a later block than the original: all acceptable
    tied = np.concatenate([db, np.repeat(db[exact[0, 9]][None], 5, axis=0)])
    truth = ground_truth(q[:1], (tied[i : i + 128] for i in range(0, len(tied), 128)), 10)
    assert set(truth.acceptable[0]) == set(exact[0]) | set(range(1000, 1005))


def _fake_embed_stage(st, shards=12, rows=7, dim=8):
    """An embed stage written by hand: ``shards`` shards (more than 10, so name order != row order)."""
    import io

    import pandas as pd

    rng = np.random.default_rng(1)
    stage = st.stage("embed", {"fake": shards})
    img, txt = [], []
    for i in range(shards):
        for kind, out in (("img", img), ("text", txt)):
            e = rng.standard_normal((rows, dim)).astype(np.float32)
            e = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float16)
            buf = io.BytesIO()
            np.save(buf, e)
            st.write_bytes(stage.file(f"{kind}_emb", f"{kind}_emb_{i}.npy"), buf.getvalue())
            out.append(e)
        buf = io.BytesIO()
        pd.DataFrame({"key": [f"{i}-{j}" for j in range(rows)], "caption": [f"c{i}-{j}" for j in range(rows)],
                      "shard": f"s{i}", "offset": range(rows)}).to_parquet(buf)  # fmt: skip
        st.write_bytes(stage.file("metadata", f"metadata_{i}.parquet"), buf.getvalue())
    return stage.uri, np.concatenate(img).astype(np.float32), np.concatenate(txt).astype(np.float32)


@pytest.mark.parametrize("root", ["file", "memory"])
def test_index_rows_follow_the_metadata_order_from_local_or_remote_files(tmp_path, root):

    from react_core.knowledge.embeddings import load_metadata_rows

    st = Storage(str(tmp_path / "st")) if root == "file" else Storage(f"memory://idx-{tmp_path.name}")
    emb_uri, img, txt = _fake_embed_stage(st)
    assert metadata_rows(st, emb_uri) == 84  # an unfinished stage: counted from the parquet footers
    uri = build_indices(st, emb_uri, st.stage("index", {}), IndexConfig(index_key="Flat", recall_queries=20), k=5)
    for name, emb in (("image", img), ("text", txt)):
        index = load_index(st, uri, name, 84, 8)
        # row r of the index is row r of the metadata (autofaiss read img_emb_10 after img_emb_9, not after _1)
        assert np.array_equal(index.reconstruct_n(0, index.ntotal), emb)
        assert st.read_json(join(uri, f"{name}_infos.json"))["recall_at_k"] == 1.0
    meta = load_metadata_rows(st, emb_uri, np.array([3, 70, 83]))
    assert meta["key"].tolist() == ["0-3", "10-0", "11-6"]
    with pytest.raises(ValueError, match="rows up to 84 asked, 84 embedded"):
        load_metadata_rows(st, emb_uri, np.array([84]))


def test_a_truncated_or_missing_index_is_named_by_its_real_path_with_the_fix(tmp_path):
    st = Storage(str(tmp_path / "st"))
    emb_uri, _, _ = _fake_embed_stage(st)
    uri = build_indices(st, emb_uri, st.stage("index", {}), IndexConfig(index_key="Flat", recall_queries=20), k=5)
    good = st.read_bytes(join(uri, "image.index"))
    st.write_bytes(join(uri, "image.index"), good[: len(good) // 2])
    with pytest.raises(IndexMismatchError) as err:
        load_index(st, uri, "image", 84, 8)
    msg = str(err.value)
    assert f"{uri}/image.index is damaged ({len(good) // 2:,} bytes; faiss: " in msg and "/tmp/tmp" not in msg
    assert msg.endswith("and run the index stage again")
    st.rm(join(uri, "image.index"))
    with pytest.raises(
        IndexMismatchError, match=r"image.index is missing from the index stage; fix: delete .*_SUCCESS"
    ):
        load_index(st, uri, "image", 84, 8)
