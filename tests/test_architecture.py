"""The library/bundle split, checked on the source: ``monai_ext`` has no import cycle and never imports bundle code;
each bundle imports the library (and its own ``scripts``), never another bundle."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p for p in (ROOT / "bundles").iterdir() if (p / "configs").is_dir())


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every module ``path`` (module ``name``) imports, at any level of the file, relative imports resolved."""
    tree = ast.parse(path.read_text())
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """``module -> modules of the same package it imports`` (a name imported from a package counts as its
    ``__init__``, a submodule as itself)."""
    root = package_dir.parent
    modules = {_module_name(p, root): p for p in package_dir.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        graph[name] = {r for r in map(resolve, _imports(path, name)) if r and r != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_monai_ext_has_no_import_cycle():
    graph = import_graph(ROOT / "monai_ext")
    assert len(graph) > 50
    assert cycles(graph) == []


def test_monai_ext_never_imports_bundle_code():
    for path in (ROOT / "monai_ext").rglob("*.py"):
        name = _module_name(path, ROOT)
        bad = sorted(m for m in _imports(path, name) if m.split(".")[0] in ("scripts", "bundles"))
        assert not bad, f"{path.relative_to(ROOT)} imports bundle code: {bad}"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_bundle_code_imports_the_library_never_another_bundle(bundle):
    others = {p.name for p in BUNDLES} - {bundle.name}
    for path in sorted((bundle / "scripts").rglob("*.py")) if (bundle / "scripts").is_dir() else []:
        name = _module_name(path, bundle)
        assert name.split(".")[0] == "scripts"
        for module in _imports(path, name):
            top = module.split(".")[0]
            assert top != "bundles" and not any(o in module for o in others), f"{path.relative_to(ROOT)} imports {module}"
    for config in sorted((bundle / "configs").glob("*.json")):
        text = config.read_text()
        assert not any(o in text for o in others), f"{config.relative_to(ROOT)} names another bundle"
        json.loads(text)


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_scripts_targets_of_the_configs_exist(bundle):
    """Every ``scripts.module.name`` a config names is defined in the bundle's ``scripts/module.py``."""
    for config in sorted((bundle / "configs").glob("*.json")):
        for target in _scripts_targets(json.loads(config.read_text())):
            _, module, attribute = target.split(".", 2)
            source = bundle / "scripts" / f"{module}.py"
            assert source.is_file(), f"{config.name} names {target}, but {source.relative_to(ROOT)} does not exist"
            defined = {n.name for n in ast.parse(source.read_text()).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            defined |= {t.id for n in ast.parse(source.read_text()).body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
            assert attribute in defined, f"{config.name} names {target}, which {source.name} does not define"


def _scripts_targets(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["_target_"]] if str(node.get("_target_", "")).startswith("scripts.") else []
        return found + [t for v in node.values() for t in _scripts_targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in _scripts_targets(v)]
    return []


def _expressions(node) -> list[str]:
    if isinstance(node, dict):
        return [e for v in node.values() for e in _expressions(v)]
    if isinstance(node, list):
        return [e for v in node for e in _expressions(v)]
    return [node] if isinstance(node, str) and node.startswith("$") else []


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_configs_hold_no_python_lambda(bundle):
    """Functions in configs are named (``_target_`` with ``"_mode_": "callable"``), never ``$lambda ...``."""
    for config in sorted((bundle / "configs").glob("*.json")):
        found = [e for e in _expressions(json.loads(config.read_text())) if re.search(r"\blambda\b(?!_)", e)]
        assert not found, f"{config.relative_to(ROOT)} holds lambdas: {found}"
