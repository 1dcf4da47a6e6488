"""The package's shape, read from its source: no import circles, few loose modules, every exception in
``errors.py``, one name per module. These hold the layout docs/architecture.md describes."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "zoomq"


def _module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, package: str, modules: set[str]) -> set[str]:
    """Every zoomq module ``tree`` imports, at any depth (a function's own imports count: they
    run too), except those under ``if TYPE_CHECKING:``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for statement in node.orelse:
                visit(statement)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("zoomq"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.startswith("zoomq"):
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in modules}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = {_module_name(p, root.parent): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = _imports(ast.parse(path.read_text(), str(path)), package, set(files)) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_cycle_finder_finds_a_circle_and_passes_a_tree():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_function_level_imports_and_skips_type_checking_ones(tmp_path):
    pkg = tmp_path / "zoomq"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from zoomq import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from zoomq.a import f\n")
    graph = import_graph(pkg)
    assert graph["zoomq.a"] == {"zoomq.b"} and graph["zoomq.b"] == set()


def test_no_import_circle_in_the_package():
    assert cycles(import_graph()) == []


def test_at_most_six_loose_modules_at_the_package_root():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= 6, loose


def _classes(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ClassDef):
            yield node, {ast.unparse(b) for b in node.bases}


def test_every_exception_class_lives_in_errors_py():
    defined = {node.name for node, _ in _classes(PACKAGE / "errors.py")}
    assert "ZoomqError" in defined
    outside = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node, bases in _classes(path):
            if bases & defined or any(b.endswith(("Error", "Exception")) for b in bases):
                outside.append(f"{path.relative_to(SRC)}: {node.name}")
    assert outside == []


def test_errors_are_told_apart_by_isinstance_never_by_class_name():
    by_name = [f"{p.relative_to(SRC)}:{n}" for p in PACKAGE.rglob("*.py")
               for n, line in enumerate(p.read_text().splitlines(), 1) if "__name__ ==" in line
               and "__main__" not in line]
    assert by_name == []


def test_no_two_modules_share_a_name_except_the_cli_commands():
    """``cli/<command>.py`` holds the ``zoomq <command>`` subcommand, so it may share the name of
    the module that does the work (``cli/prepare.py`` and ``model_prep/prepare.py``)."""
    seen: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name not in ("__init__.py", "__main__.py") and path.parent.name != "cli":
            seen.setdefault(path.name, []).append(str(path.relative_to(SRC)))
    assert {name: where for name, where in seen.items() if len(where) > 1} == {}
