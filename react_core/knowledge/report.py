"""What people look at after retrieval: per-class counts (a bar plot) and a grid of retrieved samples."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import pandas as pd
from PIL import Image, ImageDraw

from react_core.data import read_kb_images
from react_core.storage import Storage


def class_count_figure(counts: dict[str, int], title: str = "retrieved pairs per class"):
    """A horizontal bar chart of pairs per class (classes with none are drawn red)."""
    names = list(counts)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.25 * len(names) + 1)))
    ax.barh(names, [counts[n] for n in names], color=["#c0392b" if counts[n] == 0 else "#2e86c1" for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("pairs")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def sample_grid(storage: Storage, manifest: pd.DataFrame, per_class: int = 8, cell: int = 64) -> Image.Image:
    """One row per class: its best-scoring retrieved images (read back from the knowledge-base shards)."""
    top = manifest.sort_values("score", ascending=False).groupby("class_id", sort=True).head(per_class)
    places = [(shard, int(offset)) for shard, offset in zip(top["shard"], top["offset"])]
    found = read_kb_images(storage, places)  # one pass per shard
    images: dict[int, Image.Image] = {
        pos: Image.open(io.BytesIO(found[place])).convert("RGB").resize((cell, cell))
        for pos, place in enumerate(places)
        if place in found
    }
    classes = sorted(top["class_id"].unique())
    label_w = 150
    grid = Image.new("RGB", (label_w + per_class * cell, len(classes) * cell), "white")
    draw = ImageDraw.Draw(grid)
    names = dict(zip(top["class_id"], top["class_name"]))
    for r, c in enumerate(classes):
        draw.text((4, r * cell + cell // 2 - 6), str(names[c])[:22], fill="black")
        for j, pos in enumerate(top.index.get_indexer(top[top["class_id"] == c].index)):
            if pos in images:
                grid.paste(images[pos], (label_w + j * cell, r * cell))
    return grid
