"""ARCHITECTURE.md's layout rules, checked: react_core never imports prefect; arrows point down only."""

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


def _module_graph() -> dict[str, set[str]]:
    """react_core module -> the react_core modules it imports (anywhere in the file, function bodies too)."""
    files = {
        str(p.relative_to(REPO).with_suffix("")).replace("/", ".").removesuffix(".__init__"): p
        for p in (REPO / "react_core").rglob("*.py")
    }
    graph = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                deps |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
        graph[mod] = {d for d in deps if d in files and d != mod}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep, [*path, dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_cycle_among_react_core_modules():
    cycle = _cycle(_module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_knowledge_and_evaluation_never_import_each_other():
    graph = _module_graph()
    crossing = {
        m: sorted(d for d in deps if d.startswith(other))
        for m, deps in graph.items()
        for this, other in (
            ("react_core.knowledge", "react_core.evaluation"),
            ("react_core.evaluation", "react_core.knowledge"),
        )
        if m.startswith(this)
    }
    assert not {m: d for m, d in crossing.items() if d}


def test_models_import_only_storage_config_errors_and_themselves():
    allowed = ("react_core.models", "react_core.storage", "react_core.config", "react_core.errors")
    graph = _module_graph()
    bad = {
        m: sorted(d for d in deps if not d.startswith(allowed)) for m, deps in graph.items() if m.startswith(allowed[0])
    }
    assert not {m: d for m, d in bad.items() if d}
