"""Imports go one way: the import graph of ``sandboxq`` has no cycle, the
dashboard does not import the command line, and the worker's pool (which
knows processes and pipes) knows no Redis format.

The graph is read from the source (ast), not from ``sys.modules``, so it
counts every import: at the top of a module, under ``if TYPE_CHECKING:``
(a type-only cycle still ties the modules together for a reader) and
inside functions.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sandboxq"


@cache
def module_files() -> dict[str, Path | None]:
    """Every module of the package by dotted name; None for a module with no
    Python source (the Cython extension)."""
    modules: dict[str, Path | None] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    for path in sorted(PACKAGE.rglob("*.pyx")):
        modules.setdefault(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts), None)
    return modules


def imported_names(path: Path) -> set[str]:
    """The dotted names a module of the package imports."""
    module = next(name for name, file in module_files().items() if file == path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return imports_in(path.read_text(), package)


def imports_in(source: str, package: str) -> set[str]:
    """The dotted names ``source`` imports, wherever the import statement is
    (``from a import b`` gives ``a.b``); relative ones are made absolute
    from ``package``, the package the source is in."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def owning_module(dotted: str) -> str | None:
    """The package module a dotted name lives in (``sandboxq.queue.Queue``
    is in ``sandboxq.queue``), or None outside the package."""
    modules = module_files()
    while dotted and dotted not in modules:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """Each module and the package modules it imports. ``from sandboxq
    import queue`` imports the module ``sandboxq.queue``; ``from sandboxq
    import Queue``, the package itself (its ``__init__`` runs)."""
    graph: dict[str, frozenset[str]] = {}
    for module, path in module_files().items():
        names = set() if path is None else imported_names(path)
        targets = {owning_module(name) for name in names}
        graph[module] = frozenset(t for t in targets if t is not None and t != module)
    return graph


def cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """The strongly connected sets of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == module:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_every_kind_of_import_is_seen() -> None:
    # Given imports at the top, type-only, inside a function, and relative
    source = """
from typing import TYPE_CHECKING
import redis.client
from sandboxq import keys
if TYPE_CHECKING:
    from sandboxq.queue import Queue
def later():
    from sandboxq.worker import pool
from . import protocol
from ..steps import steps_json
"""
    # When the names are read
    names = imports_in(source, "sandboxq.worker")

    # Then each counts, and each resolves to the module that holds it
    assert {owning_module(name) for name in names} - {None} == {
        "sandboxq.keys",
        "sandboxq.queue",
        "sandboxq.worker.pool",
        "sandboxq.worker.protocol",
        "sandboxq.steps",
    }
    assert "redis.client" in names
    assert "sandboxq._fast" in import_graph()["sandboxq.fast"]  # the Cython module


def test_no_import_cycle_outside_the_worker() -> None:
    outside = [
        members
        for members in cycles(import_graph())
        if not any(m.startswith("sandboxq.worker.") for m in members)
    ]
    assert outside == []


def test_no_import_cycle_through_the_worker() -> None:
    assert cycles(import_graph()) == []


def test_the_dashboard_does_not_import_the_command_line() -> None:
    graph = import_graph()
    wrong = {
        (module, target)
        for module, targets in graph.items()
        if module.startswith("sandboxq.dashboard")
        for target in targets
        if target in ("sandboxq.admin", "sandboxq.cli")
    }
    assert wrong == set()


def test_the_pool_knows_no_redis_format() -> None:
    path = PACKAGE / "worker" / "pool.py"
    names = imported_names(path)
    redis_formats = {"sandboxq.steps", "sandboxq.keys", "redis"}
    wrong = {
        name
        for name in names
        if name.split(".")[0] == "redis"
        or any(name == f or name.startswith(f + ".") for f in redis_formats)
    }
    assert wrong == set()
