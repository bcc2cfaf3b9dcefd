"""The download stage: img2dataset fetches a retrieved manifest from the mini-web server."""

import io
import json
import os
import signal
import subprocess
import sys
import threading

import pandas as pd
import pytest

from react_core.config import DownloadConfig
from react_core.data import iter_shard
from react_core.knowledge.download import DownloadError, download, downloaded_shards
from react_core.knowledge.retrieve import read_manifest
from react_core.miniweb.serve import MiniWebServer
from react_core.storage import join
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def manifest(tiny_chain):
    """The tiny chain's retrieval for the fine task, downloaded afresh by each test into its own stage."""
    return tiny_chain["storage"], tiny_chain["retrieve"]


def test_download_fetches_every_live_image_and_counts_404s(tiny_world, manifest):
    _, storage, uri = tiny_world
    st, man_uri = manifest
    m = read_manifest(st, man_uri)
    truth = pd.read_parquet(storage.path(join(uri, "kb", "truth.parquet"))).set_index("key")
    dead = int(truth.loc[m["key"], "dead"].sum())
    with MiniWebServer(storage, uri) as server:
        out = download(st, man_uri, st.stage("download-test", {}), DownloadConfig(processes_count=1, thread_count=8),
                       base_url=server.base_url)  # fmt: skip
    s = st.stage_manifest(out)["summary"]
    assert s["count"] == len(m) and s["successes"] == len(m) - dead
    assert s["failures_by_reason"].get("http_404", 0) == dead
    samples = [x for shard in downloaded_shards(st, out) for x in iter_shard(st, shard)]
    assert len(samples) == s["successes"]
    meta = json.loads(samples[0]["json"])
    assert {"class_id", "class_name", "kb_key", "score", "mode"} <= set(meta)
    row = m.set_index("key").loc[meta["kb_key"]]
    assert samples[0]["txt"].decode() == row["caption"] and meta["class_id"] == row["class_id"]


def test_no_reachable_image_is_a_clear_error(manifest):
    st, man_uri = manifest
    with pytest.raises(DownloadError, match="could be downloaded.*image server is reachable"):
        download(st, man_uri, st.stage("download", {"x": 1}), DownloadConfig(processes_count=1, timeout=2, retries=0),
                 base_url=f"http://127.0.0.1:{free_port()}/")  # fmt: skip


_DOWNLOAD = """
import sys
from react_core.config import DownloadConfig
from react_core.knowledge.download import download
from react_core.storage import Storage
root, manifest_uri, base_url, per = sys.argv[1:]
st = Storage(root)
cfg = DownloadConfig(processes_count=1, thread_count=4, samples_per_shard=int(per))
download(st, manifest_uri, st.stage("download-resume", {"per": int(per)}), cfg, base_url)
"""


