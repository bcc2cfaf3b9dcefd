"""The exported towers and the MLflow model's code (react_core.serving), on a micro model with gated blocks."""

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from react_core.data.datasets import prepare
from react_core.models import create_model
from react_core.models.gated import add_gated_blocks
from react_core.serving import clip_pyfunc, mlflow_model
from react_core.serving.export import ExportError, export_model, verify


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, tok = create_model("react-micro-vit")
    add_gated_blocks(model, 1)
    for name, p in model.named_parameters():
        if "alpha" in name:
            p.data.fill_(0.5)  # the gated blocks change the features, so the export must carry them
    out = str(tmp_path_factory.mktemp("export"))
    serving = export_model(model, tok, ["cat", "dog", "bird"], ["a photo of a {}.", "a {}."], out)
    path = str(tmp_path_factory.mktemp("mlflow") / "model")
    mlflow_model.save(out, path)
    import mlflow

    return model, out, serving, mlflow.pyfunc.load_model(path)


def _png(size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("size", [(32, 32), (50, 31), (17, 64)])
def test_the_served_pixels_are_the_evaluations(size):  # the model's code keeps its own copy: it cannot import ours
    img = Image.open(io.BytesIO(_png(size, 0)))
    assert np.array_equal(clip_pyfunc.prepare(img, 24), prepare(img, 24).permute(1, 2, 0).numpy())


def test_the_export_computes_what_the_model_computes_and_a_different_one_is_refused(exported):
    model, out, serving, _ = exported
    images = torch.randint(0, 256, (6, 3, serving["image_size"], serving["image_size"]), dtype=torch.uint8)
    found = verify(model, out, [(images, None)])
    assert found["min_cosine"] >= 1 - 1e-4 and found["top1_agreement"] == 1.0 and found["images"] == 6
    other, _ = create_model("react-micro-vit")
    add_gated_blocks(other, 1)
    with pytest.raises(ExportError, match="differs from the model"):
        verify(other, out, [(images, None)])


def test_the_mlflow_model_answers_each_output_and_refuses_what_it_cannot_answer(exported):
    from mlflow.exceptions import MlflowException

    _, _, serving, served = exported
    images = pd.DataFrame({"image": [_png((40, 30), 1), _png((30, 40), 2)]})
    probs = served.predict(images)
    assert list(probs.columns) == ["label", "score", "probabilities"] and set(probs["label"]) <= {"cat", "dog", "bird"}
    assert np.allclose([p.sum() for p in probs["probabilities"]], 1.0, atol=1e-5)
    emb = served.predict(images, params={"output": "image_embedding"})["embedding"]
    assert len(emb[0]) == serving["embedding_dim"] and np.isclose(np.linalg.norm(emb[0]), 1.0, atol=1e-5)
    renamed = served.predict(images, params={"classes": ["red", "green"]})
    assert set(renamed["label"]) <= {"red", "green"} and len(renamed["probabilities"][0]) == 2
    text = served.predict(pd.DataFrame({"text": ["a photo of a cat."]}), params={"output": "text_embedding"})
    assert len(text["embedding"][0]) == serving["embedding_dim"]
    for frame, params, reason in [
        (pd.DataFrame({"image": [b"GIF89a-not-really"]}), None, "row 0: image is not an image file"),
        (images, {"output": "logits"}, "params.output='logits' is not one of"),
        (pd.DataFrame({"image": images["image"]}), {"output": "text_embedding"}, "needs a string column 'text'"),
    ]:
        with pytest.raises(MlflowException, match=reason) as err:
            served.predict(frame, params=params)
        assert err.value.error_code == "INVALID_PARAMETER_VALUE" and "\n" not in reason


def test_the_model_declares_what_it_imports():
    names = [r.split("==")[0] for r in mlflow_model.pip_requirements()]
    source = Path(clip_pyfunc.__file__).read_text()
    assert "react_core" not in source and "from react" not in source  # it loads without this project
    assert set(names) == {"torch", "numpy", "pandas", "pillow", "mlflow", "open_clip_torch"}


@pytest.mark.parametrize("kind", ["linear", "cache", "prompts"])
def test_a_head_exported_with_the_model_serves_the_heads_probabilities(kind, tmp_path):
    """A training.choose pick with a rival's head: the served probabilities are head_logits' softmax (the linear
    and prompts heads folded into classifier.npy, the cache head's keys beside it); other classes: zero-shot."""
    import mlflow

    from react_core.evaluation.heads import Head, head_logits
    from react_core.models.encode import normalize, text_classifier

    model, tok = create_model("react-micro-vit")
    model.eval()
    classes, templates = ["cat", "dog", "bird"], ["a photo of a {}.", "a {}."]
    g = torch.Generator().manual_seed(0)
    dim = model.text_projection.shape[1]
    head = Head(kind=kind, task="pets", classnames=classes)
    if kind == "linear":
        head.weight, head.mix = torch.randn(dim, 3, generator=g), 0.75
    elif kind == "cache":
        head.keys = torch.nn.functional.normalize(torch.randn(12, dim, generator=g), dim=-1).half()
        head.labels, head.alpha, head.beta = torch.tensor([0, 0, 1, 1, 1, 2] * 2), 3.0, 5.5
    else:
        head.names = ["kitten", "puppy", "sparrow"]
    out = str(tmp_path / "export")
    serving = export_model(model, tok, classes, templates, out, head)
    mlflow_model.save(out, str(tmp_path / "model"))
    served = mlflow.pyfunc.load_model(str(tmp_path / "model"))

    pngs = [_png((30, 30), s) for s in range(5)]
    got = np.stack(served.predict(pd.DataFrame({"image": pngs}))["probabilities"])
    size = serving["image_size"]
    x = torch.stack([prepare(Image.open(io.BytesIO(p)), size) for p in pngs])
    with torch.no_grad():
        feats = torch.nn.functional.normalize(model.encode_image(normalize(x, size)).float(), dim=-1)
        zero_shot = text_classifier(model, tok, classes, templates).float()
        want = torch.softmax(head_logits(head, model, tok, templates, feats, zero_shot), dim=1).numpy()
    assert np.abs(got - want).max() < 1e-4
    assert serving["head"] == kind and (serving["cache"] is not None) == (kind == "cache")
    renamed = served.predict(pd.DataFrame({"image": pngs}), params={"classes": ["red", "green"]})
    assert len(renamed["probabilities"][0]) == 2  # other classes: their zero-shot classifier, no head


def test_a_head_of_other_classes_is_not_exported(tmp_path):
    from react_core.evaluation.heads import Head

    model, tok = create_model("react-micro-vit")
    with pytest.raises(ExportError, match="other classes than the task exported"):
        export_model(
            model,
            tok,
            ["cat", "dog"],
            ["a {}."],
            str(tmp_path),
            Head(kind="prompts", task="x", classnames=["a", "b"], names=["a", "b"]),
        )
