"""The embed stage fanned out over a real Dask cluster (2 worker processes) through prefect-dask."""

import os

import numpy as np
import pytest

from react_core.knowledge.embeddings import load_embeddings, load_metadata
from react_core.storage import Storage, join
from tests.conftest import tiny_config

pytestmark = pytest.mark.integration


def test_embedding_tasks_run_on_the_dask_workers(prefect_harness, tiny_chain, tmp_path):
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("prefect_dask")
    from prefect import flow

    from react_core import pipeline, plans
    from react_core.models import model_file
    from tasks.stage import PrefectRunner

    world, base = tiny_chain["world"], model_file(tiny_chain["base"])
    n_shards = len(tiny_chain["storage"].ls(join(world, "kb", "shards"), "*.tar"))
    assert n_shards >= 3
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        # the world lives under another root; knowledge_base.source points at its shards
        cfg = tiny_config(
            tmp_path / "root",
            **{"knowledge_base.source": join(world, "kb", "shards"), "knowledge_base.shards_per_task": 1,
               "knowledge_base.dask_address": cluster.scheduler_address},
        )  # fmt: skip

        @flow
        def embed_on_dask() -> str:
            return plans.embed(cfg, PrefectRunner(cfg, None), base, None)

        uri = embed_on_dask()
        with distributed.Client(cluster) as client:
            worker_pids = set(client.run(os.getpid).values())
    st = Storage(cfg.storage.root)
    stats = [st.read_json(u) for u in st.ls(join(uri, "stats"), "*.json")]
    assert len(stats) == n_shards
    used = {int(s["worker"].rsplit(":", 1)[1]) for s in stats}
    assert used == worker_pids and os.getpid() not in used  # both workers embedded, the flow's process did not
    counts = st.stage_manifest(uri)["counts"]
    assert counts["shards"] == n_shards and counts["resumed_shards"] == 0
    speed = st.read_json(join(uri, "throughput.json"))  # pairs per second of each Dask worker process
    assert {int(w.rsplit(":", 1)[1]) for w in speed} == worker_pids and counts["workers"] == 2
    assert sum(w["pairs"] for w in speed.values()) == counts["embedded"]
    meta, img = load_metadata(st, uri), load_embeddings(st, uri)
    assert len(meta) == len(img) == counts["embedded"] > 0
    assert np.allclose(np.linalg.norm(img.astype(np.float32), axis=1), 1, atol=1e-2)
    # the same rows and embeddings as the library's one-process embedding of the same shards and model
    single = tiny_chain["embed"]
    assert meta[["key", "shard", "offset"]].equals(
        load_metadata(tiny_chain["storage"], single)[["key", "shard", "offset"]]
    )
    assert np.allclose(
        img.astype(np.float32), load_embeddings(tiny_chain["storage"], single).astype(np.float32), atol=2e-3
    )
    assert (
        pipeline.embed_plan(st, model=cfg.model, knowledge_base=cfg.knowledge_base, checkpoint=base, miniweb_uri=None)[
            1
        ]
        == []
    )
