import numpy as np
import pandas as pd
import pytest
import torch

from react_core.config import IndexConfig, RetrievalConfig
from react_core.knowledge.embed import embed_knowledge_base
from react_core.knowledge.embeddings import load_embeddings, load_metadata
from react_core.knowledge.index import build_indices
from react_core.knowledge.retrieve import (
    MANIFEST_COLUMNS,
    RetrievalError,
    read_manifest,
    retrieve,
    select,
)
from react_core.models import create_model
from react_core.models.encode import embed_prompts
from react_core.registry import TaskSpec
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


def policy_hits():
    # class 0: rows 1..6 (row 1 also found for class 1 at a lower score); class 1: rows 1, 7, 8; class 2: row 9
    rows = [1, 2, 3, 4, 5, 6, 1, 7, 8, 9]
    score = [0.90, 0.85, 0.80, 0.75, 0.70, 0.65, 0.60, 0.88, 0.50, 0.40]
    cls = [0, 0, 0, 0, 0, 0, 1, 1, 1, 2]
    return pd.DataFrame({"row": rows, "score": score, "prompt_id": 0, "mode": "t2t", "class_id": cls})


def test_cross_class_drop_removes_pairs_found_for_several_classes():
    best = select(policy_hits(), RetrievalConfig())
    assert dict(zip(best["row"], best["class_id"]))[1] == 0
    dropped = select(policy_hits(), RetrievalConfig(cross_class="drop"))
    assert 1 not in set(dropped["row"]) and len(dropped) == 8


def test_target_size_is_exact_and_trims_round_robin():
    out = select(policy_hits(), RetrievalConfig(target_size=6))
    assert len(out) == 6
    # rank 0 of each class (rows 1, 7, 9), then rank 1 (rows 2, 8), then the best rank-2 row (3)
    assert set(out["row"]) == {1, 7, 9, 2, 8, 3}
    with pytest.raises(RetrievalError, match="target_size=20 but only 9 pairs remain.*fix: raise retrieval.k"):
        select(policy_hits(), RetrievalConfig(target_size=20))


def test_balance_trims_every_class_to_the_smallest():
    out = select(policy_hits()[policy_hits()["class_id"] < 2], RetrievalConfig(balance=True))
    assert out["class_id"].value_counts().to_dict() == {0: 2, 1: 2}
    assert set(out["row"]) == {1, 2, 7, 8}  # each class's best


def test_min_per_class_names_the_short_classes():
    with pytest.raises(RetrievalError, match=r"2 class\(es\) below retrieval.min_per_class=3: \{'b': 2, 'c': 1\}"):
        select(policy_hits(), RetrievalConfig(min_per_class=3), classnames=["a", "b", "c"])


def test_dedup_captions_and_images_keep_the_better_pair_per_class():
    captions = {1: "A red  Zorb", 2: "a red zorb", 3: "other", 4: "x", 5: "y", 6: "z", 7: "a red zorb", 8: "q", 9: "w"}
    out = select(policy_hits(), RetrievalConfig(dedup_captions=True), captions=lambda r: [captions[i] for i in r])
    assert 2 not in set(out["row"]) and {1, 7} <= set(out["row"])  # row 7 is another class: kept
    emb = {i: np.eye(4)[i % 4] for i in range(10)}  # rows 1 and 5 (and 2 and 6) point the same way
    out = select(
        policy_hits(), RetrievalConfig(dedup_images=0.99), image_embeddings=lambda r: np.stack([emb[i] for i in r])
    )
    kept0 = set(out.loc[out["class_id"] == 0, "row"])
    assert kept0 == {1, 2, 3, 4}  # 5 repeats 1, 6 repeats 2 (the better-scoring ones stay)


