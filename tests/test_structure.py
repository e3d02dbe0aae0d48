"""The code's shape, checked by reading it (ast): no import circle among the modules of pyalexnet and
bench (imports inside functions count too), and no Python function over 80 lines there."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGES = ("pyalexnet", "bench")
MAX_FUNCTION_LINES = 80


def modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages under root."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _targets(node: ast.AST, name: str, is_package: bool, known: dict) -> list[str]:
    """The modules of `known` that an import statement in module `name` loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    base = node.module or ""
    if node.level:  # relative: from the module's package, up level - 1 more
        package = name.split(".") if is_package else name.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    out = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
    return out or ([base] if base in known else [])


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    known = modules(root, packages)
    graph = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        graph[name] = {t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                       for t in _targets(node, name, is_package, known) if t != name}
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle (its modules, the first repeated at the end), or [] when there is none."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (circle := visit(n)):
                return circle
        state[m] = "done"
        stack.pop()
        return []

    for m in sorted(graph):
        if m not in state and (circle := visit(m)):
            return circle
    return []


def test_no_import_circle():
    graph = import_graph(REPO_ROOT)
    assert "bench.compare" in graph and "pyalexnet.train" in graph  # the graph is of the real packages
    assert "pyalexnet.imagefolder" in graph["pyalexnet.data"]  # and holds their edges
    assert "bench.conv_relu_maxpool" in graph["bench.compare"]
    circle = find_circle(graph)
    assert not circle, "import circle: " + " -> ".join(circle)


@pytest.mark.parametrize("body, circle", [
    ({"a": "from . import b", "b": "def f():\n    from .a import x"}, ["p.a", "p.b", "p.a"]),
    ({"a": "import p.b", "b": "from p import c", "c": "from .a import x"}, ["p.a", "p.b", "p.c", "p.a"]),
    ({"a": "from . import b", "b": "import os"}, []),
])
def test_the_circle_check_finds_circles(tmp_path, body, circle):
    """The checker itself, on a made-up package p: a circle through a function-level import, one
    through absolute imports, and none."""
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "__init__.py").write_text("")
    for name, text in body.items():
        (tmp_path / "p" / f"{name}.py").write_text(text + "\n")
    assert find_circle(import_graph(tmp_path, ("p",))) == circle


def long_functions(root: Path, packages=PACKAGES, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    out = []
    for name, path in modules(root, packages).items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    out.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {lines} lines")
    return out


def test_no_function_over_80_lines():
    assert not long_functions(REPO_ROOT), "\n".join(long_functions(REPO_ROOT))


def test_the_length_check_finds_long_functions(tmp_path):
    (tmp_path / "p").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    (tmp_path / "p" / "m.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
    assert long_functions(tmp_path, ("p",)) == ["p/m.py:5 long: 81 lines"]
