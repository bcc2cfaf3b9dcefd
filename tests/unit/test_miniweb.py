import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from react_core.config import ConfigError
from react_core.config_loading import load_config
from react_core.data import iter_shard
from react_core.data.datasets import open_dataset, read_vision_dataset
from react_core.miniweb.generate import TASK_NAMES, concepts_for, split_concept_ids
from react_core.miniweb.render import render
from react_core.miniweb.world import make_concepts
from react_core.pipeline import run_miniweb
from react_core.registry import MINIWEB_CAPTIONS, MINIWEB_GENERIC
from react_core.storage import Storage, join, local_path


def test_concepts_are_deterministic_and_named_uniquely():
    a = make_concepts(3, 60, 16, 12)
    assert a == make_concepts(3, 60, 16, 12)
    assert a != make_concepts(4, 60, 16, 12)
    names = [n for c in a for n in (c.name, *c.synonyms)]
    assert len(names) == len(set(names))
    idents = {(c.shape, c.color, c.color2, c.pattern, c.background, c.count) for c in a}
    assert len(idents) == len(a)


def test_fine_group_are_look_alikes_and_coarse_group_is_varied():
    cs = make_concepts(0, 60, 16, 12)
    fine = [c for c in cs if c.group == "fine"]
    coarse = [c for c in cs if c.group == "coarse"]
    assert len(fine) == 16 and len(coarse) == 12
    assert len({(c.shape, c.background, c.count, c.size) for c in fine}) == 1
    assert len({(c.color, c.pattern) for c in fine}) == 16
    assert len({c.shape for c in coarse}) >= 11 and len({c.color for c in coarse}) >= 10


def test_groups_larger_than_the_world_are_a_config_error():
    with pytest.raises(ConfigError, match="n_concepts"):
        make_concepts(0, 10, 8, 8)


def test_render_is_a_function_of_the_rng():
    c = make_concepts(0, 30, 4, 4)[0]
    a = render(c, 32, np.random.default_rng(5))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render(c, 32, np.random.default_rng(5)))
    assert not np.array_equal(a, render(c, 32, np.random.default_rng(6)))


def test_target_concepts_are_rare_in_generic_and_plentiful_in_kb():
    cfg = load_config().miniweb
    cs = concepts_for(cfg)
    targets = np.array([c.group != "other" for c in cs])
    gen = targets[split_concept_ids(cfg, cs, "generic", 20000)].mean()
    kb = targets[split_concept_ids(cfg, cs, "kb", 20000)].mean()
    assert gen < 0.03 and kb > 0.3


