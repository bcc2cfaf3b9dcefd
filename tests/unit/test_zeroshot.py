import torch
import torch.nn.functional as F

from react_core.data.datasets import from_tensors
from react_core.evaluation.zeroshot import evaluate_zero_shot
from react_core.models import create_model
from react_core.models.encode import normalize, text_classifier


def test_classifier_is_the_normalised_mean_of_normalised_prompts():
    torch.manual_seed(0)
    model, tok = create_model("react-micro-vit")
    model.eval()
    templates = ["a photo of a {}.", "{}"]
    clf = text_classifier(model, tok, ["zorb", "blik"], templates, batch_size=3)  # batches cross class borders
    assert clf.shape == (32, 2)
    with torch.no_grad():
        e = F.normalize(model.encode_text(tok([t.format("blik") for t in templates])), dim=-1)
    assert torch.allclose(clf[:, 1], F.normalize(e.mean(0), dim=-1), atol=1e-6)
    assert torch.allclose(clf.norm(dim=0), torch.ones(2), atol=1e-5)


def test_metrics_match_a_hand_computed_argmax():
    torch.manual_seed(1)
    model, tok = create_model("react-micro-vit")
    model.eval()
    images = torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(30) % 3
    data = from_tensors("t", images, labels, ["a", "b", "c"], ["{}"])
    res = evaluate_zero_shot(model, tok, data, metrics=("accuracy", "mean_per_class"), batch_size=7)
    with torch.no_grad():
        f = F.normalize(model.encode_image(normalize(images)), dim=-1)
        w = F.normalize(F.normalize(model.encode_text(tok(["a", "b", "c"])), dim=-1), dim=-1)
    pred = (f @ w.T).argmax(1)
    assert res["n"] == 30 and res["classes"] == 3
    assert abs(res["accuracy"] - (pred == labels).float().mean().item()) < 1e-6
    per_class = [(pred[labels == c] == c).float().mean().item() for c in range(3)]
    assert abs(res["mean_per_class"] - sum(per_class) / 3) < 1e-6