def test_several_tasks_are_retrieved_together_with_their_own_templates_and_namespaced_ids(kb):
    model, tok, st, emb, idx = kb
    meta = load_metadata(st, emb)
    names = meta["caption"].drop_duplicates().iloc[[3, 40, 90, 120]].tolist()
    a = TaskSpec("task-a", names[:2], ["{}"])
    b = TaskSpec("task-b", names[2:], ["{}", "a photo of a {}"])
    cfg = RetrievalConfig(k=5, modes=["t2t"], tasks=["task-a", "task-b"])
    uri = retrieve(model, tok, st, emb, idx, [a, b], cfg, st.stage("r", {"multi": 1}))
    m = read_manifest(st, uri)
    assert set(m["task"]) == {"task-a", "task-b"}
    assert (m["class_id"] < 2).equals(m["task"] == "task-a")  # task-b's classes are 2 and 3
    assert m.loc[m["class_id"] == 2, "class_name"].unique().tolist() == [names[2]]
    counts = st.stage_manifest(uri)["counts"]
    assert counts["pairs.task-a"] == counts["pairs.task-b"] == len(m) / 2  # equal shares by default
    assert counts["prompts"] == 2 * 1 + 2 * 2  # each task with its own templates
    assert set(st.read_json(join(uri, "class_counts.json"))) == {f"task-a/{names[0]}", f"task-a/{names[1]}",
                                                                    f"task-b/{names[2]}", f"task-b/{names[3]}"}  # fmt: skip


def test_task_shares_follow_the_weights_and_trim_round_robin():
    from react_core.knowledge.retrieve import task_shares

    # task 0: classes 0, 1 with 10 pairs each; task 1: class 2 with 6 pairs
    hits = pd.DataFrame({"row": range(26), "class_id": [0] * 10 + [1] * 10 + [2] * 6,
                         "score": np.linspace(1, 0, 26)})  # fmt: skip
    class_task = np.array([0, 0, 1])
    equal = task_shares(hits, class_task, [1, 1])
    assert equal["class_id"].value_counts().to_dict() == {0: 3, 1: 3, 2: 6}  # task 1 (6) bounds task 0 to 6
    two_to_one = task_shares(hits, class_task, [2, 1])
    assert two_to_one["class_id"].value_counts().to_dict() == {0: 6, 1: 6, 2: 6}
    kept = two_to_one[two_to_one["class_id"] == 0]["row"].tolist()
    assert kept == list(range(6))  # each class keeps its best-scoring pairs


def test_pair_score_filters_keep_the_pairs_whose_image_and_caption_agree():
    agree = {1: 0.9, 2: 0.1, 3: 0.5, 4: 0.3, 5: 0.8, 6: 0.2, 7: 0.35, 8: 0.31, 9: 0.05}
    scores = lambda rows: np.array([agree[r] for r in rows])
    out = select(policy_hits(), RetrievalConfig(min_pair_score=0.3), pair_scores=scores)
    assert set(out["row"]) == {1, 3, 4, 5, 7, 8}  # class 2's only pair (0.05) goes: a class may empty
    # keep-top: ceil(share x class size) per class, by pair score, not by retrieval score
    out = select(policy_hits(), RetrievalConfig(pair_score_top=0.5), pair_scores=scores)
    by_class = out.groupby("class_id")["row"].apply(set).to_dict()
    assert by_class == {0: {1, 5, 3}, 1: {7}, 2: {9}}  # class 0: 3 of 6; class 1: 1 of 2 (7: 0.35 > 8: 0.31)
    both = select(policy_hits(), RetrievalConfig(min_pair_score=0.3, pair_score_top=0.5), pair_scores=scores)
    assert set(both["row"]) == {1, 5, 7}  # the threshold first (class 0 keeps 1, 3, 4, 5), then the top half
    with pytest.raises(ValueError, match="pair-score filters need"):
        select(policy_hits(), RetrievalConfig(min_pair_score=0.3))


def test_pair_scores_are_each_pairs_own_image_caption_cosine(kb):
    model, tok, st, emb, idx = kb
    task = TaskSpec("t", ["red thing", "blue thing"], ["a photo of a {}.", "{}"])
    plain = read_manifest(st, retrieve(model, tok, st, emb, idx, task, RetrievalConfig(k=8), st.stage("r", {"a": 3})))
    top = read_manifest(
        st, retrieve(model, tok, st, emb, idx, task, RetrievalConfig(k=8, pair_score_top=0.5), st.stage("r", {"a": 4}))
    )
    meta = load_metadata(st, emb)
    where = {k: i for i, k in enumerate(meta["key"])}
    img, txt = load_embeddings(st, emb, "img").astype(np.float32), load_embeddings(st, emb, "text").astype(np.float32)
    own = {k: float(img[where[k]] @ txt[where[k]]) for k in plain["key"]}
    for c, group in plain.groupby("class_id"):
        expect = sorted(group["key"], key=lambda k: -own[k])[: int(np.ceil(len(group) * 0.5))]
        assert set(top.loc[top["class_id"] == c, "key"]) == set(expect)


