"""Readers of evaluation datasets, on small datasets generated in each layout.

Every image of class c is filled with grey level 40 * c + 20, so a decoded image tells its class.
"""

import io
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from react_core.data import DatasetError
from react_core.data.datasets import open_dataset, read_image_folder, read_vision_dataset, read_webdataset
from react_core.storage import Storage, join


def jpeg(level: int, size: tuple[int, int] = (20, 12)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), level, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def level_of(image: torch.Tensor) -> int:
    return round((float(image.float().mean()) - 20) / 40)


def all_items(evalset, size=8):
    ds = evalset.torch_dataset(size)
    items = list(ds) if evalset.shards else [ds[i] for i in range(len(ds))]
    assert all(x.shape == (3, size, size) and x.dtype == torch.uint8 for x, _ in items)
    return items


def write_text_index(st: Storage, root: str, multilabel: bool = False, lines: list[str] | None = None) -> None:
    """ELEVATER's layout: a zip of images, a text index 'zip@member labels', a label map."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(6):
            z.writestr(f"test/{i}.png", jpeg(40 * (i % 3) + 20))
    st.write_bytes(join(root, "test_images.zip"), buf.getvalue())
    if lines is None:
        lines = [
            f"test_images.zip@test/{i}.png {i % 3}" + (",2" if multilabel and i % 3 == 0 else "") for i in range(6)
        ]
    st.write_bytes(join(root, "test.txt"), "\n".join(lines).encode())
    st.write_bytes(join(root, "labels.txt"), b"cat\ndog\nowl\n")
    info = {"name": "toy", "type": "classification_multilabel" if multilabel else "classification_multiclass",
            "root_folder": "", "labelmap": "labels.txt", "test": {"index_path": "test.txt"}}  # fmt: skip
    st.write_json(join(root, "dataset_info.json"), info)


def test_vision_datasets_text_index_reads_zip_members(tmp_path):
    st = Storage(str(tmp_path))
    write_text_index(st, st.uri("toy"))
    ds = open_dataset(st, st.uri("toy"), "test")
    assert ds.classnames == ["cat", "dog", "owl"] and len(ds) == 6 and not ds.multilabel
    for x, y in all_items(ds):
        assert level_of(x) == int(y)


def test_vision_datasets_multilabel_targets_are_multi_hot(tmp_path):
    st = Storage(str(tmp_path))
    write_text_index(st, st.uri("voc"), multilabel=True)
    ds = read_vision_dataset(st, st.uri("voc"), "test")
    items = all_items(ds)
    assert ds.multilabel
    assert items[0][1].tolist() == [1.0, 0.0, 1.0] and items[1][1].tolist() == [0.0, 1.0, 0.0]


def test_vision_datasets_coco_multilabel(tmp_path):
    st = Storage(str(tmp_path))
    root = st.uri("coco")
    st.write_bytes(join(root, "images", "a.png"), jpeg(20))
    st.write_bytes(join(root, "images", "b.png"), jpeg(60))
    coco = {"images": [{"id": 1, "file_name": "images/a.png"}, {"id": 2, "file_name": "images/b.png"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1}, {"id": 2, "image_id": 1, "category_id": 2},
                            {"id": 3, "image_id": 2, "category_id": 2}],
            "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}]}  # fmt: skip
    st.write_json(join(root, "test.json"), coco)
    st.write_json(join(root, "dataset_info.json"), {"name": "c", "type": "classification_multilabel", "format": "coco",
                                                    "test": {"index_path": "test.json"}})  # fmt: skip
    items = all_items(read_vision_dataset(st, root, "test"))
    assert [t.tolist() for _, t in items] == [[1.0, 1.0], [0.0, 1.0]]


def test_image_folders_in_sorted_class_order_with_classnames_file(tmp_path):
    st = Storage(str(tmp_path))
    for c, wnid in enumerate(["n01", "n02", "n03"]):
        for j in range(2):
            st.write_bytes(st.uri("inet", "val", wnid, f"{j}.JPEG"), jpeg(40 * c + 20, (30, 16)))
    st.write_bytes(st.uri("inet", "val", "README.txt"), b"not an image folder")
    st.write_bytes(st.uri("inet", "classnames.txt"), b"tench\ngoldfish\nshark\n")
    ds = open_dataset(st, st.uri("inet"), "val")
    assert ds.classnames == ["tench", "goldfish", "shark"] and len(ds) == 6
    for x, y in all_items(ds):
        assert level_of(x) == int(y)
    with pytest.raises(DatasetError, match="no 'train' folder; it has \\['val'\\]"):
        read_image_folder(st, st.uri("inet"), "train")
    st.write_bytes(st.uri("inet", "classnames.txt"), b"tench\ngoldfish\n")
    with pytest.raises(DatasetError, match="classnames.txt has 2 names but .* 3 class folders"):
        read_image_folder(st, st.uri("inet"), "val")


def test_webdataset_with_cls_labels_and_worker_split(tmp_path):
    st = Storage(str(tmp_path))
    (tmp_path / "wds").mkdir()
    for shard in range(2):
        with tarfile.open(tmp_path / "wds" / f"{shard:05d}.tar", "w") as tar:
            for i in range(3):
                label = (shard * 3 + i) % 3
                for ext, data in (("png", jpeg(40 * label + 20)), ("cls", str(label).encode())):
                    info = tarfile.TarInfo(f"s{shard}_{i}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    st.write_bytes(st.uri("wds", "classnames.txt"), b"a\nb\nc\n")
    ds = open_dataset(st, st.uri("wds"), "test")
    assert ds.shards and ds.classnames == ["a", "b", "c"]
    items = all_items(ds)
    assert len(items) == 6 and all(level_of(x) == int(y) for x, y in items)
    from react_core.data.datasets import loader  # its workers shed a parent's Prefect exit hooks

    labels = torch.cat(
        [y for _, y in loader(ds, image_size=8, batch_size=4, num_workers=2, device=torch.device("cpu"))]
    )
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]  # each shard read once across 2 workers
    with pytest.raises(DatasetError, match="classnames.txt"):
        st.rm(st.uri("wds", "classnames.txt"))
        read_webdataset(st, st.uri("wds"))


def test_bad_datasets_are_clear_errors(tmp_path):
    st = Storage(str(tmp_path))
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(st, st.uri("nowhere"))
    (tmp_path / "empty" / "test" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        open_dataset(st, st.uri("empty"), "test")
    write_text_index(st, st.uri("bad"), lines=["test_images.zip@test/0.png 0", "test_images.zip@test/1.png 7"])
    with pytest.raises(DatasetError, match=r"test.txt:2: label\(s\) \[7\] outside the 3 classes of .*labels.txt"):
        read_vision_dataset(st, st.uri("bad"), "test")
    write_text_index(st, st.uri("ok"))
    ds = read_vision_dataset(st, st.uri("ok"), "test")
    with pytest.raises(DatasetError, match="3 classes on disk but the ELEVATER entry has 2 class names"):
        ds.with_names(["x", "y"], ["{}"], "the ELEVATER entry")
    with pytest.raises(DatasetError, match="no 'train' split; it has \\['test'\\]"):
        read_vision_dataset(st, st.uri("ok"), "train")
    write_text_index(st, st.uri("multi"), lines=["test_images.zip@test/0.png 0,1"])
    with pytest.raises(DatasetError, match="2 labels in a multi-class dataset"):
        read_vision_dataset(st, st.uri("multi"), "test")


def test_prepare_gives_open_clips_validation_pixels():
    import open_clip

    from react_core.data.datasets import prepare
    from react_core.models.encode import normalize

    preprocess = open_clip.image_transform(32, is_train=False)  # what create_model_and_transforms returns
    rng = np.random.default_rng(0)
    for w, h in ((45, 33), (20, 52), (32, 32), (64, 64)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ours = normalize(prepare(img, 32)[None])[0]
        assert torch.allclose(ours, preprocess(img), atol=1e-5), (w, h)


def test_labelled_pairs_keep_the_class_of_the_searches_named(tmp_path):
    """The choice's target proxy reads held-out pairs whose class a caption search gave (label_modes=[t2t]); a
    t2i pair's class (the base model's reading of its image) is dropped to -1, its image still decoded."""
    import json

    from react_core.data import load_labelled_pairs

    st = Storage(str(tmp_path))
    rows = [(0, "t2t"), (1, "t2i"), (2, "t2t"), (None, None)]  # None: an unclassed pair
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for i, (cid, mode) in enumerate(rows):
            meta = {} if cid is None else {"class_id": cid, "mode": mode}
            for ext, data in (
                ("jpg", jpeg(30 * i + 10)),
                ("txt", f"pair {i}".encode()),
                ("json", json.dumps(meta).encode()),
            ):
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    uri = st.uri("00000.tar")
    images, captions, _, every = load_labelled_pairs(st, [uri], 8)
    assert every.tolist() == [0, 1, 2, -1] and len(images) == 4
    _, _, _, t2t = load_labelled_pairs(st, [uri], 8, label_modes=["t2t"])
    assert t2t.tolist() == [0, -1, 2, -1]
    _, _, _, both = load_labelled_pairs(st, [uri], 8, label_modes=["t2t", "t2i"])
    assert both.tolist() == every.tolist() and captions == ["pair 0", "pair 1", "pair 2", "pair 3"]
