"""An export stage as an MLflow model (:mod:`react_core.serving.clip_pyfunc` is its code): a signature, an input
example and the requirements it declares, so ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` run it with
those packages alone."""

from __future__ import annotations

import io
import json
import os
from importlib.metadata import version
from typing import Any

from react_core.serving.export import (
    CACHE_KEYS_FILE,
    CACHE_LABELS_FILE,
    CLASSIFIER_FILE,
    IMAGE_FILE,
    SERVING_FILE,
    TEXT_FILE,
)

CODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_pyfunc.py")
# What clip_pyfunc imports, at the versions this model was exported with (torch.export's format follows torch's).
REQUIREMENTS = ("torch", "numpy", "pandas", "pillow", "mlflow", "open_clip_torch")


def pip_requirements() -> list[str]:
    return [f"{name}=={version(name).split('+')[0]}" for name in REQUIREMENTS]


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image", required=False), ColSpec("string", "text", required=False)]),
        outputs=Schema(
            [ColSpec("string", "label"), ColSpec("float", "score"), ColSpec(Array("float"), "probabilities")]
        ),
        params=ParamSchema(
            [ParamSpec("output", "string", "probabilities"), ParamSpec("classes", "string", [], shape=(-1,))]
        ),
    )


def input_example(export_dir: str) -> Any:
    """One mid-grey PNG of the model's image size."""
    import pandas as pd
    from PIL import Image

    with open(os.path.join(export_dir, SERVING_FILE)) as f:
        size = json.load(f)["image_size"]
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(buf, format="PNG")
    return pd.DataFrame({"image": [buf.getvalue()]})


def save(export_dir: str, path: str, model_id: str | None = None) -> None:
    """The MLflow model of the export in the local folder ``export_dir``, written to the local folder ``path``
    (``model_id``: the logged model it becomes, recorded in its ``MLmodel``)."""
    import mlflow

    artifacts = {
        "image_encoder": os.path.join(export_dir, IMAGE_FILE),
        "classifier": os.path.join(export_dir, CLASSIFIER_FILE),
        "serving": os.path.join(export_dir, SERVING_FILE),
    }
    for key, name in (
        ("text_encoder", TEXT_FILE),
        ("cache_keys", CACHE_KEYS_FILE),
        ("cache_labels", CACHE_LABELS_FILE),
    ):
        if os.path.exists(os.path.join(export_dir, name)):
            artifacts[key] = os.path.join(export_dir, name)
    mlflow.pyfunc.save_model(
        path,
        python_model=CODE,
        artifacts=artifacts,
        signature=signature(),
        input_example=input_example(export_dir),
        pip_requirements=pip_requirements(),
        metadata={"react.model_id": model_id} if model_id else None,
    )
