"""The download stage: img2dataset fetches a retrieved manifest from the mini-web server."""

import json

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
