"""The structure of the code base, checked by parsing every import (ARCHITECTURE.md, "Layers").

Every import is read, wherever it stands (module level, inside a function, under
``if TYPE_CHECKING:``), so an import hidden in a function to dodge a cycle counts like any
other. Each test fails naming every offending import, so a broken rule says where to look.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The product's layers, bottom first: a module imports only from its own layer or below.
LAYERS: tuple[str, ...] = (
    "events",
    "actors",
    "clients",
    "followup",
    "projections",
    "web",
    "aftercall",
)
#: The outside world's stand-ins: they import nothing from the product, and only the
#: composition root (``aftercall``) starts them.
SANDBOX = "sandbox"
#: The entry point Hypercorn names (``hypercorn -k trio web.app:app``) builds the app around
#: the composition root: the one module of a lower layer allowed to import ``aftercall``.
ENTRY_POINTS = frozenset({"web.app"})
#: asyncio-only drivers are reached through one bridge module (ARCHITECTURE.md).
BRIDGE = "events.postgres_bridge"
BRIDGED = frozenset({"asyncpg", "trio_asyncio"})
PACKAGES = (*LAYERS, SANDBOX)


@attrs.frozen
class Import:
    importer: str
    imported: str
    line: int
    in_function: bool

    def __str__(self) -> str:
        where = " (inside a function)" if self.in_function else ""
        return f"{self.importer}:{self.line} imports {self.imported}{where}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[module_name(path)] = path
    return modules


MODULES = product_modules()


def _resolve(importer: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(importer: str, path: Path) -> Iterator[Import]:
    """Every import in the file, each imported name resolved to a module where it is one
    (``from web import api`` imports the module ``web.api``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions: list[tuple[int, int]] = [
        (node.lineno, node.end_lineno or node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]

    def inside(line: int) -> bool:
        return any(start < line <= end for start, end in functions)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(importer, alias.name, node.lineno, inside(node.lineno))
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(importer, path, node)
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                target = candidate if candidate in MODULES else module
                yield Import(importer, target, node.lineno, inside(node.lineno))


ALL_IMPORTS = [found for name, path in MODULES.items() for found in imports_of(name, path)]
#: Imports of the product's and the sandbox's own modules.
INTERNAL = [i for i in ALL_IMPORTS if i.imported.split(".")[0] in PACKAGES]


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_every_package_and_module_is_seen() -> None:
    assert {m.split(".")[0] for m in MODULES} == set(PACKAGES)
    assert len(INTERNAL) > 100  # the parser reads imports at all


def test_no_import_points_up_a_layer() -> None:
    upward = [
        str(i)
        for i in INTERNAL
        if i.importer.split(".")[0] in LAYERS
        and i.imported.split(".")[0] in LAYERS
        and layer(i.imported) > layer(i.importer)
        and i.importer not in ENTRY_POINTS
    ]
    assert upward == [], "imports that point up the layers " + " > ".join(LAYERS)


def test_the_sandbox_imports_nothing_from_the_product() -> None:
    shared = [
        str(i)
        for i in INTERNAL
        if i.importer.split(".")[0] == SANDBOX and i.imported.split(".")[0] != SANDBOX
    ]
    assert shared == [], "the stand-ins must not share code with what they stand in for"


def test_only_the_composition_root_starts_the_sandbox() -> None:
    users = [
        str(i)
        for i in INTERNAL
        if i.imported.split(".")[0] == SANDBOX
        and i.importer.split(".")[0] not in ("aftercall", SANDBOX)
    ]
    assert users == []


def _is_private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split(".")[1:])


def _owner(private: str) -> str:
    """The package a private module belongs to: everything above its first private part."""
    parts = private.split(".")
    first = next(i for i, part in enumerate(parts) if i > 0 and part.startswith("_"))
    return ".".join(parts[:first])


def test_no_reach_into_another_package_private_module() -> None:
    reaches = [
        str(i)
        for i in INTERNAL
        if _is_private(i.imported)
        and not (
            i.importer == _owner(i.imported) or i.importer.startswith(_owner(i.imported) + ".")
        )
    ]
    assert reaches == [], "a private module (_name) is for its own package"


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(edges.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    edges: dict[str, set[str]] = {}
    for i in INTERNAL:
        if i.imported in MODULES and i.imported != i.importer:
            # A package's __init__ re-exporting its own modules is not a cycle of design.
            if i.importer == i.imported.rsplit(".", 1)[0]:
                continue
            edges.setdefault(i.importer, set()).add(i.imported)
    assert _cycles(edges) == []


def test_no_import_of_our_own_code_inside_a_function() -> None:
    hidden = [str(i) for i in INTERNAL if i.in_function]
    assert hidden == [], "an import inside a function usually dodges a cycle: fix the layering"


def test_asyncpg_and_trio_asyncio_only_through_the_bridge() -> None:
    outside = [
        str(i) for i in ALL_IMPORTS if i.imported.split(".")[0] in BRIDGED and i.importer != BRIDGE
    ]
    assert outside == []


@pytest.mark.parametrize(
    ("edges", "cycles"),
    [
        ({"a": {"b"}, "b": {"c"}}, []),
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ],
)
def test_the_cycle_finder_finds_cycles(edges: dict[str, set[str]], cycles: list[list[str]]) -> None:
    assert _cycles(edges) == cycles


def test_every_package_is_installed_and_type_checked() -> None:
    """`pip install .` ships every layer (the `aftercall` command runs from anywhere, not
    from the checkout) and mypy checks each one."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    shipped = config["tool"]["setuptools"]["packages"]["find"]["include"]
    checked = config["tool"]["mypy"]["packages"]
    assert [p for p in PACKAGES if f"{p}*" not in shipped] == []
    assert [p for p in PACKAGES if p not in checked] == []
