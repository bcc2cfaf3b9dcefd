"""Forgetting controls on the tiny chain: the replay sample, replayed batches, anchoring."""

import pytest

from react_core.config import DownloadConfig
from react_core.data.datasets import image_features, read_vision_dataset
from react_core.knowledge.download import download, downloaded_shards
from react_core.knowledge.replay import replay_pool_size
from react_core.knowledge.retrieve import read_manifest
from react_core.miniweb.serve import MiniWebServer
from react_core.models import create_model, model_file
from react_core.pipeline import run_replay, run_text_features
from react_core.registry import MINIWEB_GENERIC
from react_core.storage import Storage, join
from react_core.training.trainer import train

from .test_trainer import _job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def replayed(tiny_chain, tiny_world):
    """The replay sample (share 0.3, seed 0) of the tiny chain's retrieval, downloaded over HTTP."""
    st = tiny_chain["storage"]
    uri = run_replay(st, share=0.3, seed=0, embed_uri=tiny_chain["embed"], retrieve_uri=tiny_chain["retrieve"])
    _, world_storage, world = tiny_world
    with MiniWebServer(world_storage, world) as server:
        dl = download(st, uri, st.stage("download-replay", {}), DownloadConfig(processes_count=1), server.base_url)
    return uri, dl


def test_the_replay_sample_is_random_knowledge_base_pairs_outside_the_retrieval(tiny_chain, replayed):
    st = tiny_chain["storage"]
    uri, dl = replayed
    retrieved = read_manifest(st, tiny_chain["retrieve"])
    sample = read_manifest(st, uri)
    assert len(sample) == replay_pool_size(len(retrieved), 0.3) == -(-len(retrieved) * 3 // 7)
    assert not set(sample["key"]) & set(retrieved["key"]) and sample["key"].is_unique
    assert (sample["class_id"] == -1).all() and (sample["mode"] == "replay").all()
    assert (
        run_replay(st, share=0.3, seed=0, embed_uri=tiny_chain["embed"], retrieve_uri=tiny_chain["retrieve"]) == uri
    )  # the same stage again
    other = read_manifest(
        st, run_replay(st, share=0.3, seed=1, embed_uri=tiny_chain["embed"], retrieve_uri=tiny_chain["retrieve"])
    )
    assert set(other["key"]) != set(sample["key"])  # another seed, another sample
    assert run_replay(st, share=0.0, seed=0, embed_uri=tiny_chain["embed"], retrieve_uri=tiny_chain["retrieve"]) is None
    assert len(downloaded_shards(st, dl)) >= 1


def _drift(chain, world_storage, world, job) -> float:
    """Mean squared distance between the trained model's and the base's image features on miniweb-generic."""
    data = read_vision_dataset(world_storage, join(world, "tasks", MINIWEB_GENERIC), "test")
    cfg = chain["config"]
    feats = []
    for ckpt in (model_file(chain["base"]), model_file(job.stage_uri)):
        model, _ = create_model(cfg.model.name, ckpt, chain["storage"])
        feats.append(image_features(model, data)[0])
    return float((feats[0] - feats[1]).pow(2).sum(-1).mean())


def test_replayed_batches_and_anchoring_keep_the_features_the_base_had(tiny_chain, tiny_world, replayed):
    st, cfg = tiny_chain["storage"], tiny_chain["config"]
    _, world_storage, world = tiny_world
    _, dl = replayed
    base = model_file(tiny_chain["base"])
    replay = {
        "replay_shards": downloaded_shards(st, dl),
        "replay_text_features": run_text_features(st, model=cfg.model, checkpoint=base, download_uri=dl),
    }
    recipe = {"epochs": 3, "lr": 5e-2, "loss": "clip"}
    plain = _job(tiny_chain, "plain", **recipe)
    replay_only = _job(tiny_chain, "replay", replay=0.3, **recipe)
    anchored = _job(tiny_chain, "anchored", replay=0.3, anchor=5.0, **recipe)
    replay_only.replay_shards = anchored.replay_shards = replay["replay_shards"]
    replay_only.replay_text_features = anchored.replay_text_features = replay["replay_text_features"]
    summaries = {j.stage_uri.rsplit("/", 1)[1]: train(j, progress=False) for j in (plain, replay_only, anchored)}
    s = summaries["anchored"]
    assert 0 < s["replay_pairs"] <= len(read_manifest(st, replayed[0]))  # the downloaded share of the sample
    assert s["replay_per_batch"] == round(0.3 * s["global_batch"])
    history = st.read_json(join(anchored.stage_uri, "train_metrics.json"))
    assert all("train/anchor" in row for row in history)
    drift = {name: _drift(tiny_chain, world_storage, world, job)
             for name, job in (("plain", plain), ("replay", replay_only), ("anchored", anchored))}  # fmt: skip
    print("feature drift on miniweb-generic:", {k: float(f"{v:.3g}") for k, v in drift.items()})
    assert 0 < drift["anchored"] < 0.5 * drift["plain"], drift


def test_the_customize_flow_replays_and_anchors_when_asked(prefect_harness, tmp_path):
    from flows.customize import customize
    from tests.conftest import tiny_config
    from tests.integration.test_world_flow import _task_states

    cfg = tiny_config(tmp_path / "root", **{"training.replay": 0.25, "training.anchor": 1.0})
    out = customize(config=cfg)
    states = _task_states(out["flow_run_id"], {"replay-sample", "download replay", "train"})
    assert states["replay-sample"] == "Completed" and states["download replay"] == "Completed", states
    st = Storage(cfg.storage.root)
    train = st.stage_manifest(out["train"])
    assert train["inputs"]["replay"] == out["replay_download"]
    assert train["counts"]["replay_pairs"] > 0
    assert st.stage_manifest(out["replay"])["counts"]["pairs"] == replay_pool_size(
        st.stage_manifest(out["retrieve"])["counts"]["pairs"], 0.25
    )
    summary = st.read_json(join(out["train"], "model.json"))
    assert summary["replay_per_batch"] == round(0.25 * summary["global_batch"])


def test_held_out_pairs_are_kept_out_of_training(tiny_chain):
    from react_core.data import held_out, load_labelled_pairs

    st = tiny_chain["storage"]
    shards = downloaded_shards(st, tiny_chain["download"])
    _, _, keys, _ = load_labelled_pairs(st, shards, 32)
    mask = held_out(keys, 0.3)
    assert 0 < mask.sum() < len(keys)
    assert (held_out(keys, 0.3) == mask).all()  # the same pairs every time
    summary = train(_job(tiny_chain, "holdout", epochs=1, holdout=0.3), progress=False)
    assert summary["pairs"] == len(keys) - int(mask.sum())
