"""img2dataset downloads the mini-web's knowledge base for real, over a localhost HTTP server."""

import glob
import json
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from react_core.miniweb.serve import MiniWebServer
from react_core.storage import StorageError, join

pytestmark = pytest.mark.integration


def test_server_serves_images_and_404s_dead_links(tiny_world):
    _, storage, uri = tiny_world
    with MiniWebServer(storage, uri) as server:
        urls = server.urls()
        assert urls["url"].str.startswith(server.base_url).all()
        truth = pd.read_parquet(storage.path(join(uri, "kb", "truth.parquet")))
        alive = urls[~truth["dead"].values].iloc[0]
        with urllib.request.urlopen(alive["url"], timeout=10) as r:
            assert r.headers["Content-Type"] == "image/jpeg"
            assert r.read() == storage.read_bytes(join(uri, "kb", alive["url"][len(server.base_url) :]))
        dead = urls[truth["dead"].values]
        assert len(dead) > 0
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(dead.iloc[0]["url"], timeout=10)
        assert e.value.code == 404
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(server.base_url + "../concepts.json", timeout=10)


def test_img2dataset_downloads_every_live_image(tiny_world, tmp_path):
    from img2dataset import download

    _, storage, uri = tiny_world
    with MiniWebServer(storage, uri) as server:
        urls = server.urls()
        sample = urls.iloc[:300]
        sample.to_parquet(tmp_path / "urls.parquet")
        out = tmp_path / "out"
        download(
            url_list=str(tmp_path / "urls.parquet"),
            input_format="parquet",
            url_col="url",
            caption_col="caption",
            output_format="webdataset",
            output_folder=str(out),
            processes_count=1,
            thread_count=8,
            image_size=32,
            resize_mode="no",
            number_sample_per_shard=1000,
            timeout=5,
            retries=0,
            enable_wandb=False,
            distributor="multiprocessing",
        )
    stats = [json.loads(Path(p).read_text()) for p in glob.glob(str(out / "*_stats.json"))]
    truth = pd.read_parquet(storage.path(join(uri, "kb", "truth.parquet"))).iloc[:300]
    assert sum(s["count"] for s in stats) == 300
    assert sum(s["successes"] for s in stats) == int((~truth["dead"]).sum())
    assert sum(s["failed_to_download"] for s in stats) == int(truth["dead"].sum())


def test_serving_a_world_without_image_files_is_a_clear_error(tiny_world):
    _, storage, _ = tiny_world
    with pytest.raises(StorageError, match="write_image_files"):
        MiniWebServer(storage, storage.uri("miniweb", "nonexistent"))
