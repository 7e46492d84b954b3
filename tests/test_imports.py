"""The import graph of model/, world/ and controls/ (docs/architecture.md, "Layers").

A static walk: every `import` and `from ... import` statement of every module, function-level and
TYPE_CHECKING imports included (a function-level import hides a cycle from Python, not from a
reader), plus the edge from a module to the packages above it (importing `a.b.c` runs `a/b/__init__`).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "world", "controls")
# world/ may reach model/ only where a world *is* the model: the generated backend.
WORLD_MAY_IMPORT_MODEL = {"world.backends.generated"}
# Old `python -m` paths kept working after a module moved (one line: call the new main). They are
# the only model/ -> controls/ edges allowed: the soak test is a client of the worker, it lives in controls/.
ENTRY_POINT_SHIMS = {"model.evaluation.worker_memory": "controls.worker_memory"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `name` imports anywhere in its file (and the packages above each)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    targets = {m for m in found if m in modules}
    targets |= {p for m in targets for p in _parents(m) if p in modules}
    targets |= {p for p in _parents(name) if p in modules}
    targets.discard(name)
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_walk_sees_function_level_imports():
    graph = import_graph()
    assert "world.backends.generated" in graph
    assert "model.common.checkpoint" in graph["world.backends.generated"]  # imported inside a function there
    assert "world" in graph["world.backends.generated"]  # the packages above count


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles (each line one strongly connected set of modules):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_model_does_not_import_controls():
    graph = import_graph()
    bad = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        if m.split(".")[0] == "model"
        for t in targets
        if t.split(".")[0] == "controls" and t not in _shim_targets(m)
    )
    assert not bad, "model/ imports controls/:\n" + "\n".join(bad)


def _shim_targets(module: str) -> set[str]:
    target = ENTRY_POINT_SHIMS.get(module)
    return set() if target is None else {target, *_parents(target)}


def test_world_imports_model_only_in_the_generated_backend():
    graph = import_graph()
    bad = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        if m.split(".")[0] == "world" and m not in WORLD_MAY_IMPORT_MODEL
        for t in targets
        if t.split(".")[0] == "model"
    )
    assert not bad, "world/ imports model/ outside the generated backend:\n" + "\n".join(bad)


def test_the_checks_catch_what_they_look_for():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_test_module_imports_another():
    """Shared helpers live in tests/helpers.py and shared fixtures in tests/conftest.py."""
    bad = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad += [f"{path.name} imports {n}" for n in names if n.startswith("tests.test_")]
    assert not bad, "\n".join(bad)
