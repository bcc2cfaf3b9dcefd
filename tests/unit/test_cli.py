import subprocess
import sys
from pathlib import Path

from react_cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[2]


def _react(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "react_cli.main", *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_help_lists_the_subcommands():
    out = _react("--help")
    assert out.returncode == 0
    for cmd in ("demo", "config", "miniweb", "base"):
        assert cmd in out.stdout
    sub = build_parser()._subparsers._group_actions[0].choices
    assert set(sub["miniweb"]._subparsers._group_actions[0].choices) == {"generate", "serve"}


def test_bad_value_is_one_line_on_stderr_with_exit_2():
    out = _react("config", "show", "-s", "miniweb.kb_size=0")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "miniweb.kb_size" in out.stderr and "greater than or equal to 1" in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_key_from_a_file_names_the_file(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("trainig: {lr: 1}\n")
    out = _react("config", "show", "-c", str(bad))
    assert out.returncode == 2 and str(bad) in out.stderr and "did you mean 'training'" in out.stderr


def test_validate_every_shipped_preset(capsys):
    presets = sorted(str(p) for p in (REPO / "deployments").glob("*.yaml"))
    assert main(["config", "validate", *presets]) == 0
    assert capsys.readouterr().out.count("ok ") == len(presets)


def test_unwritable_root_stops_generate_before_writing(tmp_path, capsys):
    blocker = tmp_path / "f"
    blocker.write_text("")
    rc = main(
        ["miniweb", "generate", "-c", str(REPO / "deployments" / "tiny.yaml"), "-s", f"storage.root={blocker}/x", "-q"]
    )
    assert rc == 2
    assert "not writable" in capsys.readouterr().err


def test_config_show_applies_overrides(capsys):
    assert main(["config", "show", "-s", "training.lr=0.001"]) == 0
    assert "lr: 0.001" in capsys.readouterr().out


def test_demo_rejects_more_gated_layers_than_the_model_has_before_running(capsys):
    rc = main(["demo", "-c", str(REPO / "deployments" / "tiny.yaml"), "-s", "training.gated_layers=3"])
    assert rc == 2
    assert "training.gated_layers=3 but react-micro-vit has 2 image blocks" in capsys.readouterr().err


TINY = str(REPO / "deployments" / "tiny.yaml")


def _demo_fails_before_work(tmp_path, capsys, *sets: str) -> str:
    """`react demo` on the tiny preset with ``sets``: exit 2, the error alone on stderr, no stage written."""
    root = tmp_path / "root"
    rc = main(["demo", "-c", TINY, "-q", "-s", f"storage.root={root}", *(a for s in sets for a in ("-s", s))])
    out = capsys.readouterr()
    assert rc == 2, out.err[-2000:]
    assert "Traceback" not in out.err and "Flow run" not in out.err + out.out
    assert not root.exists() or not any(p.is_dir() for p in root.iterdir())  # no stage folder
    return out.err.strip()


def test_an_unknown_target_task_fails_before_any_stage(tmp_path, capsys):
    err = _demo_fails_before_work(tmp_path, capsys, "retrieval.task=no-such-task")
    assert err.count("\n") == 0
    assert (
        "unknown target task 'no-such-task'; fix: use miniweb-fine, miniweb-coarse, miniweb-extra, miniweb-generic, imagenet-1k"
        in err
    )


def test_a_bad_task_file_is_one_line_per_problem_naming_the_file_and_the_fix(tmp_path, capsys):
    for body, problem in (
        ("classes: []\n", "the class list is empty; fix: list at least one class"),
        ("classes: [wren, Wren]\n", "duplicate class names ['wren']; fix: merge them"),
        ("classes: [wren]\ntemplates: ['a photo']\n", "without a '{}' slot for the class name: ['a photo']; fix:"),
        (
            "classes: [wren]\ntemplates: ['a photo of a {} in {color}.']\n",
            "template 'a photo of a {} in {color}.' has placeholder(s) {color} that nothing fills",
        ),
        ("classes: [wren]\ntemplates: ['a {} photo {']\n", "is not a valid template (Single '{' encountered"),
        ('classes: ["wren\\nrobin"]\n', "classes[0] 'wren\\nrobin' contains a line break or another control"),
    ):
        task = tmp_path / "birds.yaml"
        task.write_text(body)
        err = _demo_fails_before_work(tmp_path, capsys, f"retrieval.task={task}")
        assert err == f"error: {task}: {problem}" or (err.startswith(f"error: {task}: ") and problem in err), err
        assert err.count("\n") == 0


def test_a_registered_model_name_mlflow_cannot_hold_fails_before_any_stage(tmp_path, capsys):
    err = _demo_fails_before_work(tmp_path, capsys, "tracking.registered_model=team/react-{task}")
    assert err.count("\n") == 0
    assert "tracking.registered_model gives the model name 'team/react-miniweb-fine'" in err and "fix:" in err
    err = _demo_fails_before_work(tmp_path, capsys, "tracking.registered_model=react-{tsk}")
    assert "tracking.registered_model='react-{tsk}' is not a valid name template" in err


def test_a_task_file_s_registered_name_is_its_name_or_its_stem_never_its_path(tmp_path):
    from react_core.config_loading import load_config
    from react_core.registry import registered_name, task_label
    from react_core.storage import Storage

    named, plain = tmp_path / "birds.yaml", tmp_path / "my task.yml"
    named.write_text("name: garden birds/UK\nclasses: [wren, robin]\n")
    plain.write_text("classes: [wren, robin]\n")
    st = Storage(str(tmp_path))
    assert task_label(st, str(named)) == "garden-birds-UK" and task_label(st, str(plain)) == "my-task"
    assert task_label(st, "miniweb-fine") == "miniweb-fine"
    cfg = load_config(TINY, [f"storage.root={tmp_path}", f"retrieval.tasks=[{named}, miniweb-coarse]"])
    assert registered_name(cfg, st) == (
        "garden-birds-UK+miniweb-coarse",
        "react-garden-birds-UK+miniweb-coarse-react-micro-vit",  # the tiny preset's react-{task}-{model}
    )
    hub = load_config(TINY, [f"storage.root={tmp_path}", "model.name=hf-hub:org/clip model"])
    assert registered_name(hub, st)[1] == "react-miniweb-fine-hf-hub-org-clip-model"  # no '/', ':' or space


def test_missing_knowledge_base_and_evaluation_data_fail_before_any_stage(tmp_path, capsys):
    err = _demo_fails_before_work(tmp_path, capsys, f"knowledge_base.source={tmp_path}/no-shards")
    assert f"knowledge base {tmp_path}/no-shards has no webdataset shards" in err and "fix:" in err
    err = _demo_fails_before_work(tmp_path, capsys, "evaluation.tasks=[miniweb-fine, cifar-10]")
    assert "evaluation dataset 'cifar-10' has no location; fix: set evaluation.data_root" in err
    err = _demo_fails_before_work(
        tmp_path, capsys, "evaluation.tasks=[cifar-10]", f"evaluation.data_root={tmp_path}/data"
    )
    assert f"evaluation dataset 'cifar-10': {tmp_path}/data/cifar-10 does not exist; fix:" in err


def test_openai_weights_under_a_gelu_architecture_fail_before_any_stage(tmp_path, capsys):
    err = _demo_fails_before_work(tmp_path, capsys, "model.name=ViT-B-32", "model.pretrained=openai")
    assert err.count("\n") == 0 and "fix: model.name=ViT-B-32-quickgelu" in err


def test_an_unreachable_tracking_server_fails_before_any_stage(tmp_path, capsys, monkeypatch):
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    err = _demo_fails_before_work(tmp_path, capsys, f"tracking.tracking_uri={url}")
    assert f"MLflow tracking server {url} is not reachable" in err and "fix: start it" in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # the variable, when the config names none
    assert "point MLFLOW_TRACKING_URI at one" in _demo_fails_before_work(tmp_path, capsys)


def test_demo_table_puts_the_target_first_and_names_each_dataset_role(tmp_path):
    from react_cli.main import _demo_table
    from react_core.config_loading import load_config

    cfg = load_config(str(REPO / "deployments" / "tiny.yaml"), [f"storage.root={tmp_path}", "tracking.enabled=false"])
    row = lambda metric, b, c: {"metric": metric, "base": b, "customized": c, "delta": c - b}
    result = {"train": "file:///x/train/abc", "mlflow_run_id": None, "flow_run_id": "f",
              "table": {"miniweb-coarse": row("accuracy", 0.7, 0.68), "miniweb-captions": row("i2t_r1", 0.4, 0.35),
                        "miniweb-fine": row("accuracy", 0.3, 0.9), "miniweb-generic": row("accuracy", 0.98, 0.8)}}  # fmt: skip
    lines = [ln.split() for ln in _demo_table(cfg, result).splitlines() if ln.startswith("miniweb-")]
    assert [(ln[0], ln[1], ln[2], ln[-1]) for ln in lines] == [
        ("miniweb-fine", "target", "accuracy", "+0.600"), ("miniweb-generic", "generic", "accuracy", "-0.180"),
        ("miniweb-captions", "retrieval", "i2t_r1", "-0.050"), ("miniweb-coarse", "other", "accuracy", "-0.020")]  # fmt: skip


def test_a_bad_ablation_grid_fails_before_any_stage_one_line_per_problem(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "seeds: [0]\naxes:\n  size: {field: training.subset, values: [0.5, 1.5]}\n  k: {field: training.gated_layer, values: [1]}\n"
    )
    root = tmp_path / "root"
    rc = main(["ablate", "-c", TINY, "-q", "-s", f"storage.root={root}", "--grid", str(grid)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 2, err
    assert (
        f"error: {grid}: axis 'size', value '1.5': training.subset: Input should be less than or equal to 1" in err[0]
    )
    assert "axis 'k': training.gated_layer is not a config field (did you mean training.gated_layers?)" in err[1]
    assert not root.exists()


def test_the_shipped_grids_are_valid_for_their_presets():
    from flows.ablate import GRIDS
    from react_core.ablation import load_grid
    from react_core.config_loading import load_config

    grids = sorted(GRIDS.glob("*.yaml"))
    assert grids
    for path in grids:
        grid = load_grid(path, load_config(REPO / "deployments" / "demo.yaml"))
        assert len(grid.cells) > 1 and grid.seeds


def test_customize_refuses_a_cheap_rival_mode_in_one_line(tmp_path, capsys):
    err = _demo_fails_before_work(tmp_path, capsys, "training.mode=cache-head")
    assert err.count("\n") == 0
    assert "training.mode=cache-head is a cheap rival" in err and "fix: compare it with `react ablate`" in err


def test_an_ablation_cell_the_model_cannot_run_fails_before_any_stage(tmp_path, capsys):
    root = tmp_path / "root"
    rc = main(["ablate", "-c", TINY, "-q", "-s", f"storage.root={root}", "--grid", "small"])  # k up to 4; micro has 2
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 2, err
    assert (
        "small.yaml: axis 'gated_layers', value '3': training.gated_layers=3 but react-micro-vit has 2 image" in err[0]
    )
    assert "value '4'" in err[1] and not root.exists()


def test_a_preset_that_is_not_utf8_is_one_line(tmp_path, capsys):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("storage:\n  root: /tmp/caf\xe9\n".encode("latin-1"))
    assert main(["config", "show", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {bad}: not UTF-8 text (byte 0xe9 at offset 25); fix: save the file as UTF-8\n"


def test_faults_the_user_can_fix_are_one_line_and_lose_their_traceback_on_the_console_only(tmp_path):
    import errno
    import logging

    from react_cli.main import _one_line, _OneLineFaults
    from react_core.errors import ReactError

    (tmp_path / "miniweb" / "abc").mkdir(parents=True)
    (tmp_path / "miniweb" / "abc" / "_SUCCESS").write_text("{}")
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "base" / "x.pt"))
    try:  # as torch or a stage wraps it
        raise RuntimeError("saving failed") from full
    except RuntimeError as wrapped:
        line = _one_line(wrapped, str(tmp_path))
    assert line is not None and line.count("\n") == 0 and line.startswith("error: no space left on the device holding")
    assert str(tmp_path / "base" / "x.pt") in line and "the finished stages (miniweb) are kept" in line
    assert _one_line(ReactError("field x: bad\nfield y: bad")) == "error: field x: bad\nerror: field y: bad"
    assert _one_line(ValueError("a bug")) is None

    def record(exc):
        try:
            raise exc
        except (OSError, ValueError):
            return logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())

    quiet, bug = record(full), record(ValueError("a bug"))
    assert _OneLineFaults().filter(quiet) and quiet.exc_info is None  # one line on the console
    assert _OneLineFaults().filter(bug) and bug.exc_info is not None  # a bug keeps its traceback


def test_a_registry_name_of_another_architecture_or_weights_gone_fail_before_any_stage(tmp_path, capsys):
    from react_core.config_loading import load_config
    from react_core.storage import Storage
    from react_core.tracking import make_tracker

    root = tmp_path / "root"
    cfg = load_config(TINY, [f"storage.root={root}"])  # react-micro-vit
    tracker = make_tracker(cfg.tracking, Storage(cfg.storage.root))
    gone = f"file://{tmp_path}/a-deleted-clone/react-artifacts-tiny/train/abc/model.pt"

    def champion(name: str, architecture: str) -> None:
        run = tracker.open_run("train")
        tags = {"react.model": architecture, "react.model_file": gone, "react.gate_scale": "1"}
        registry = tracker.model_registry
        registry.set_alias(name, "champion", registry.register(name, run, {"model.json": {}}, tags, ""))

    def fails(*argv: str) -> str:
        capsys.readouterr()  # what setting up the registry printed
        rc = main([argv[0], "-c", TINY, "-q", "-s", f"storage.root={root}", *argv[1:]])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.count("\n") == 0 and "Traceback" not in err, err
        assert sorted(p.name for p in root.iterdir() if p.is_dir()) in ([], ["mlartifacts"])  # no stage
        return err

    champion("react-miniweb-fine", "react-tiny-vit")  # the demo preset's model, under the name tiny would use
    err = fails("demo", "-s", "tracking.registered_model=react-{task}")
    assert "models:/react-miniweb-fine@champion is a react-tiny-vit model and this run trains react-micro-vit" in err
    assert "fix: give this run a name of its own" in err
    err = fails("evaluate", "--customized", "models:/react-miniweb-fine@champion")
    assert "is a react-tiny-vit model and model.name is react-micro-vit; fix: evaluate it with" in err
    champion("react-gone", "react-micro-vit")
    err = fails("evaluate", "--customized", "models:/react-gone@champion")
    assert f"models:/react-gone@champion names weights that are gone ({gone}); fix:" in err
