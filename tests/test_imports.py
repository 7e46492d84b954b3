"""The import graph of model/, world/ and controls/ (docs/architecture.md, "Layers").

Layers run one way: controls/ (the window, the load harnesses) over model/ (networks, training,
evaluation, the generated backend) over world/ (the procedural world, the server, recorded data and
the shared vocabulary at its root). A layer imports only the layers below it.

A static walk: every `import` and `from ... import` statement of every module, function-level and
TYPE_CHECKING imports included (a function-level import hides a cycle from Python, not from a
reader), plus the edge from a module to the packages above it (importing `a.b.c` runs `a/b/__init__`).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "world", "controls")
# Each package with the packages it may import (besides itself), lowest layer first.
MAY_IMPORT = {"world": set(), "model": {"world"}, "controls": {"world", "model"}}


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
    assert "model.runtime.generated_backend" in graph
    # imported inside a function there
    assert "model.common.checkpoint" in graph["model.runtime.generated_backend"]
    assert "model" in graph["model.runtime.generated_backend"]  # the packages above count


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles (each line one strongly connected set of modules):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def layer_breaks(graph: dict[str, set[str]]) -> list[str]:
    """Every edge from a package to one it may not import, as "module -> module"."""
    return sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        for t in targets
        if t.split(".")[0] != m.split(".")[0] and t.split(".")[0] not in MAY_IMPORT[m.split(".")[0]]
    )


def test_world_imports_neither_model_nor_controls():
    bad = [edge for edge in layer_breaks(import_graph()) if edge.startswith("world")]
    assert not bad, "world/ imports a layer above it:\n" + "\n".join(bad)


def test_model_does_not_import_controls():
    bad = [edge for edge in layer_breaks(import_graph()) if edge.startswith("model")]
    assert not bad, "model/ imports controls/:\n" + "\n".join(bad)


# Packages inside a layer that run one way: (importer, imported) pairs that must never appear. The
# readers (the IDM and the theme classifier, their training) are what evaluation scores with, so
# evaluation imports them and they never import evaluation; what both need lives in the readers
# (episodes, scores) or in model/common/ (the rollout loop).
ONE_WAY = (("model.readers", "model.evaluation"),)


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def one_way_breaks(graph: dict[str, set[str]]) -> list[str]:
    """Every edge from a package to one ONE_WAY says it must not import, as "module -> module"."""
    return sorted(
        f"{m} -> {t}"
        for low, high in ONE_WAY
        for m, targets in graph.items()
        if within(m, low)
        for t in targets
        if within(t, high)
    )


def test_readers_do_not_import_evaluation():
    bad = one_way_breaks(import_graph())
    assert not bad, "model/readers/ imports model/evaluation/ (evaluation imports the readers):\n" + "\n".join(bad)


# The world network's families (docs/architecture.md, "World networks"): a family is a module defining
# a WorldNet subclass (model/nets/unet.py, model/nets/dit.py). Only model/nets/families.py, the table
# that builds them by name, imports one, so no family imports another, the shared core never imports a
# family, and the samplers, the stream, training and evaluation see WorldNet alone.
NET_FAMILY_TABLE = "model.nets.families"


def net_families(modules: dict[str, Path]) -> set[str]:
    """The modules under model/nets/ that define a class on WorldNet."""
    return {
        name
        for name, path in modules.items()
        if within(name, "model.nets")
        and any(isinstance(node, ast.ClassDef) and any(getattr(b, "id", None) == "WorldNet" for b in node.bases)
                for node in ast.walk(ast.parse(path.read_text(), str(path))))
    }


def family_breaks(graph: dict[str, set[str]], families: set[str]) -> list[str]:
    """Every import of a family's module from anywhere but the family table, as "module -> module"."""
    return sorted(
        f"{m} -> {t}" for m, targets in graph.items() if m != NET_FAMILY_TABLE for t in targets if t in families
    )


