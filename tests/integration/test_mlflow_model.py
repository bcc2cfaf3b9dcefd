"""The registered version as an MLflow model: exported by the customize run, loaded by MLflow alone in a fresh
process that cannot import this project, answering as the evaluation scored it."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import tiny_config

pytestmark = pytest.mark.integration

# Run with `python -I` from an empty folder: no PYTHONPATH, no project on the path, and this project's packages
# refused outright, so the model loads only from what MLflow stored (its code and artifacts) and its requirements.
FRESH = """
import base64, importlib.abc, json, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"react_core", "tasks", "flows", "react_cli", "tests"}:
            raise ImportError(f"the model imported {name}")
sys.meta_path.insert(0, Refuse())
import mlflow, pandas as pd
args = json.load(sys.stdin)
model = mlflow.pyfunc.load_model(args["uri"])
images = pd.DataFrame({"image": [base64.b64decode(b) for b in args["images"]]})
probs = model.predict(images)
emb = model.predict(images.head(2), params={"output": "image_embedding"})
text = model.predict(pd.DataFrame({"text": ["a photo."]}), params={"output": "text_embedding"})
renamed = model.predict(images.head(2), params={"classes": ["alpha", "beta"]})
try:
    model.predict(pd.DataFrame({"image": [b"not an image"]}))
    bad = None
except mlflow.exceptions.MlflowException as exc:
    bad = [exc.error_code, exc.message]
print(json.dumps({"labels": probs["label"].tolist(), "dims": [len(emb["embedding"][0]), len(text["embedding"][0])],
                  "renamed": renamed["label"].tolist(), "bad": bad, "schema": model.metadata.get_input_schema().to_dict()}))
"""


def test_the_registered_version_loads_and_predicts_with_mlflow_alone_as_the_evaluation_scored_it(tmp_path):
    import base64

    from mlflow.tracking import MlflowClient

    from react_core.data.datasets import image_features, read_image_bytes
    from react_core.evaluation.suite import open_eval
    from react_core.models.cache import inference_model
    from react_core.models.encode import text_classifier
    from react_core.models.gated import set_gate_scale
    from react_core.plans import customize
    from react_core.storage import Storage, join

    cfg = tiny_config(tmp_path / "root")
    result = customize(cfg)
    st = Storage(cfg.storage.root)
    name, version = result["registered"]["name"], result["registered"]["version"]
    tracking = f"sqlite:///{tmp_path}/root/mlflow.db"
    client = MlflowClient(tracking)
    mv = client.get_model_version(name, version)
    assert mv.source.startswith("models:/m-")  # a LoggedModel, not a pointer to a checkpoint
    logged = client.get_logged_model(mv.source[len("models:/") :])
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": name, "version": version}]
    assert logged.source_run_id == client.get_run(mv.run_id).info.run_id
    assert logged.tags["react.export_stage"] == result["export"] == mv.tags["react.export_stage"]
    check = st.read_json(join(result["export"], "export.json"))
    assert check["min_cosine"] >= 1 - 1e-4 and check["top1_agreement"] == 1.0 and check["images"] > 0

    evalset = open_eval(st, cfg.evaluation, "miniweb-fine", result["miniweb"], cfg.evaluation.split)
    images = [base64.b64encode(read_image_bytes(st, u)).decode() for u in evalset.images]
    payload = json.dumps({"uri": f"models:/{name}@candidate", "images": images})
    env = {"MLFLOW_TRACKING_URI": tracking, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-I", "-c", FRESH], input=payload, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])

    # the customized model in this process, scored as the eval stage scores it: the same top-1 on every image
    model, tok = inference_model(cfg.model, result["train"] + "/model.pt", st)
    set_gate_scale(model, cfg.evaluation.customized_scale())
    feats, targets = image_features(model, evalset)
    top1 = (feats @ text_classifier(model, tok, evalset.classnames, evalset.templates)).argmax(1)
    assert got["labels"] == [evalset.classnames[i] for i in top1.tolist()]
    accuracy = float(np.mean([evalset.classnames.index(lab) == t for lab, t in zip(got["labels"], targets.tolist())]))
    assert accuracy == pytest.approx(result["table"]["miniweb-fine"]["customized"], abs=1e-6)
    assert got["dims"][0] == got["dims"][1] == feats.shape[1] and set(got["renamed"]) <= {"alpha", "beta"}
    assert got["bad"][0] == "INVALID_PARAMETER_VALUE" and "row 0: image is not an image file" in got["bad"][1]
    assert [c["name"] for c in got["schema"]] == ["image", "text"]
