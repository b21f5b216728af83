"""Imports point down: every module of comp imports only from its own layer or below, and there are no cycles.

The table lives here rather than in the package because nothing at run time needs it; docs/ARCHITECTURE.md
draws the same layers. Subpackages map as a whole (``comp.training.*`` is the training layer), so a module
added to one is covered without touching the table; a new top-level module fails until it is placed.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "comp"

# lowest first; a module imports only from its own layer or a lower one
LAYERS: list[tuple[str, ...]] = [
    ("comp.errors",),
    ("comp._version",),
    ("comp._registry",),
    ("comp._tables", "comp._progress", "comp._files"),
    ("comp.config",),
    ("comp.run",),
    ("comp.metrics", "comp.tasks"),
    ("comp.data",),
    ("comp.training", "comp.ensembling", "comp.submission"),
    ("comp.inference", "comp.tuning", "comp.pseudo", "comp.diagnostics", "comp.init", "comp.ledger"),
    ("comp.demo",),
    ("comp",),  # the facade, comp/__init__.py
    ("comp.cli", "comp.__main__"),
]
STANDALONE = {"comp.inference.bundle_predict"}  # copied into bundles and run without comp: imports nothing of it


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int | None:
    """The layer of ``module``: its entry or the entry of the subpackage holding it ('comp' alone is the facade)."""
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "comp" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index)
    return None if best is None else best[1]


def layer_name(index: int) -> str:
    return " / ".join(LAYERS[index])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported comp module, line, at module level) for every import of ``module``, in functions too, except
    those under ``if TYPE_CHECKING:``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def target(name: str) -> str | None:
        return name if name == "comp" or name.startswith("comp.") else None

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit_node(sub, top)
                continue
            visit_node(child, top)

    def visit_node(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if target(alias.name):
                    found.append((alias.name, node.lineno, top))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            if target(base):
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.append((sub if sub in MODULES else base, node.lineno, top))
        inside_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        visit(node, top and not inside_function)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in MODULES if layer(m) is None)
    assert not unplaced, f"place these modules in LAYERS (tests/test_layers.py): {', '.join(unplaced)}"


def test_imports_point_down():
    up = []
    for module in MODULES:
        if module in STANDALONE:
            continue
        here = layer(module)
        for imported, line, _ in imports(module):
            there = layer(imported)
            if here is not None and there is not None and there > here:
                up.append(
                    f"{module}:{line} -> {imported} (layer {here} {layer_name(here)} -> layer {there} {layer_name(there)})"
                )
    assert not up, "imports that point up:\n" + "\n".join(dict.fromkeys(up))


def test_standalone_script_imports_nothing_of_comp():
    for module in STANDALONE:
        assert not imports(module), f"{module} is copied into bundles without comp; it imports {imports(module)}"


def _edges(*, late: bool) -> dict[str, set[str]]:
    """Imports between comp modules (``late``: those inside functions too); importing ``comp.a.b`` from outside
    ``comp.a`` runs ``comp/a/__init__.py`` (and ``comp/__init__.py``) first, so those count too."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for imported, _, top in imports(module):
            if not (top or late):
                continue
            graph[module].add(imported)
            parts = imported.split(".")
            for i in range(1, len(parts)):
                parent = ".".join(parts[:i])
                if parent in MODULES and not module.startswith(parent + ".") and module != parent:
                    graph[module].add(parent)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = walk(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = walk(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(_edges(late=False))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_circles_through_imports_inside_functions():
    """A late import is for speed (torch only when needed), never to hide a circle: move the shared part down."""
    cycle = find_cycle(_edges(late=True))
    assert cycle is None, "import circle (counting imports inside functions): " + " -> ".join(cycle or [])


def test_the_checks_catch_what_they_look_for():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer("comp.training._new_module") == layer("comp.training")
    assert layer("comp") != layer("comp.somewhere_new") and layer("comp.somewhere_new") is None
    assert layer("comp.errors") < layer("comp.config") < layer("comp.run") < layer("comp.metrics") < layer("comp.data")


HEAVY = ("torch", "timm", "onnx", "onnxruntime", "cv2", "albumentations", "sklearn")


@pytest.mark.parametrize("how", ["facade", "config"])
def test_load_config_imports_no_heavy_library(how):
    """A config with a layout and attribute labels is checked without torch, sklearn or image libraries."""
    load = "import comp; load = comp.load_config" if how == "facade" else "from comp.config import load_config as load"
    code = f"""
import sys
{load}
cfg = load({{
    "data": {{
        "layout": {{"folder": "train/*", "fields": {{"folder": "(?P<label>.+)"}}}},
        "labels": {{"attributes": {{"mask": {{"values": ["wear", "not_wear"]}}, "age": {{"values": ["young", "old"],
                    "bins": [30]}}}}, "code": "mask * 2 + age"}},
    }},
    "models": [{{"name": "resnet18", "heads": "attributes"}}],
    "loss": {{"attributes": {{"age": {{"weight": 2}}}}}},
}})
assert cfg.data.labels is not None
import comp
print(comp.__file__)
print(",".join(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    where, heavy = out.stdout.splitlines()
    assert Path(where).resolve().is_relative_to(PACKAGE), where
    assert heavy == "", f"load_config imported {heavy}"
