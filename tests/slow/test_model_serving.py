"""The registered version served by MLflow's own command (`mlflow models serve`), against a real tracking server
whose artifacts are on S3 (moto), answered over HTTP as the evaluation scored it."""

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.conftest import free_port, start_mlflow_server, tiny_config, wait_http

pytestmark = pytest.mark.slow


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_mlflow_models_serve_answers_with_the_evaluations_top1_and_400_for_a_bad_request(s3_endpoint, tmp_path):
    from react_core.data.datasets import image_features, read_image_bytes
    from react_core.evaluation.suite import open_eval
    from react_core.models.cache import inference_model
    from react_core.models.encode import text_classifier
    from react_core.models.gated import set_gate_scale
    from react_core.plans import customize
    from react_core.storage import Storage

    server, tracking = start_mlflow_server(
        tmp_path, artifacts="s3://react-test/serving-artifacts", env={"MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    )
    serve = None
    try:
        cfg = tiny_config(tmp_path / "root", **{"tracking.tracking_uri": tracking})
        result = customize(cfg)
        name = result["registered"]["name"]
        port = free_port()
        # the venv's bin first, as in an activated venv: MLflow starts its server as `uvicorn`
        path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PATH": path}
        serve = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@candidate", "--env-manager",
             "local", "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        wait_http(f"http://127.0.0.1:{port}/ping", serve, "mlflow models serve", timeout=300)

        st = Storage(cfg.storage.root)
        evalset = open_eval(st, cfg.evaluation, "miniweb-fine", result["miniweb"], cfg.evaluation.split)
        rows = [[base64.b64encode(read_image_bytes(st, u)).decode()] for u in evalset.images]
        status, answer = _post(
            f"http://127.0.0.1:{port}/invocations", {"dataframe_split": {"columns": ["image"], "data": rows}}
        )
        assert status == 200, answer
        labels = [p["label"] for p in answer["predictions"]]

        model, tok = inference_model(cfg.model, result["train"] + "/model.pt", st)
        set_gate_scale(model, cfg.evaluation.customized_scale())
        feats, targets = image_features(model, evalset)
        top1 = (feats @ text_classifier(model, tok, evalset.classnames, evalset.templates)).argmax(1).tolist()
        assert labels == [evalset.classnames[i] for i in top1]
        correct = [evalset.classnames.index(label) == t for label, t in zip(labels, targets.tolist(), strict=True)]
        assert sum(correct) / len(correct) == pytest.approx(result["table"]["miniweb-fine"]["customized"], abs=1e-6)

        not_image = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b"hello").decode()]]}}
        bad_output = {"dataframe_split": {"columns": ["image"], "data": rows[:1]}, "params": {"output": "logits"}}
        for body, reason in [
            (not_image, "row 0: image is not an image file"),
            (bad_output, "params.output='logits' is not one of"),
        ]:
            status, answer = _post(f"http://127.0.0.1:{port}/invocations", body)
            assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE", answer
            assert answer["message"].splitlines()[-1].startswith(f"Error: {reason}")  # the reason: its own line
    finally:
        for proc in (serve, server):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
