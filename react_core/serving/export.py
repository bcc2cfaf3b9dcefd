"""The customized towers exported for use without this project: ``torch.export`` programs (loaded by torch alone,
``torch.export.load(path).module()``), the task's zero-shot head and what serving needs to turn a file into the
model's input.

``torch.export`` rather than TorchScript or ONNX: ``torch.jit.trace`` fails its own sanity check on the gated
blocks (they run from forward pre-hooks), and ONNX needs onnx/onnxruntime, which the lock does not carry; an
exported program records the hooks, keeps a dynamic batch and needs nothing but torch to run.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from react_core.errors import ReactError
from react_core.evaluation.heads import Head
from react_core.evaluation.zeroshot import LOGIT_SCALE
from react_core.models.encode import model_image_size, normalize, text_classifier

IMAGE_FILE, TEXT_FILE, CLASSIFIER_FILE, SERVING_FILE = (
    "image_encoder.pt2",
    "text_encoder.pt2",
    "classifier.npy",
    "serving.json",
)
CACHE_KEYS_FILE, CACHE_LABELS_FILE = "cache_keys.npy", "cache_labels.npy"  # a cache head's (training.choose)
EXPORTED_FILES = (IMAGE_FILE, TEXT_FILE, CLASSIFIER_FILE, SERVING_FILE)
MIN_COSINE = 1 - 1e-4  # exported features against PyTorch's, per image


class ExportError(ReactError, RuntimeError):
    """The exported towers do not compute what the model computes."""


class _Tower(torch.nn.Module):
    """One tower of a CLIP model, holding only that tower's weights: an exported program stores every parameter of
    the module it was given, so the whole model would be written twice (ViT-B/32: 742 MiB per tower instead of
    the tower's own)."""

    def __init__(self, model: torch.nn.Module, text: bool) -> None:
        super().__init__()
        self.is_text = text
        if text:  # the model without its image tower (encode_text never reads it)
            self.model = copy.copy(model)
            self.model._modules = {k: v for k, v in model._modules.items() if k != "visual"}
        else:
            self.model = model.visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(x) if self.is_text else self.model(x)


def tokenizer_spec(tokenizer: Any) -> dict[str, Any] | None:
    """How the serving code rebuilds the tokenizer from open_clip alone (None: it cannot)."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    if isinstance(tokenizer, SimpleTokenizer) and not getattr(tokenizer, "reduction_fn", None):
        return {"kind": "simple", "context_length": int(tokenizer.context_length)}
    if isinstance(tokenizer, HFTokenizer):
        return {"kind": "hf", "name": tokenizer.tokenizer.name_or_path, "context_length": int(tokenizer.context_length)}
    return None


def _program(model: torch.nn.Module, text: bool, example: torch.Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=65536)
    return torch.export.export(_Tower(model, text).eval(), (example,), dynamic_shapes={"x": {0: batch}})


def head_classifier(
    head: Head, model: torch.nn.Module, tokenizer: Any, templates: Sequence[str], classifier: torch.Tensor
) -> torch.Tensor:
    """The (D, C) classifier whose ``100 * f @ W`` are the head's logits, for a head that is linear in the features:
    prompts (the classifier of its names) and linear (``(1 - mix) * zero-shot + mix * W``); a cache head adds a
    term no matrix holds, and keeps the zero-shot classifier (its keys are exported beside it)."""
    if head.kind == "prompts":
        return text_classifier(model, tokenizer, head.names, list(templates)).float().cpu()
    if head.kind == "linear":
        return (1 - head.mix) * classifier + head.mix * head.weight.float()
    return classifier


@torch.no_grad()
def export_model(
    model: torch.nn.Module,
    tokenizer: Any,
    classnames: Sequence[str],
    templates: Sequence[str],
    out: str,
    head: Head | None = None,
) -> dict[str, Any]:
    """Write the towers, the head and ``serving.json`` into the local folder ``out``; returns ``serving.json``.
    ``head``: a rival's head for the task (a ``training.choose`` pick's), which then scores its classes: folded into
    ``classifier.npy`` (prompts, linear), or exported as its keys and labels beside it (cache: ``serving.json``'s
    ``cache`` holds alpha and beta)."""
    model = model.float().cpu().eval()
    size = model_image_size(model)
    os.makedirs(out, exist_ok=True)
    torch.export.save(_program(model, False, torch.zeros(2, 3, size, size)), os.path.join(out, IMAGE_FILE))
    spec = tokenizer_spec(tokenizer)
    if spec is not None:
        tokens = tokenizer(["a photo.", "a photo of a thing."])
        torch.export.save(_program(model, True, tokens), os.path.join(out, TEXT_FILE))
    clf = text_classifier(model, tokenizer, classnames, templates).float().cpu()
    cache = None
    if head is not None:
        if list(head.classnames) != list(classnames):
            raise ExportError(
                f"the {head.kind} head of {head.task} has other classes than the task exported; fix: fit the head "
                "for the task's class list"
            )
        clf = head_classifier(head, model, tokenizer, templates, clf)
        if head.kind == "cache":
            np.save(os.path.join(out, CACHE_KEYS_FILE), head.keys.half().numpy())
            np.save(os.path.join(out, CACHE_LABELS_FILE), head.labels.long().numpy())
            cache = {"alpha": float(head.alpha), "beta": float(head.beta)}
    clf = clf.numpy()
    np.save(os.path.join(out, CLASSIFIER_FILE), clf)
    serving = {
        "classes": list(classnames),
        "templates": list(templates),
        "image_size": size,
        "mean": list(OPENAI_DATASET_MEAN),
        "std": list(OPENAI_DATASET_STD),
        "tokenizer": spec,
        "logit_scale": LOGIT_SCALE,
        "embedding_dim": int(clf.shape[0]),
        "head": head.kind if head is not None else None,
        "cache": cache,
    }
    with open(os.path.join(out, SERVING_FILE), "w") as f:
        json.dump(serving, f, indent=2)
    return serving


@torch.no_grad()
def verify(model: torch.nn.Module, out: str, batches: Iterable[tuple[torch.Tensor, Any]]) -> dict[str, float]:
    """The exported image tower against the model on ``batches`` ((uint8 images, targets)): the lowest and mean
    cosine of their features, the share of equal top-1 under the head, and each one's milliseconds per image
    (this host, batches as given). Raises :class:`ExportError` below :data:`MIN_COSINE`."""
    model = model.float().cpu().eval()
    program = torch.export.load(os.path.join(out, IMAGE_FILE)).module()
    clf = torch.from_numpy(np.load(os.path.join(out, CLASSIFIER_FILE)))
    cos, agree, n, t_eager, t_export = [], 0, 0, 0.0, 0.0
    for images, _ in batches:
        x = normalize(images)
        t0 = time.perf_counter()
        ref = F.normalize(model.encode_image(x).float(), dim=-1)
        t1 = time.perf_counter()
        got = F.normalize(program(x).float(), dim=-1)
        t_export += time.perf_counter() - t1
        t_eager += t1 - t0
        cos.append((ref * got).sum(dim=-1))
        agree += int(((ref @ clf).argmax(1) == (got @ clf).argmax(1)).sum())
        n += len(x)
    if not n:
        raise ExportError(f"no images to check the export in {out} against; fix: give the target task a test split")
    cosines = torch.cat(cos)
    found = {
        "images": n,
        "min_cosine": float(cosines.min()),
        "mean_cosine": float(cosines.mean()),
        "top1_agreement": agree / n,
        "eager_ms_per_image": 1000 * t_eager / n,
        "export_ms_per_image": 1000 * t_export / n,
    }
    if found["min_cosine"] < MIN_COSINE:
        raise ExportError(
            f"the exported image tower in {out} differs from the model: cosine {found['min_cosine']:.6f} < "
            f"{MIN_COSINE} on {n} images; the export is not written (its stage stays unfinished)"
        )
    return found
