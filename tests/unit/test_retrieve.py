import numpy as np
import pandas as pd
import pytest
import torch

from react_core.config import IndexConfig, RetrievalConfig
from react_core.knowledge.embed import embed_knowledge_base, load_embeddings, load_metadata
from react_core.knowledge.index import build_indices
from react_core.knowledge.retrieve import MANIFEST_COLUMNS, TaskSpec, embed_prompts, read_manifest, retrieve, select
from react_core.models import create_model
from react_core.storage import Storage, join


@pytest.fixture(scope="module")
def kb(tiny_world, tmp_path_factory):
    _, storage, uri = tiny_world
    torch.manual_seed(0)
    model, tok = create_model("react-micro-vit")
    model.eval()
    out = Storage(str(tmp_path_factory.mktemp("kb")))
    shards = storage.ls(join(uri, "kb", "shards"), "*.tar")
    emb = embed_knowledge_base(model, tok, storage, shards, out.stage("embed", {}), progress=False)
    idx = build_indices(out, emb, out.stage("index", {}), IndexConfig(index_key="Flat", recall_queries=20), k=10)
    return model, tok, out, emb, idx


def test_t2t_finds_the_captions_that_are_the_class_names(kb):
    model, tok, st, emb, idx = kb
    meta = load_metadata(st, emb)
    names = meta["caption"].drop_duplicates().iloc[[3, 40, 90]].tolist()
    task = TaskSpec("t", names, ["{}"])
    uri = retrieve(model, tok, st, emb, idx, task, RetrievalConfig(k=5, modes=["t2t"]), st.stage("r", {"a": 1}))
    m = read_manifest(st, uri)
    assert list(m.columns) == MANIFEST_COLUMNS
    for c, name in enumerate(names):
        top = m[m["class_id"] == c].iloc[0]
        assert top["caption"] == name and top["score"] == pytest.approx(1.0, abs=2e-3)
        assert top["class_name"] == name and top["prompt"] == name and top["mode"] == "t2t"
    assert m["key"].is_unique  # deduplicated across prompts, modes and classes


def test_scores_are_the_inner_products_and_urls_come_through(kb):
    model, tok, st, emb, idx = kb
    task = TaskSpec("t", ["red thing", "blue thing"], ["a photo of a {}.", "{}"])
    uri = retrieve(model, tok, st, emb, idx, task, RetrievalConfig(k=8), st.stage("r", {"a": 2}))
    m = read_manifest(st, uri)
    assert set(m["mode"]) <= {"t2t", "t2i"} and len(m) > 8
    assert m["url"].str.startswith("images/").all()
    meta = load_metadata(st, emb)
    row = m.iloc[-1]
    j = int(np.flatnonzero(meta["key"].to_numpy() == row["key"])[0])
    bank = load_embeddings(st, emb, "text" if row["mode"] == "t2t" else "img").astype(np.float32)
    q = embed_prompts(model, tok, [row["prompt"]])[0]
    assert float(bank[j] @ q) == pytest.approx(float(row["score"]), abs=2e-3)
    counts = st.read_json(join(uri, "class_counts.json"))
    assert sum(counts.values()) == len(m) == st.stage_manifest(uri)["counts"]["pairs"]


def test_select_keeps_best_class_and_caps():
    hits = pd.DataFrame(
        {"row": [1, 1, 2, 3, 4, 4, 5], "score": [0.9, 0.8, 0.7, 0.6, 0.5, 0.95, 0.4],
         "prompt_id": [0, 1, 0, 0, 1, 1, 1], "mode": ["t2t", "t2i", "t2t", "t2t", "t2i", "t2t", "t2i"],
         "class_id": [0, 1, 0, 0, 1, 0, 1]}
    )  # fmt: skip
    # row 1 (0.9 for class 0 vs 0.8 for class 1) and row 4 (0.95 vs 0.5) go to class 0; the cap keeps
    # class 0's two best (rows 4 and 1); class 1 keeps row 5, found for it alone
    out = select(hits, RetrievalConfig(per_class_cap=2))
    assert dict(zip(out["row"], out["class_id"])) == {4: 0, 1: 0, 5: 1}
    assert list(out["row"]) == [4, 1, 5]  # by class, best first
    out = select(hits, RetrievalConfig(min_similarity=0.75))
    assert dict(zip(out["row"], out["class_id"])) == {4: 0, 1: 0}
