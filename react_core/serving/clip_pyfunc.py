"""A customized CLIP as an MLflow pyfunc model, defined from code (MLflow's "models from code": no pickle).

This file is the model's code: MLflow copies it into every logged model and runs it at load. It imports only
torch, numpy, pandas, Pillow and MLflow, and open_clip's tokenizer when text is sent; never this project, so a
registered version loads and serves wherever those packages are installed.

Artifacts (written by the ``export`` stage): ``image_encoder`` and ``text_encoder`` (``torch.export`` programs
with a dynamic batch), ``classifier`` (``(D, C)`` float32: the task's zero-shot head, one L2-normalised column per
class; a ``training.choose`` pick with a linear or prompts head: that head folded in), ``serving`` (JSON: classes,
templates, image size, pixel mean and std, the tokenizer, the logit scale, ``cache``: a cache head's alpha and beta),
``cache_keys`` and ``cache_labels`` (a cache head's retrieved image features and their classes).

Input: a DataFrame with a binary column ``image`` (a JPEG/PNG file's bytes; base64 in JSON) and/or a string column
``text``. Params: ``output``: ``probabilities`` (default: ``label``, ``score`` and ``probabilities`` over the
classes), ``image_embedding`` or ``text_embedding`` (``embedding``: L2-normalised); ``classes``: class names to
score instead of the task's (each put into the task's templates; zero-shot: a head scores the task's own classes only). A request the model cannot answer raises
MLflow's invalid-parameter error: ``mlflow models serve`` answers it with HTTP 400 and the one-line reason.
"""

from __future__ import annotations

import io
import json
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from PIL import Image, UnidentifiedImageError

OUTPUTS = ("probabilities", "image_embedding", "text_embedding")


def prepare(img: Image.Image, size: int) -> np.ndarray:
    """Short side to ``size`` (bicubic), centre crop ``size`` x ``size``: (size, size, 3) uint8. The pixels of
    open_clip's validation transform, and of the evaluation that scored this model."""
    img = img.convert("RGB")
    w, h = img.size
    if (w, h) != (size, size):
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.BICUBIC)
        left, top = round((nw - size) / 2.0), round((nh - size) / 2.0)  # Python rounds half to even, as torchvision
        img = img.crop((left, top, left + size, top + size))
    return np.array(img)


def _bad(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)


def _tokenizer(spec: dict[str, Any]) -> Any:
    if spec.get("kind") == "simple":
        from open_clip.tokenizer import SimpleTokenizer

        return SimpleTokenizer(context_length=spec["context_length"])
    if spec.get("kind") == "hf":
        from open_clip.tokenizer import HFTokenizer

        return HFTokenizer(spec["name"], context_length=spec["context_length"])
    raise _bad("this model takes no text: its tokenizer was not exported; send images and the task's classes")


class CustomizedClip(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        art = context.artifacts
        with open(art["serving"]) as f:
            self.spec = json.load(f)
        self.image = torch.export.load(art["image_encoder"]).module()
        self.text = torch.export.load(art["text_encoder"]).module() if "text_encoder" in art else None
        self.classifier = torch.from_numpy(np.load(art["classifier"]))
        self.cache = None
        if "cache_keys" in art:  # a cache head (Tip-Adapter's, per class mean): added to the task's logits
            keys = torch.from_numpy(np.load(art["cache_keys"])).float()
            labels = torch.from_numpy(np.load(art["cache_labels"])).long()
            onehot = torch.nn.functional.one_hot(labels, self.classifier.shape[1]).float()
            self.cache = (keys, onehot / onehot.sum(dim=0).clamp(min=1), self.spec["cache"])
        self.mean = torch.tensor(self.spec["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(self.spec["std"]).view(1, 3, 1, 1)
        self._tok = None

    def _images(self, column: pd.Series) -> torch.Tensor:
        size, arrays = int(self.spec["image_size"]), []
        for i, data in enumerate(column):
            if isinstance(data, str):
                raise _bad(f"row {i}: image is text, not bytes; send the file's bytes (base64 in JSON)")
            try:
                arrays.append(prepare(Image.open(io.BytesIO(bytes(data))), size))
            except (UnidentifiedImageError, OSError, TypeError, ValueError) as exc:
                raise _bad(
                    f"row {i}: image is not an image file ({type(exc).__name__}); send JPEG or PNG bytes"
                ) from None
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
        with torch.no_grad():
            return torch.nn.functional.normalize(self.image((x - self.mean) / self.std).float(), dim=-1)

    def _texts(self, texts: list[str]) -> torch.Tensor:
        if self.text is None:
            raise _bad("this model takes no text: its text tower was not exported")
        if self._tok is None:
            self._tok = _tokenizer(self.spec["tokenizer"])
        with torch.no_grad():
            return torch.nn.functional.normalize(self.text(self._tok(texts)).float(), dim=-1)

    def _classifier(self, classes: Any) -> tuple[list[str], torch.Tensor]:
        if classes is None or len(classes) == 0:
            return list(self.spec["classes"]), self.classifier
        names = [str(c) for c in classes]
        templates = self.spec["templates"]
        emb = self._texts([t.format(n) for n in names for t in templates])
        per_class = emb.view(len(names), len(templates), -1).mean(dim=1)
        return names, torch.nn.functional.normalize(per_class, dim=-1).T

    def _cache_logits(self, feats: torch.Tensor, scale: float) -> torch.Tensor:
        """``alpha * scale * A``: per class, the mean of ``exp(-beta (1 - f . k))`` over that class's keys. The
        project's cache_affinity (evaluation/heads.py), written out here: this file imports nothing of the project."""
        keys, per_class, spec = self.cache
        out = [
            torch.exp(-spec["beta"] * (1 - feats[i : i + 4096] @ keys.T)) @ per_class
            for i in range(0, len(feats), 4096)
        ]
        return spec["alpha"] * scale * torch.cat(out)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        params = dict(params or {})
        output = params.get("output") or "probabilities"
        if output not in OUTPUTS:
            raise _bad(f"params.output={output!r} is not one of {', '.join(OUTPUTS)}")
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        if output == "text_embedding":
            if "text" not in model_input or model_input["text"].isna().any():
                raise _bad("output=text_embedding needs a string column 'text' in every row")
            return pd.DataFrame({"embedding": list(self._texts([str(t) for t in model_input["text"]]).numpy())})
        if "image" not in model_input or model_input["image"].isna().any():
            raise _bad(f"output={output} needs a binary column 'image' (base64 in JSON) in every row")
        feats = self._images(model_input["image"])
        if output == "image_embedding":
            return pd.DataFrame({"embedding": list(feats.numpy())})
        classes = params.get("classes")
        names, clf = self._classifier(classes)
        scale = float(self.spec["logit_scale"])
        logits = scale * feats @ clf
        if self.cache is not None and (classes is None or len(classes) == 0):
            logits = logits + self._cache_logits(feats, scale)
        probs = torch.softmax(logits, dim=1).numpy()
        top = probs.argmax(axis=1)
        return pd.DataFrame(
            {"label": [names[i] for i in top], "score": probs[np.arange(len(top)), top], "probabilities": list(probs)}
        )


mlflow.models.set_model(CustomizedClip())
