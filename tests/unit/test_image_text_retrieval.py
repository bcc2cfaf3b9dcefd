"""Image-text retrieval: recall@K against hand-computed ranks, and the Karpathy-split reader."""

import json

import pytest
import torch
from PIL import Image

from react_core.data import DatasetError
from react_core.data.datasets import open_dataset, read_karpathy
from react_core.evaluation.retrieval import recall_at_k
from react_core.storage import Storage


def _unit(*rows):
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.norm(dim=1, keepdim=True)


def test_recall_at_k_counts_the_best_own_caption_and_the_own_image():
    # 3 images on the axes; captions: two of image 0, one of image 1, one of image 2.
    image = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    text = _unit([0.2, 1, 0], [1, 0.1, 0], [0, 1, 0.1], [0.9, 0, 1])
    caption_image = torch.tensor([0, 0, 1, 2])
    r = recall_at_k(image, text, caption_image, ks=(1, 2), block=2)  # blocks smaller than the sets
    # image -> text: image 0's best own caption (#1) ranks first; image 1: caption #2 (0.995) beats #0 (0.98):
    # first; image 2: caption #3 (0.74) ranks first. All three at rank 0.
    assert r["i2t_r1"] == pytest.approx(1.0) and r["i2t_r2"] == pytest.approx(1.0)
    # text -> image: caption #0 (of image 0) is nearest image 1: rank 1; #1 -> image 0 rank 0; #2 -> image 1 rank 0;
    # #3 (of image 2): sims 0.67 (image 0) vs 0.74 (image 2): rank 0.
    assert r["t2i_r1"] == pytest.approx(3 / 4) and r["t2i_r2"] == pytest.approx(1.0)
    assert list(r) == ["i2t_r1", "i2t_r2", "t2i_r1", "t2i_r2"]


def test_ties_are_broken_in_index_order_as_the_standard_protocol_does():
    image = _unit([1, 0], [1, 0], [0, 1])
    text = _unit([1, 0], [0, 1])
    r = recall_at_k(image, text, torch.tensor([1, 0]), ks=(1, 2))
    # caption 0 ties images 0 and 1: image 0 comes first in index order, so its own image (1) is second;
    # caption 1 (of image 0) is nearest image 2, then images 0 and 1 tie: its own (0) is second
    assert r["t2i_r1"] == pytest.approx(0.0) and r["t2i_r2"] == pytest.approx(1.0)


def test_a_caption_repeated_across_images_counts_for_the_earlier_one():
    # Captions repeat across images in web-style caption sets ("a photo of a dog"): identical text, identical
    # features. Caption #0 (image 0's) and #2 (image 1's only caption) are the same text; #1 is image 0's other
    # caption, #3 and #4 image 2's.
    image = _unit([1, 0.3, 0], [1, 0, 0.3], [0, 0, 1])
    repeated = [1, 0.1, 0.1]
    text = _unit(repeated, [0, 1, 0], repeated, [0.2, 0.2, 1], [0, 0.5, 1])
    caption_image = torch.tensor([0, 0, 1, 2, 2])
    r = recall_at_k(image, text, caption_image, ks=(1, 2, 3))
    # image -> text: image 0: #0 and #2 tie at the top, #0 (its own) first: a hit at 1. Image 1: the same tie, and #0
    # (image 0's) is listed before its own #2: first own at rank 1, a hit only from R@2 (the old "a tie counts for
    # the positive" rule gave it R@1). Image 2: own #3 (0.96) leads.
    assert r["i2t_r1"] == pytest.approx(2 / 3) and r["i2t_r2"] == pytest.approx(1.0)
    # text -> image: #0 and #2 tie between images 0 and 1 (0.977 each): image 0 first, so #0 is a hit and #2 (of
    # image 1) is second; #1 -> image 0 (own); #3, #4 -> image 2 (own).
    assert r["t2i_r1"] == pytest.approx(4 / 5) and r["t2i_r2"] == pytest.approx(1.0)


def _clip_benchmark_recall(scores: torch.Tensor, positive: torch.Tensor, k: int) -> float:
    """CLIP_benchmark's recall_at_k, written out: top-k per row (ties in index order), hit if any is positive."""
    top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return float(positive.gather(1, top).any(dim=1).float().mean())


def test_recall_agrees_with_the_standard_protocol_on_random_sets_with_repeated_captions():
    g = torch.Generator().manual_seed(0)
    n, per = 40, 3
    image = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=1)
    text = torch.nn.functional.normalize(torch.randn(n * per, 8, generator=g), dim=1)
    text[1::7] = text[0]  # a caption repeated across many images
    text = torch.round(text * 4) / 4  # coarse features: many exact ties
    text = torch.nn.functional.normalize(text, dim=1)
    caption_image = torch.arange(n).repeat_interleave(per)
    r = recall_at_k(image, text, caption_image, ks=(1, 5, 10), block=7)
    positive = caption_image[None, :] == torch.arange(n)[:, None]  # (N, M)
    for k in (1, 5, 10):
        assert r[f"i2t_r{k}"] == pytest.approx(_clip_benchmark_recall(image @ text.T, positive, k))
        assert r[f"t2i_r{k}"] == pytest.approx(_clip_benchmark_recall(text @ image.T, positive.T, k))


def _karpathy(tmp_path, with_filepath=True, folder="images"):
    (tmp_path / folder).mkdir(parents=True)
    entries = []
    for i, split in enumerate(["test", "test", "train"]):
        Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(tmp_path / folder / f"{i}.jpg")
        e = {"filename": f"{i}.jpg", "split": split, "sentences": [{"raw": f" caption {i} a "}, {"raw": f"b {i}"}]}
        if with_filepath:
            e["filepath"] = folder
        entries.append(e)
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": entries}))
    return Storage(str(tmp_path))


def test_karpathy_split_files_read_as_caption_sets(tmp_path):
    st = _karpathy(tmp_path / "coco")
    data = open_dataset(st, st.uri(), "test", "coco-captions")
    assert len(data) == 2 and data.captions == [["caption 0 a", "b 0"], ["caption 1 a", "b 1"]]
    assert data.images[1].endswith("/images/1.jpg") and data.targets == [[0], [1]]
    flickr = _karpathy(tmp_path / "flickr", with_filepath=False, folder="flickr30k-images")
    assert read_karpathy(flickr, flickr.uri(), "test").images[0].endswith("/flickr30k-images/0.jpg")
    with pytest.raises(DatasetError, match=r"lists no 'val' images; it has \['test', 'train'\]; fix: evaluation.split"):
        read_karpathy(st, st.uri(), "val")


def test_the_label_free_rule_keeps_most_of_the_proxy_gain_and_then_the_most_retention():
    from react_core.evaluation.selection import Proxies, choose

    base = Proxies(target=0.30, retention=0.50)
    candidates = {
        "lambda 1": Proxies(0.90, 0.40),  # the largest gain (0.60), the most forgetting
        "lambda 0.7": Proxies(0.86, 0.46),  # 0.56 >= 0.9 x 0.60: eligible, retains more
        "lambda 0.5": Proxies(0.70, 0.49),  # 0.40: not eligible, however little it forgets
        "replay": Proxies(0.85, 0.47),  # 0.55: eligible and retains the most
    }
    assert choose(candidates, base) == "replay"
    assert choose(candidates, base, keep=0.92) == "lambda 0.7"  # 0.552 needed: replay's 0.55 is out
    assert choose({"only": Proxies(0.1, 0.1)}, base) == "only"
