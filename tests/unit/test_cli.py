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