def test_download_killed_midway_ends_with_the_same_samples_when_run_again(tiny_world, manifest, tiny_chain):
    _, storage, world = tiny_world
    st, man_uri = manifest
    m = read_manifest(st, man_uri)
    per = 20
    assert len(m) > 4 * per
    # img2dataset cuts the input into shards of `per` rows in order; with one process it downloads them one
    # after another, so when a URL of shard 2 is first asked for, shards 0 and 1 are written. Hold every
    # request from there on, kill the download (all its processes), then run it again.
    later = {"/" + u.lstrip("/") for u in m["url"].iloc[2 * per :]}
    reached, release = threading.Event(), threading.Event()

    def hold(path: str) -> None:
        if path in later:
            reached.set()
            release.wait(timeout=300)

    stage = st.stage("download-resume", {"per": per})
    with MiniWebServer(storage, world, before_response=hold) as server:
        args = [sys.executable, "-c", _DOWNLOAD, st.root, man_uri, server.base_url, str(per)]
        proc = subprocess.Popen(args, start_new_session=True)
        try:
            assert reached.wait(timeout=300), "the download never reached its third shard"
            os.killpg(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=60) == -signal.SIGKILL
        finally:
            release.set()
    lp = st.path(stage.uri)
    assert not stage.done
    assert os.path.exists(f"{lp}/00000_stats.json") and os.path.exists(f"{lp}/00001_stats.json")
    assert not os.path.exists(f"{lp}/00002_stats.json")  # killed inside shard 2
    first_shard = os.stat(f"{lp}/00000.tar")

    with MiniWebServer(storage, world) as server:
        cfg = DownloadConfig(processes_count=1, thread_count=4, samples_per_shard=per)
        out = download(st, man_uri, stage, cfg, base_url=server.base_url)
    summary = st.stage_manifest(out)["summary"]
    uninterrupted = st.stage_manifest(tiny_chain["download"])["summary"]
    assert summary["count"] == len(m) and summary["shards"] == -(-len(m) // per)
    assert summary["successes"] == uninterrupted["successes"]
    keys = [json.loads(x["json"])["kb_key"] for shard in downloaded_shards(st, out) for x in iter_shard(st, shard)]
    assert len(keys) == len(set(keys)) == summary["successes"]
    assert os.stat(f"{lp}/00000.tar").st_mtime_ns == first_shard.st_mtime_ns  # finished shards were not redone


def test_extraction_from_local_shards_writes_what_img2dataset_writes(manifest, tiny_chain):
    """download.mode=extract: the selected pairs read out of the knowledge-base shards, img2dataset's layout."""
    from react_core.data import decode_image, load_labelled_pairs
    from react_core.knowledge.extract import extract

    st, man_uri = manifest
    m = read_manifest(st, man_uri)
    cfg = DownloadConfig(mode="extract", samples_per_shard=50)
    stage = st.stage("extract-test", cfg)
    out = extract(st, man_uri, stage, cfg)
    summary = st.stage_manifest(out)["summary"]
    # every pair is in its shard, dead link or not
    assert summary["count"] == summary["successes"] == len(m) and summary["source"] == "knowledge-base shards"
    n_shards = -(-len(m) // 50)
    lp = st.path(out)
    for n in range(n_shards):
        assert all(os.path.exists(f"{lp}/{n:05d}{ext}") for ext in (".tar", ".parquet", "_stats.json"))
    extracted = {json.loads(x["json"])["kb_key"]: x for s in downloaded_shards(st, out) for x in iter_shard(st, s)}
    assert set(extracted) == set(m["key"])
    fetched = {json.loads(x["json"])["kb_key"]: x for s in downloaded_shards(st, tiny_chain["download"])
               for x in iter_shard(st, s)}  # fmt: skip
    assert fetched and set(fetched) <= set(extracted)
    for key in list(fetched)[:20]:  # the same pair as img2dataset fetched: caption, labels, pixels
        a, b = json.loads(extracted[key]["json"]), json.loads(fetched[key]["json"])
        assert extracted[key]["txt"] == fetched[key]["txt"]
        assert (a["class_id"], a["class_name"], a["score"]) == (b["class_id"], b["class_name"], b["score"])
        assert (decode_image(extracted[key]["jpg"]) == decode_image(fetched[key]["jpg"])).all()
    _, _, _, class_ids = load_labelled_pairs(st, downloaded_shards(st, out), 32)
    assert len(class_ids) == len(m) and (class_ids >= 0).all()

    # resumable by output shard: as if killed while writing shard 1
    st.rm(stage.file("_SUCCESS"))
    st.rm(stage.file("00001_stats.json"))
    kept = os.stat(f"{lp}/00000.tar").st_mtime_ns
    again = extract(st, man_uri, stage, cfg)
    assert st.stage_manifest(again)["counts"]["successes"] == len(m)
    assert os.stat(f"{lp}/00000.tar").st_mtime_ns == kept


def test_a_manifest_without_urls_is_extracted_not_fetched(manifest):
    from react_core import pipeline

    st, man_uri = manifest
    m = read_manifest(st, man_uri).assign(url=None)
    no_urls = st.uri("retrieve-no-urls")
    buf = io.BytesIO()
    lost = m.iloc[:1].assign(key="lost", offset=10**6)  # a row whose sample is not in its shard
    pd.concat([m, lost], ignore_index=True).to_parquet(buf)
    st.write_bytes(f"{no_urls}/manifest.parquet", buf.getvalue())
    out = pipeline.run_download(
        st, download=DownloadConfig(samples_per_shard=100), retrieve_uri=no_urls, miniweb_uri=None
    )  # mode: auto
    summary = st.stage_manifest(out)["summary"]
    assert summary["source"] == "knowledge-base shards" and summary["successes"] == len(m)
    assert summary["count"] == len(m) + 1 and summary["failed_to_download"] == 1
    with pytest.raises(DownloadError, match="rows without shard/offset.*download.mode=fetch"):
        bad = st.uri("retrieve-no-places")
        buf = io.BytesIO()
        m.assign(shard=None).to_parquet(buf)
        st.write_bytes(f"{bad}/manifest.parquet", buf.getvalue())
        pipeline.run_download(st, download=DownloadConfig(), retrieve_uri=bad, miniweb_uri=None)


def test_timeouts_and_html_served_as_jpeg_are_counted_rows_not_crashes(tiny_world, manifest):
    _, storage, world = tiny_world
    st, man_uri = manifest
    m = read_manifest(st, man_uri)
    truth = pd.read_parquet(storage.path(join(world, "kb", "truth.parquet"))).set_index("key")
    live = m[~truth.loc[m["key"], "dead"].to_numpy()]
    paths = ["/" + u.lstrip("/") for u in live["url"]]
    stalled, html = set(paths[:5]), set(paths[5:12])
    release = threading.Event()

    def fault(path: str) -> bytes | None:
        if path in stalled:  # answer only after the client gave up (download.timeout)
            release.wait(timeout=120)
        return b"<html><body>Access denied</body></html>" if path in html else None

    try:
        with MiniWebServer(storage, world, before_response=fault) as server:
            cfg = DownloadConfig(processes_count=1, thread_count=8, timeout=3, retries=0)
            out = download(st, man_uri, st.stage("download-faults", {}), cfg, base_url=server.base_url)
    finally:
        release.set()
    s = st.stage_manifest(out)["summary"]
    dead = len(m) - len(live)
    assert s["failures_by_reason"] == {"http_404": dead, "timeout": len(stalled), "decode_error": len(html)}
    assert s["count"] == len(m) and s["successes"] == len(live) - len(stalled) - len(html)


def test_two_downloads_of_one_manifest_train_the_same_model(tiny_world, manifest, tiny_chain):
    """img2dataset writes samples as its threads finish; training reads them in manifest (key) order, so the
    same config on two fresh downloads gives the same pairs, the same caption features and the same weights."""
    import torch

    from react_core.config import TrainingConfig
    from react_core.data import load_captions
    from react_core.models import load_state_dict, model_file
    from react_core.pipeline import run_text_features
    from react_core.training.customize import customize

    _, storage, world = tiny_world
    st, ret = manifest
    recipe = TrainingConfig(gated_layers=1, batch_size=32, lr=5e-3, warmup_steps=2, epochs=1, precision="fp32",
                            augment={"enabled": False}, num_workers=0)  # fmt: skip
    cfg = tiny_chain["config"]
    base = model_file(tiny_chain["base"])
    written, read, weights = [], [], []
    for i in range(2):
        stage = st.stage("download-twice", {"i": i}, {"retrieve": ret})
        with MiniWebServer(storage, world) as server:
            uri = download(st, ret, stage, DownloadConfig(processes_count=1, thread_count=16), server.base_url)
        shards = downloaded_shards(st, uri)
        written.append([s["__key__"] for u in shards for s in iter_shard(st, u) if "jpg" in s])
        read.append(load_captions(st, shards)[1])
        text = run_text_features(st, model=cfg.model, checkpoint=base, download_uri=uri)
        trained = customize(cfg.model.name, base, recipe, st, shards, st.stage("train-twice", {"i": i}), text,
                            progress=False)  # fmt: skip
        weights.append(load_state_dict(model_file(trained)))
    assert sorted(written[0]) == sorted(written[1]) and read[0] == read[1] == sorted(read[0])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
