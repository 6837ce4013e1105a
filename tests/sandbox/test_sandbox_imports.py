"""The sandbox plays the outside world: it imports nothing of aftercall's, and its own
modules import each other one way only.

Every ``import`` in every file counts, wherever it is written (inside a function, under
``if TYPE_CHECKING:``): a cycle hidden behind a deferred import is still a cycle, and a
product import anywhere would let a bug in aftercall hide on both ends of a test.

Run it as a script to see the import graph's problems without pytest::

    .venv/bin/python -m tests.sandbox.test_sandbox_imports
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The product's packages, named here as well as found on disk: one being moved away
#: (or not yet created) must still be refused.
PRODUCT = frozenset({"actors", "events", "projections", "web", "aftercall"})
#: Packages at the top of the repository that are not the product.
NOT_PRODUCT = frozenset({"sandbox", "tests", "benchmarks"})


def product_packages(root: Path, package: str) -> frozenset[str]:
    """``PRODUCT`` and every other package at the top of ``root`` (new ones included), but
    ``package``, the one checked."""
    found = {
        path.parent.name
        for path in root.glob("*/__init__.py")
        if path.parent.name not in NOT_PRODUCT and not path.parent.name.startswith(".")
    }
    return (PRODUCT | found) - {package}


def modules_of(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``root`` by dotted name (a package by its own)."""
    modules: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_names(module: str, path: Path, modules: Collection[str]) -> Iterator[tuple[str, int]]:
    """``(dotted name, line)`` for everything ``path`` imports, anywhere in the file.

    ``from a.b import c`` is ``a.b.c`` when that is one of ``modules``, else ``a.b`` (the
    names come from its ``__init__``); relative imports are resolved against the module's
    own package.
    """
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                name = f"{base}.{alias.name}"
                yield (name if name in modules else base), node.lineno


def import_graph(
    root: Path, package: str
) -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """The package's internal import graph, and its imports of the product's packages."""
    modules = modules_of(root, package)
    product = product_packages(root, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    forbidden: set[tuple[str, int, str]] = set()
    for module, path in modules.items():
        for name, line in imported_names(module, path, modules):
            if name.split(".")[0] in product:
                forbidden.add((module, line, name))
            elif name in modules:
                graph[module].add(name)
    return graph, sorted(forbidden)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (or a module importing
    itself), as a sorted list: Tarjan's algorithm, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            advanced = False
            for target in targets:
                if target not in index:
                    index[target] = low[target] = counter
                    counter += 1
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    advanced = True
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1 or node in graph[node]:
                    found.append(sorted(group))
    return sorted(found)


def problems(root: Path = ROOT, package: str = "sandbox") -> list[str]:
    graph, forbidden = import_graph(root, package)
    return [
        *(f"{module}:{line} imports the product: {name}" for module, line, name in forbidden),
        *(f"import cycle: {' <-> '.join(group)}" for group in cycles(graph)),
    ]


def test_the_sandbox_imports_no_product_package_and_has_no_cycle() -> None:
    assert problems() == []


def test_the_sandbox_is_checked_module_by_module() -> None:
    """The graph holds the modules the stand-ins are built from, one way round."""
    graph, _ = import_graph(ROOT, "sandbox")
    assert "sandbox.elevenlabs._standin" in graph["sandbox.elevenlabs"]
    assert "sandbox.elevenlabs._server" in graph["sandbox.elevenlabs._standin"]
    assert "sandbox.elevenlabs._standin" not in graph["sandbox.elevenlabs._server"]
    assert "sandbox.twilio._server" in graph["sandbox.twilio._standin"]
    assert "sandbox.twilio._standin" not in graph["sandbox.twilio._server"]


def test_deferred_imports_and_product_imports_are_found(tmp_path: Path) -> None:
    """The check sees through the ways a cycle used to be hidden."""
    package = tmp_path / "fake"
    package.mkdir()
    (package / "__init__.py").write_text("from fake._a import A\n")
    (package / "_a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from fake._b import B\n"
        "class A:\n"
        "    def b(self) -> None:\n"
        "        from actors.http1 import Target\n"
    )
    (package / "_b.py").write_text(
        "def build() -> None:\n    from . import _a\n\nfrom fake import _c\n"
    )
    (package / "_c.py").write_text("import fake._d as d\n")
    (package / "_d.py").write_text("")
    assert problems(tmp_path, "fake") == [
        "fake._a:6 imports the product: actors.http1",
        "import cycle: fake._a <-> fake._b",
    ]
    graph, _ = import_graph(tmp_path, "fake")
    assert graph["fake._b"] == {"fake._a", "fake._c"}
    assert graph["fake._c"] == {"fake._d"}


if __name__ == "__main__":
    for problem in problems():
        print(problem)
    graph, _ = import_graph(ROOT, "sandbox")
    for module in sorted(graph):
        print(f"{module} -> {', '.join(sorted(graph[module])) or '(nothing in sandbox)'}")