def test_the_random_control_draws_as_many_pairs_without_classes(kb):
    model, tok, st, emb, idx = kb
    task = TaskSpec("t", ["red thing", "blue thing"], ["a photo of a {}.", "{}"])
    searched = read_manifest(
        st, retrieve(model, tok, st, emb, idx, task, RetrievalConfig(k=8), st.stage("r", {"a": 5}))
    )
    uri = retrieve(model, tok, st, emb, idx, task, RetrievalConfig(k=8, random_control=True), st.stage("r", {"a": 6}))
    control = read_manifest(st, uri)
    assert len(control) == len(searched) and control["key"].is_unique
    assert (control["class_id"] == -1).all() and (control["mode"] == "random").all()
    assert set(control["key"]) != set(searched["key"])
    counts = st.stage_manifest(uri)["counts"]
    assert counts["random_control"] == 1 and counts["pairs"] == len(control)
    again = retrieve(model, tok, st, emb, idx, task, RetrievalConfig(k=8, random_control=True), st.stage("r", {"a": 7}))
    assert read_manifest(st, again)["key"].tolist() == control["key"].tolist()  # the same draw for the same size


def test_new_retrieval_fields_leave_existing_stage_versions_alone():
    from react_core.stages import RETRIEVE

    def identity(**fields):
        return RETRIEVE.config_identity({"retrieval": RetrievalConfig(**fields)})

    assert not {"min_pair_score", "pair_score_top", "random_control"} & set(identity())
    assert identity(pair_score_top=0.5)["pair_score_top"] == 0.5
    assert identity(random_control=True)["random_control"] is True


def test_real_prompt_counts_whole_word_names_in_the_captions_and_picks_the_most_frequent(kb):
    import re

    from react_core.knowledge.names import most_frequent_names, name_counts

    _, _, st, emb, _ = kb
    captions = load_metadata(st, emb)["caption"].str.lower().tolist()
    words = sorted({w for c in captions for w in re.findall(r"[a-z]{5,}", c)})[:6]
    names = [w.upper() for w in words[:3]] + words[3:]  # in any case
    got = name_counts(st, emb, names)
    truth = {n: sum(1 for c in captions if re.search(rf"(?<!\w){n.lower()}(?!\w)", c)) for n in names}
    assert got == truth
    assert (
        name_counts(st, emb, [words[0][:-1]])[words[0][:-1]]
        == sum(  # a prefix counts only as a word of its own
            1 for c in captions if re.search(rf"(?<!\w){words[0][:-1]}(?!\w)", c)
        )
    )
    rare, common = min(names, key=got.get), max(names, key=got.get)
    assert got[rare] < got[common]
    chosen, counts = most_frequent_names(st, emb, ["qqq-nowhere"], {"qqq-nowhere": [rare, common]})
    assert chosen == [common] and counts["qqq-nowhere"] == {"qqq-nowhere": 0, rare: got[rare], common: got[common]}


def test_a_k_larger_than_the_knowledge_base_is_said_not_silently_cut(kb, caplog):
    model, tok, st, emb, idx = kb
    rows = len(load_metadata(st, emb))
    task = TaskSpec("t", ["red thing"], ["{}"])
    with caplog.at_level("WARNING"):
        uri = retrieve(model, tok, st, emb, idx, task, RetrievalConfig(k=100_000_000), st.stage("r", {"a": 9}))
    assert f"retrieval.k=100000000 is more than the knowledge base's {rows} pairs" in caplog.text
    assert f"k cut to {rows}" in caplog.text and len(read_manifest(st, uri)) == rows
