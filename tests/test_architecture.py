"""ARCHITECTURE.md's dependency rules, checked on the source with ``ast`` over the transitive import closure.

Every import counts: module level, inside functions and under ``if TYPE_CHECKING`` (a type-only import still
couples the modules). A package's ``__init__`` is not implied by importing one of its submodules: the rules are
about what each module names.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

import engine

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "bot", "bench")

IO_LIBRARIES = {
    "aiohttp",
    "aioboto3",
    "aiobotocore",
    "boto3",
    "botocore",
    "sqlite3",
    "sqlite_utils",
    "asyncpg",
    "asyncio",
}
CHAT_LIBRARIES = {"slack_bolt", "slack_sdk", "gidgethub"}
# The composition root picks the store and the adapters; push_cmd uploads to S3 itself (like `aws deploy push`).
COMPOSITION_ROOT = {"bot.app", "bot.assembly", "bot.cli.server_cmd", "bot.cli.push_cmd"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {
    _module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
}


@cache
def named_imports(module: str) -> frozenset[str]:
    """Every module ``module`` names in an import: ours resolved to the module (``from engine.core import model``
    names engine.core.model), others as written."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in MODULES)
    return frozenset(found)


def ours(names: Iterable[str]) -> set[str]:
    """The modules of ours among ``names`` (a name like engine.core.model.Platform resolves to its module)."""
    resolved = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name:
            resolved.add(name)
    return resolved


def edges(module: str) -> set[str]:
    return ours(named_imports(module)) - {module}


@cache
def closure(module: str) -> frozenset[str]:
    """``module`` and every module of ours it reaches through imports."""
    seen, todo = {module}, [module]
    while todo:
        for target in edges(todo.pop()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return frozenset(seen)


def libraries(modules: Iterable[str]) -> set[str]:
    """Top-level names of the third-party and stdlib modules the given modules import."""
    return {name.split(".")[0] for m in modules for name in named_imports(m) if not ours([name])}


def layer(prefix: str) -> list[str]:
    return sorted(m for m in MODULES if m == prefix or m.startswith(prefix + "."))


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("module", layer("engine.core"))
def test_core_is_pure(module: str) -> None:
    reached = closure(module)
    outside = sorted(m for m in reached if not _in(m, "engine.core"))
    assert not outside, f"{module} reaches {outside}: core imports only core"
    for name in libraries(reached):
        assert name == "yaml" or name in sys.stdlib_module_names, f"{module} reaches the library {name}"
        assert name not in IO_LIBRARIES, f"{module} reaches {name}, an I/O library"


@pytest.mark.parametrize("module", [*layer("engine.release"), *layer("engine.runtime"), "engine.ports"])
def test_release_and_runtime_work_through_ports(module: str) -> None:
    reached = closure(module)
    concrete = sorted(m for m in reached if _in(m, "engine.store", "engine.adapters", "engine.agent", "bot"))
    assert not concrete, f"{module} reaches {concrete}: release and runtime name only ports"
    forbidden = libraries(reached) & (IO_LIBRARIES - {"asyncio"})
    assert not forbidden, f"{module} reaches {sorted(forbidden)}"


@pytest.mark.parametrize("module", layer("engine.release"))
def test_release_never_imports_runtime(module: str) -> None:
    runtime = sorted(m for m in closure(module) if _in(m, "engine.runtime"))
    assert not runtime, f"{module} reaches {runtime}"


@pytest.mark.parametrize("module", [*layer("engine.adapters"), *layer("engine.store")])
def test_adapters_and_store_import_core_and_ports_only(module: str) -> None:
    reached = closure(module)
    own = "engine.store" if _in(module, "engine.store") else "engine.adapters"
    allowed = ("engine.core", "engine.ports", "engine.bundles", own)
    stray = sorted(m for m in reached if not _in(m, *allowed))
    assert not stray, f"{module} reaches {stray}"


def test_engine_never_imports_bot_or_chat_libraries() -> None:
    for module in layer("engine"):
        assert not [m for m in edges(module) if _in(m, "bot", "bench")], module
        chat = libraries([module]) & CHAT_LIBRARIES
        assert not chat, f"{module} imports {sorted(chat)}"


@pytest.mark.parametrize("module", sorted(set(layer("bot")) - COMPOSITION_ROOT))
def test_bot_uses_the_public_surface_of_engine(module: str) -> None:
    internal = sorted(name for name in named_imports(module) if name.startswith("engine."))
    assert not internal, f"{module} imports {internal}; bot/ uses `from engine import ...` (or is the composition root)"


def test_no_import_cycles() -> None:
    cycles = [sorted(component) for component in _strongly_connected(sorted(MODULES)) if len(component) > 1]
    assert cycles == []


def test_the_rules_see_the_whole_tree() -> None:
    # Guards the checks above against passing vacuously after a move.
    assert {"engine.core.machine", "engine.runtime.deployer", "engine.release.flow", "engine.store.sqlite"} <= set(
        MODULES
    )
    assert "engine.core.model" in closure("engine.runtime.deployer")
    assert "engine.runtime.deployer" in closure("bot.assembly")


def test_public_surface_is_sorted_and_importable() -> None:
    assert engine.__all__ == sorted(engine.__all__)
    for name in engine.__all__:
        assert hasattr(engine, name), name


def _strongly_connected(nodes: list[str]) -> list[set[str]]:
    """Tarjan's algorithm, iteratively (the import graph is deep enough to matter for recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[set[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges(root))))]
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
                    work.append((child, iter(sorted(edges(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                found.append(component)
    return found