def test_tiny_world_layout_and_counts(tiny_world):
    cfg, storage, uri = tiny_world
    m = storage.stage_manifest(uri)["counts"]
    assert m["generic.pairs"] == cfg.miniweb.generic_size and m["kb.pairs"] == cfg.miniweb.kb_size
    shards = storage.ls(join(uri, "kb", "shards"), "*.tar")
    assert len(shards) == m["kb.shards"] == -(-cfg.miniweb.kb_size // cfg.miniweb.shard_size)
    samples = list(iter_shard(storage, shards[0]))
    assert len(samples) == cfg.miniweb.shard_size
    assert {"jpg", "txt", "json"} <= set(samples[0])
    urls = pd.read_parquet(local_path(join(uri, "kb", "urls.parquet")))
    assert list(urls.columns) == ["key", "url", "caption"] and len(urls) == cfg.miniweb.kb_size
    truth = pd.read_parquet(local_path(join(uri, "kb", "truth.parquet")))
    present = [storage.exists(join(uri, "kb", u)) for u in urls["url"]]
    assert sum(present) == len(urls) - m["kb.dead_links"] == len(urls) - int(truth["dead"].sum())


def test_tasks_are_in_vision_datasets_layout(tiny_world):
    cfg, storage, uri = tiny_world
    targets = [(g, n) for g, n in TASK_NAMES.items() if g != "extra"]  # no third task in the tiny world
    assert not storage.exists(join(uri, "tasks", TASK_NAMES["extra"]))
    for group, name in [*targets, ("generic", MINIWEB_GENERIC)]:
        tdir = join(uri, "tasks", name)
        info = storage.read_json(join(tdir, "dataset_info.json"))
        assert info["type"] == "classification_multiclass" and info["format"] == "coco"
        coco = storage.read_json(join(tdir, info["test"]["index_path"]))
        assert [c["id"] for c in coco["categories"]] == list(range(1, len(coco["categories"]) + 1))
        assert min(i["id"] for i in coco["images"]) == 1
        labels = storage.read_bytes(join(tdir, "labels.txt")).decode().split()
        assert labels == [c["name"] for c in coco["categories"]]
        data = read_vision_dataset(storage, tdir, "test")
        n_cls = {"fine": cfg.miniweb.fine_grained_classes, "coarse": cfg.miniweb.coarse_classes,
                 "generic": cfg.miniweb.generic_classes}[group]  # fmt: skip
        assert len(data.classnames) == n_cls and len(data) == n_cls * cfg.miniweb.test_per_class
        assert all("{}" in t for t in data.templates)


def test_task_images_never_appear_in_the_corpus(tiny_world):
    _, storage, uri = tiny_world
    corpus = set()
    for split in ("generic", "kb"):
        for shard in storage.ls(join(uri, split, "shards"), "*.tar"):
            corpus |= {hashlib.sha1(s["jpg"]).hexdigest() for s in iter_shard(storage, shard)}
    for name in (TASK_NAMES["fine"], TASK_NAMES["coarse"], MINIWEB_GENERIC):
        tdir = join(uri, "tasks", name)
        for split in ("test", "train"):
            coco = storage.read_json(join(tdir, f"{split}.json"))
            for im in coco["images"]:
                assert hashlib.sha1(storage.read_bytes(join(tdir, im["file_name"]))).hexdigest() not in corpus


def test_generic_probe_is_concepts_the_base_learnt_and_no_target(tiny_world):
    """miniweb-generic: concepts outside both target tasks, every one of them present in the generic (pretraining)
    corpus, so a customized model that gets worse on it has forgotten something the base knew."""
    cfg, storage, uri = tiny_world
    concepts = {c["name"]: c for c in storage.read_json(join(uri, "concepts.json"))}
    names = read_vision_dataset(storage, join(uri, "tasks", MINIWEB_GENERIC), "test").classnames
    assert len(set(names)) == len(names) == cfg.miniweb.generic_classes
    assert {concepts[n]["group"] for n in names} == {"other"}
    truth = pd.read_parquet(local_path(join(uri, "generic", "truth.parquet")))
    seen = set(truth["concept_id"])
    assert all(concepts[n]["id"] in seen for n in names)


def test_caption_test_set_is_a_karpathy_split_rendered_apart_from_the_corpus(tiny_world):
    cfg, storage, uri = tiny_world
    data = open_dataset(storage, join(uri, "tasks", MINIWEB_CAPTIONS), "test", MINIWEB_CAPTIONS)
    assert len(data) == cfg.miniweb.caption_test_size and all(len(c) == 2 and all(c) for c in data.captions)
    corpus = set()
    for split in ("generic", "kb"):
        for shard in storage.ls(join(uri, split, "shards"), "*.tar"):
            corpus |= {hashlib.sha1(s["jpg"]).hexdigest() for s in iter_shard(storage, shard)}
    assert not {hashlib.sha1(storage.read_bytes(im)).hexdigest() for im in data.images} & corpus


def test_output_does_not_depend_on_process_count(tiny_world, tmp_path):
    cfg, storage, uri = tiny_world
    other = Storage(str(tmp_path))
    uri2 = run_miniweb(other, miniweb=cfg.miniweb, processes=2)
    assert uri2.rsplit("/", 1)[1] == uri.rsplit("/", 1)[1]  # same config, same version
    for shard in ("00000.tar", "00002.tar"):
        a = list(iter_shard(storage, join(uri, "kb", "shards", shard)))
        b = list(iter_shard(other, join(uri2, "kb", "shards", shard)))
        assert [(s["__key__"], s["jpg"], s["txt"]) for s in a] == [(s["__key__"], s["jpg"], s["txt"]) for s in b]


def test_generate_is_skipped_when_complete(tiny_world):
    cfg, storage, uri = tiny_world
    before = storage.stage_manifest(uri)["finished_at"]
    assert run_miniweb(storage, miniweb=cfg.miniweb, processes=1) == uri
    assert storage.stage_manifest(uri)["finished_at"] == before


def test_captions_are_alt_text_with_noise(tiny_world):
    _, storage, uri = tiny_world
    truth = pd.read_parquet(local_path(join(uri, "generic", "truth.parquet")))
    kinds = truth["caption_kind"].value_counts(normalize=True)
    assert set(kinds.index) == {"named", "unnamed", "junk", "unrelated"}
    assert 0.6 < kinds["named"] < 0.9
    concepts = json.loads(storage.read_bytes(join(uri, "concepts.json")))
    assert len(concepts) == 24


def test_an_extra_target_group_is_rare_in_the_generic_corpus_and_leaves_the_others_as_they_were():
    plain, extra = make_concepts(0, 60, 16, 12), make_concepts(0, 60, 16, 12, extra=6)
    moved = [(a, b) for a, b in zip(plain, extra, strict=True) if a != b]
    assert len(moved) == 6 and all(a.group == "other" and b.group == "extra" for a, b in moved)
    assert all(a == b.__class__(**{**b.__dict__, "group": "other"}) for a, b in moved)  # only the group changed
    cfg = load_config(overrides=["miniweb.n_concepts=60", "miniweb.extra_classes=6"]).miniweb
    ids = split_concept_ids(cfg, concepts_for(cfg), "generic", 20_000)
    per_concept = {}
    for g in ("extra", "other"):
        members = [c.id for c in concepts_for(cfg) if c.group == g]
        per_concept[g] = np.isin(ids, members).mean() / len(members)
    assert per_concept["extra"] < 0.1 * per_concept["other"]  # as rare as the targets (target_rate_generic 0.03)


def test_a_world_without_an_extra_task_keeps_its_version():
    from react_core.pipeline import miniweb_stage

    st = Storage("/tmp/unused-root")
    base = load_config().miniweb
    assert miniweb_stage(st, base).version == miniweb_stage(st, base.model_copy(update={"extra_classes": 0})).version
    assert miniweb_stage(st, base).version != miniweb_stage(st, base.model_copy(update={"extra_classes": 4})).version


def test_a_world_with_an_extra_task_writes_it_and_preflight_refuses_it_elsewhere(tmp_path):
    from react_core.preflight import check_miniweb_tasks
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path, **{"miniweb.extra_classes": 4, "retrieval.tasks": "[miniweb-fine, miniweb-extra]"})
    check_miniweb_tasks(cfg)
    st = Storage(cfg.storage.root)
    uri = run_miniweb(st, miniweb=cfg.miniweb, processes=1)
    data = read_vision_dataset(st, join(uri, "tasks", TASK_NAMES["extra"]), "test")
    assert len(data.classnames) == 4 and len(data) == 4 * cfg.miniweb.test_per_class
    with pytest.raises(ConfigError, match=r"retrieval.tasks names miniweb-extra, but miniweb.extra_classes is 0.*fix"):
        check_miniweb_tasks(tiny_config(tmp_path, **{"retrieval.tasks": "[miniweb-fine, miniweb-extra]"}))
