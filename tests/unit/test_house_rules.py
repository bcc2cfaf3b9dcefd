"""DESIGN.md's layout rules, checked: react_core never imports prefect; arrows point down only."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _imports(folder: str) -> dict[str, set[str]]:
    out = {}
    for path in (REPO / folder).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(REPO))] = names
    return out


def test_react_core_imports_neither_prefect_nor_the_layers_above():
    bad = {f: n & {"prefect", "tasks", "flows", "react_cli"} for f, n in _imports("react_core").items()}
    assert not {f: n for f, n in bad.items() if n}


def test_tasks_do_not_import_flows():
    bad = {f: n & {"flows", "react_cli"} for f, n in _imports("tasks").items()}
    assert not {f: n for f, n in bad.items() if n}


def test_importing_every_react_core_module_loads_no_prefect():
    mods = sorted(
        str(p.relative_to(REPO).with_suffix("")).replace("/", ".").removesuffix(".__init__")
        for p in (REPO / "react_core").rglob("*.py")
    )
    code = "import sys\n" + "".join(f"import {m}\n" for m in mods) + "print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(
    shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
    reason="ruff not installed (the test extra installs it)",
)
def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    out = subprocess.run([ruff, "check", "."], capture_output=True, text=True, cwd=REPO, check=False)
    assert out.returncode == 0, out.stdout[-3000:]
