"""Datasets: readers for four on-disk layouts (evaluation sets, target tasks), over any fsspec storage, decoded lazily.

* **vision-datasets** (ELEVATER's layout): a folder with ``dataset_info.json`` naming, per split, an
  index file: COCO JSON (``"format": "coco"``: images, annotations, categories with ids from 1) or the
  image-classification text index (one line per image: ``path label[,label...]``, labels from 0, names
  in the ``labelmap`` file). Image paths may point into a zip (``train_images.zip@a/1.jpg``), as the
  ELEVATER downloads do. ``"type": "classification_multilabel"`` (VOC-2007) keeps every label.
  The ``vision-datasets`` package reads this layout too, but only from local disk or Azure blobs (it
  pulls in the Azure SDK); datasets here live on any fsspec storage (S3 included), so the layout is
  read directly.
* **image folders** (ImageNet's layout): ``{root}/{split}/{class}/*.jpg`` (or ``{root}/{class}/*.jpg``);
  classes in sorted folder order, which for ImageNet's WordNet ids is the order of the standard class list.
* **webdataset**: ``*.tar`` shards of ``{key}.jpg`` (or png/webp) and ``{key}.cls`` (class index) or
  ``{key}.json`` with ``label``; class names from ``classnames.txt`` beside the shards or the task.
* **captions** (image-text retrieval; Karpathy's split files of COCO and Flickr30K): a folder with
  ``dataset_{coco,flickr30k,...}.json`` (``images``: ``filename``, optional ``filepath``, ``split``,
  ``sentences`` with ``raw``) and the images under ``{filepath}/{filename}`` (or ``images/``,
  ``flickr30k-images/`` or the folder itself). An image's targets are its own index; its captions are in
  ``EvalSet.captions``.

Images are decoded in DataLoader workers: resized on the short side and centre-cropped to the model's
input size (open_clip's evaluation transform), and handed over as uint8 so that batches are small to
move; normalisation happens on the model's device.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from react_core.data import DatasetError, iter_shard
from react_core.models.encode import encode_images, model_device, model_image_size
from react_core.storage import Storage, StorageError, join

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_WDS_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


@dataclass
class EvalSet:
    """One split of an image-classification dataset: where its images are, their labels, its classes."""

    name: str
    classnames: list[str]
    templates: list[str]
    source: str  # the folder it was read from (for messages and metrics.json)
    storage: Storage | None = None
    images: list[str] = field(default_factory=list)  # image URIs; "{zip uri}@{member}" inside zips
    targets: list[list[int]] = field(default_factory=list)  # class indices per image
    multilabel: bool = False
    shards: list[str] = field(default_factory=list)  # webdataset: read by iteration, not by index
    tensors: tuple[torch.Tensor, torch.Tensor] | None = None  # in memory: (N, 3, H, W) uint8, (N,) labels
    captions: list[list[str]] | None = None  # a caption set (image-text retrieval): each image's captions

    def __len__(self) -> int:
        if self.tensors is not None:
            return len(self.tensors[0])
        return len(self.images)

    def torch_dataset(self, image_size: int) -> torch.utils.data.Dataset:
        if self.tensors is not None:
            return _Tensors(*self.tensors, image_size)
        if self.shards:
            return _Shards(self, image_size)
        return _Files(self, image_size)

    def with_names(self, classnames: Sequence[str], templates: Sequence[str], what: str) -> EvalSet:
        """The same images with another name list for the same classes (e.g. CLIP's names for ELEVATER's)."""
        if len(classnames) != len(self.classnames):
            raise DatasetError(
                f"{self.source}: {len(self.classnames)} classes on disk but {what} has {len(classnames)} class "
                "names; fix: point at the dataset the names belong to, or give the dataset's own label map"
            )
        self.classnames, self.templates = list(classnames), list(templates)
        return self


def from_tensors(name: str, images: torch.Tensor, labels: torch.Tensor, classnames: list[str], templates: list[str]):
    """An in-memory split (generated test sets)."""
    return EvalSet(name, list(classnames), list(templates), f"memory:{name}", tensors=(images, labels))


# -- decoding -------------------------------------------------------------------------------------------


def prepare(img: Image.Image, size: int) -> torch.Tensor:
    """Short side to ``size`` (bicubic), centre crop ``size`` x ``size``: (3, size, size) uint8.

    The same pixels as open_clip's validation transform (torchvision ``Resize(size)`` then
    ``CenterCrop(size)`` on a PIL image: the long side truncated, the crop offset rounded).
    """
    img = img.convert("RGB")
    w, h = img.size
    if (w, h) != (size, size):
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.BICUBIC)
        left, top = round((nw - size) / 2.0), round((nh - size) / 2.0)  # Python rounds half to even, as torchvision
        img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()


class _ZipCache:
    """Open zip archives, one set per process (DataLoader workers must not share a parent's file offset)."""

    def __init__(self) -> None:
        self.pid, self.open = os.getpid(), {}

    def read(self, storage: Storage, uri: str, member: str) -> bytes:
        if self.pid != os.getpid():
            self.pid, self.open = os.getpid(), {}
        if uri not in self.open:
            self.open[uri] = zipfile.ZipFile(storage.open(uri, "rb"))
        try:
            return self.open[uri].read(member)
        except KeyError:
            raise DatasetError(f"{uri} has no member {member!r}; fix: check the index file's image paths") from None


_ZIPS = _ZipCache()


def read_image_bytes(storage: Storage, uri: str) -> bytes:
    if ".zip@" in uri:
        archive, member = uri.split(".zip@", 1)
        return _ZIPS.read(storage, archive + ".zip", member)
    return storage.read_bytes(uri)


def _target(targets: Sequence[int], n_classes: int, multilabel: bool) -> torch.Tensor:
    if multilabel:
        t = torch.zeros(n_classes)
        t[list(targets)] = 1.0
        return t
    return torch.tensor(targets[0])


class _Files(torch.utils.data.Dataset):
    def __init__(self, evalset: EvalSet, size: int) -> None:
        # A Storage rebuilds its filesystem in each DataLoader worker (react_core.storage.Storage.fs).
        self.s, self.size, self.storage = evalset, size, evalset.storage

    def __len__(self) -> int:
        return len(self.s.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        uri = self.s.images[i]
        try:
            img = Image.open(io.BytesIO(read_image_bytes(self.storage, uri)))
            x = prepare(img, self.size)
        except (OSError, StorageError) as exc:
            raise DatasetError(f"{uri}: not a readable image ({exc}); fix: replace or remove it") from None
        return x, _target(self.s.targets[i], len(self.s.classnames), self.s.multilabel)


class _Tensors(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int) -> None:
        self.images, self.labels, self.size = images, labels, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        if x.shape[-1] != self.size:
            x = prepare(Image.fromarray(x.permute(1, 2, 0).numpy()), self.size)
        return x, self.labels[i]


class _Shards(torch.utils.data.IterableDataset):
    """Webdataset shards, split over DataLoader workers by shard."""

    def __init__(self, evalset: EvalSet, size: int) -> None:
        self.s, self.size, self.storage = evalset, size, evalset.storage

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        shards = self.s.shards if info is None else self.s.shards[info.id :: info.num_workers]
        n = len(self.s.classnames)
        for uri in shards:
            for sample in iter_shard(self.storage, uri):
                key = next((k for k in _WDS_IMAGE_KEYS if k in sample), None)
                if key is None:
                    continue
                label = _wds_label(sample, uri)
                if not 0 <= label < n:
                    raise DatasetError(
                        f"{uri}: sample {sample['__key__']} has label {label}, outside the {n} classes; "
                        "fix: the labels or classnames.txt"
                    )
                yield prepare(Image.open(io.BytesIO(sample[key])), self.size), torch.tensor(label)


def _wds_label(sample: dict[str, Any], uri: str) -> int:
    if "cls" in sample:
        return int(sample["cls"].decode().strip())
    if "json" in sample:
        meta = json.loads(sample["json"])
        for k in ("label", "class_id", "cls"):
            if k in meta:
                return int(meta[k])
    raise DatasetError(f"{uri}: sample {sample['__key__']} has no label (.cls or a json 'label'); fix: add one")


# -- readers --------------------------------------------------------------------------------------------


def _read_json(storage: Storage, uri: str, fix: str) -> Any:
    try:
        return storage.read_json(uri)
    except StorageError:
        raise DatasetError(f"{uri} not found; fix: {fix}") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{uri} is not valid JSON ({exc}); fix: repair or re-download it") from None


def _lines(storage: Storage, uri: str) -> list[str]:
    try:
        return [ln.strip() for ln in storage.read_bytes(uri).decode("utf-8").splitlines() if ln.strip()]
    except StorageError:
        raise DatasetError(f"{uri} not found; fix: check dataset_info.json's paths") from None


def read_vision_dataset(storage: Storage, uri: str, split: str = "test", name: str | None = None) -> EvalSet:
    """A vision-datasets (ELEVATER) image-classification folder; see the module docstring."""
    info_uri = join(uri, "dataset_info.json")
    info = _read_json(storage, info_uri, "point at a vision-datasets folder (it holds dataset_info.json)")
    if isinstance(info, list):  # a DatasetHub file listing several datasets
        picked = [d for d in info if d.get("name") == name] if name else info[:1]
        if not picked:
            raise DatasetError(f"{info_uri} lists no dataset named {name!r}; it has {[d.get('name') for d in info]}")
        info = picked[0]
    if split not in info:
        have = [k for k in ("train", "val", "test") if k in info]
        raise DatasetError(f"{info_uri} has no '{split}' split; it has {have}; fix: evaluation.split")
    root = join(uri, info.get("root_folder") or ".") if info.get("root_folder") not in (None, "", ".") else uri
    index_uri = join(uri, info[split]["index_path"])
    multilabel = info.get("type", "classification_multiclass") == "classification_multilabel"
    ds_name = name or info.get("name") or uri.rstrip("/").rsplit("/", 1)[-1]
    if info.get("format") == "coco" or index_uri.endswith(".json"):
        classnames, images, targets = _coco_index(storage, index_uri, root)
    else:
        labelmap = info.get("labelmap")
        if not labelmap:
            raise DatasetError(f"{info_uri}: a text index needs 'labelmap' (the class-name file); fix: add it")
        classnames = _lines(storage, join(uri, labelmap))
        images, targets = _text_index(storage, index_uri, root, len(classnames), join(uri, labelmap))
        if not multilabel and any(len(t) != 1 for t in targets):
            bad = next(i for i, t in enumerate(targets) if len(t) != 1)
            raise DatasetError(
                f"{index_uri}: image {images[bad]} has {len(targets[bad])} labels in a multi-class dataset; "
                "fix: set type to classification_multilabel in dataset_info.json, or fix the line"
            )
    if not images:
        raise DatasetError(f"{index_uri}: split '{split}' lists no images; fix: check the index file")
    templates = _templates(storage, uri)
    return EvalSet(ds_name, classnames, templates, uri, storage, images, targets, multilabel)


def _templates(storage: Storage, uri: str) -> list[str]:
    try:
        return list(json.loads(storage.read_bytes(join(uri, "templates.json"))))
    except StorageError:
        return ["a photo of a {}."]


def _coco_index(storage: Storage, index_uri: str, root: str) -> tuple[list[str], list[str], list[list[int]]]:
    coco = _read_json(storage, index_uri, "check dataset_info.json's index_path")
    cats = sorted(coco.get("categories", []), key=lambda c: c["id"])
    if not cats:
        raise DatasetError(f"{index_uri} has no categories; fix: list the classes under 'categories'")
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    labels: dict[int, list[int]] = {}
    for a in coco.get("annotations", []):
        if a["category_id"] not in cat_index:
            raise DatasetError(
                f"{index_uri}: annotation {a.get('id')} has category_id {a['category_id']}, not among the "
                f"{len(cats)} categories (ids {cats[0]['id']}..{cats[-1]['id']}); fix the annotation or the categories"
            )
        labels.setdefault(a["image_id"], []).append(cat_index[a["category_id"]])
    images, targets = [], []
    for im in coco.get("images", []):
        if im["id"] in labels:
            images.append(join(root, im["file_name"]))
            targets.append(sorted(set(labels[im["id"]])))
    return [c["name"] for c in cats], images, targets


def _text_index(
    storage: Storage, index_uri: str, root: str, n_classes: int, labelmap_uri: str
) -> tuple[list[str], list[list[int]]]:
    images, targets = [], []
    for lineno, line in enumerate(_lines(storage, index_uri), 1):
        path, _, labels = line.rpartition(" ")
        try:
            ids = [int(v) for v in labels.split(",") if v != ""]
        except ValueError:
            raise DatasetError(f"{index_uri}:{lineno}: expected 'path label[,label]', got {line!r}") from None
        bad = [v for v in ids if not 0 <= v < n_classes]
        if bad or not path:
            raise DatasetError(
                f"{index_uri}:{lineno}: label(s) {bad or labels} outside the {n_classes} classes of {labelmap_uri}; "
                "fix: the index line, or the label map (its line count is the class count)"
            )
        images.append(join(root, path))
        targets.append(ids)
    return images, targets


def _list_images(storage: Storage, folder: str) -> list[str]:
    found = storage.fs.find(storage.path(folder))
    return sorted(storage.url(p) for p in found if p.lower().endswith(IMAGE_EXTS))


def read_image_folder(storage: Storage, uri: str, split: str = "test", name: str | None = None) -> EvalSet:
    """ImageNet-style ``{root}/{split}/{class}/*.jpg`` (or ``{root}/{class}/*.jpg``)."""
    splits = [s for s in ("train", "val", "test") if storage.exists(join(uri, s))]
    if split in splits:
        base = join(uri, split)
    elif split in ("val", "test") and {"val", "test"} & set(splits):
        base = join(uri, "val" if "val" in splits else "test")  # ImageNet's test labels are its val split
    elif splits:
        raise DatasetError(f"{uri} has no '{split}' folder; it has {splits}; fix: evaluation.split or the layout")
    else:
        base = uri  # {root}/{class}/*.jpg: one split only
    classes = sorted(
        posixpath.basename(p.rstrip("/"))
        for p in storage.fs.ls(storage.path(base), detail=False)
        if storage.fs.isdir(p)
    )
    if not classes:
        raise DatasetError(f"{base} has no class folders; fix: lay images out as {base}/<class>/<image>.jpg")
    images, targets = [], []
    for i, c in enumerate(classes):
        files = _list_images(storage, join(base, c))
        images += files
        targets += [[i]] * len(files)
    if not images:
        raise DatasetError(f"{base}: no images ({', '.join(IMAGE_EXTS)}) in its {len(classes)} class folders")
    names = _classnames_file(storage, uri) or [c.replace("_", " ") for c in classes]
    if len(names) != len(classes):
        raise DatasetError(
            f"{join(uri, 'classnames.txt')} has {len(names)} names but {base} has {len(classes)} class folders; "
            "fix: one name per folder, in sorted folder order"
        )
    return EvalSet(
        name or uri.rstrip("/").rsplit("/", 1)[-1], names, _templates(storage, uri), base, storage, images, targets
    )


def _classnames_file(storage: Storage, uri: str) -> list[str] | None:
    f = join(uri, "classnames.txt")
    return _lines(storage, f) if storage.exists(f) else None


def read_webdataset(
    storage: Storage, uri: str, split: str = "test", name: str | None = None, classnames: Sequence[str] | None = None
) -> EvalSet:
    """Webdataset test shards: ``{uri}/{split}/*.tar`` or ``{uri}/*.tar``."""
    base = join(uri, split) if storage.ls(join(uri, split), "*.tar") else uri
    shards = storage.ls(base, "*.tar")
    if not shards:
        raise DatasetError(f"{base} has no webdataset shards (*.tar)")
    names = _classnames_file(storage, uri) or _classnames_file(storage, base) or list(classnames or [])
    if not names:
        raise DatasetError(
            f"{uri}: webdataset labels are indices; fix: put classnames.txt (one per line) beside the shards, "
            "or evaluate it under a known task name"
        )
    return EvalSet(
        name or uri.rstrip("/").rsplit("/", 1)[-1], list(names), _templates(storage, uri), base, storage, shards=shards
    )


def read_karpathy(storage: Storage, uri: str, split: str = "test", name: str | None = None) -> EvalSet:
    """A caption set in Karpathy's split-file layout (see the module docstring): the ``split`` images, each its own
    target, with their captions."""
    files = storage.ls(uri, "dataset_*.json")
    if not files:
        raise DatasetError(f"{uri} has no dataset_*.json (Karpathy's split file); fix: put it beside the images")
    index_uri = files[0]
    data = _read_json(storage, index_uri, "use Karpathy's dataset_coco.json / dataset_flickr30k.json")
    entries = [e for e in data.get("images", []) if e.get("split") == split]
    if not entries:
        have = sorted({e.get("split") for e in data.get("images", [])} - {None})
        raise DatasetError(f"{index_uri} lists no '{split}' images; it has {have}; fix: evaluation.split")
    first = entries[0]
    if "filepath" in first:  # COCO: val2014/COCO_val2014_....jpg
        images = [join(uri, e["filepath"], e["filename"]) for e in entries]
    else:  # Flickr30K's entries name no folder: the one holding the first image
        root = next(
            (
                r
                for r in (join(uri, "images"), join(uri, "flickr30k-images"), uri)
                if storage.exists(join(r, first["filename"]))
            ),
            None,
        )
        if root is None:
            raise DatasetError(
                f"{index_uri}: image {first['filename']} is in none of images/, flickr30k-images/ or {uri}; fix: "
                "put the images there"
            )
        images = [join(root, e["filename"]) for e in entries]
    captions = [[str(s_["raw"]).strip() for s_ in e.get("sentences", [])] for e in entries]
    if any(not c for c in captions):
        bad = next(e["filename"] for e, c in zip(entries, captions, strict=True) if not c)
        raise DatasetError(f"{index_uri}: image {bad} has no sentences; fix: give every image at least one caption")
    ds_name = name or uri.rstrip("/").rsplit("/", 1)[-1]
    return EvalSet(ds_name, [], [], uri, storage, images, [[i] for i in range(len(images))], captions=captions)


def open_dataset(storage: Storage, uri: str, split: str = "test", name: str | None = None) -> EvalSet:
    """Read whichever layout ``uri`` holds (vision-datasets, captions, webdataset, or image folders)."""
    if storage.exists(join(uri, "dataset_info.json")):
        return read_vision_dataset(storage, uri, split, name)
    if not storage.exists(uri):
        raise DatasetError(f"dataset folder {uri} does not exist; fix: check evaluation.data_root / locations")
    if storage.ls(uri, "dataset_*.json"):
        return read_karpathy(storage, uri, split, name)
    if storage.ls(uri, "*.tar") or storage.ls(join(uri, split), "*.tar"):
        return read_webdataset(storage, uri, split, name)
    return read_image_folder(storage, uri, split, name)


def loader(evalset: EvalSet, image_size: int, batch_size: int, num_workers: int, device: torch.device):
    """A DataLoader of (uint8 images, targets) over ``evalset``, decoding in ``num_workers`` processes."""
    workers = num_workers if not evalset.shards else min(num_workers, len(evalset.shards))
    return torch.utils.data.DataLoader(
        evalset.torch_dataset(image_size),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )


@torch.no_grad()
def image_features(
    model: torch.nn.Module,
    evalset: EvalSet,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image features (N, D) float32 on the CPU and the targets, in loader order.

    Decoding runs in ``num_workers`` processes while the model encodes
    (:func:`react_core.models.encode.encode_images`).
    """
    batches = loader(evalset, model_image_size(model), batch_size, num_workers, model_device(model))
    feats, targets = encode_images(model, batches, len(evalset), f"encode {evalset.name}", progress)
    if not len(feats):
        raise ValueError(f"{evalset.source}: the dataset yielded no images")
    return feats, targets