def test_only_the_family_table_imports_a_network_family():
    families = net_families(project_modules())
    assert {"model.nets.unet", "model.nets.dit"} <= families  # the walk sees the families that exist
    bad = family_breaks(import_graph(), families)
    assert not bad, (f"a network family's module imported outside {NET_FAMILY_TABLE} (use build_net, "
                     "net_config and WorldNet):\n" + "\n".join(bad))


def test_the_shared_network_core_imports_no_family_and_not_the_table():
    graph, families = import_graph(), net_families(project_modules())
    core = [m for m in graph if within(m, "model.nets") and m != NET_FAMILY_TABLE and m not in families]
    bad = sorted(f"{m} -> {t}" for m in core for t in graph[m] if t == NET_FAMILY_TABLE)
    assert "model.nets.world_net" in core and not bad, "\n".join(bad)


def test_worlds_shared_vocabulary_imports_none_of_its_sub_packages():
    """world/'s root modules (actions, backend, errors, files, start ...) are what every layer and
    every world/ sub-package shares: they import none of procedural/, server/, data/, backends/."""
    graph = import_graph()
    root = [m for m in graph if m.startswith("world.") and (ROOT / "world" / f"{m[6:]}.py").is_file()]
    bad = sorted(f"{m} -> {t}" for m in root for t in graph[m] if t.count(".") and t.split(".")[1] in SUB_PACKAGES)
    assert not bad, "world/'s shared root imports a sub-package:\n" + "\n".join(bad)


SUB_PACKAGES = {p.name for p in (ROOT / "world").iterdir() if (p / "__init__.py").is_file()}


def test_backends_registered_by_module_path_exist():
    """world/ names the generated backend by its path instead of importing it: the path must be real."""
    from world.backends import registry

    modules = project_modules()
    paths = [f for f in registry._REGISTRY.values() if isinstance(f, str)] + list(registry._REGENERATORS.values())
    assert "model.runtime.generated_backend:GeneratedBackend" in paths
    for path in paths:
        module, _, name = path.partition(":")
        assert module in modules, path
        tree = ast.parse(modules[module].read_text())
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert name in defined, path


def test_the_checks_catch_what_they_look_for():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = {"world.x": {"model.y"}, "model.y": {"world.x", "controls.z"}, "controls.z": {"model.y", "world.x"}}
    assert layer_breaks(graph) == ["model.y -> controls.z", "world.x -> model.y"]
    graph = {"model.readers.a": {"model.evaluation.b", "model.common.c"}, "model.evaluation.b": {"model.readers.a"},
             "model.readersx": {"model.evaluation"}}
    assert one_way_breaks(graph) == ["model.readers.a -> model.evaluation.b"]
    graph = {"model.nets.families": {"model.nets.unet"}, "model.nets.unet": {"model.nets.world_net"},
             "model.nets.dit": {"model.nets.unet"}, "model.runtime.stream": {"model.nets.world_net", "model.nets.dit"}}
    assert family_breaks(graph, {"model.nets.unet", "model.nets.dit"}) == [
        "model.nets.dit -> model.nets.unet", "model.runtime.stream -> model.nets.dit"]


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


def test_the_architecture_page_draws_the_packages_that_exist():
    """docs/architecture.md's tree names every package, and every file path the page names exists."""
    import re

    page = (ROOT / "docs" / "architecture.md").read_text()
    tree = page.split("## The tree", 1)[1].split("```", 2)[1]
    packages = {module_name(p.parent) for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py")}
    missing = sorted(p for p in packages if not re.search(rf"^\s*{p.rpartition('.')[2]}/", tree, re.M))
    assert not missing, f"packages missing from the tree in docs/architecture.md: {missing}"
    named = set(re.findall(r"(?<![\w/.])((?:world|model|controls)/[\w/]+\.py)", page))
    gone = sorted(path for path in named if not (ROOT / path).is_file())
    assert not gone, f"docs/architecture.md names files that do not exist: {gone}"
