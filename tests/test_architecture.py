"""DESIGN §2's dependency rules, checked on the source with ``ast`` so a violation fails the build."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import engine

ROOT = Path(__file__).resolve().parent.parent

PURE_CORE = {
    "engine/core/model.py",
    "engine/core/errors.py",
    "engine/core/appspec/model.py",
    "engine/core/appspec/server.py",
    "engine/core/appspec/permissions.py",
    "engine/core/appspec/serverless.py",
    "engine/core/yamlnode.py",
    "engine/core/config/groups.py",
    "engine/core/configs.py",
    "engine/core/lifecycle.py",
    "engine/core/plan.py",
    "engine/core/machine.py",
    "engine/core/events.py",
    "engine/core/stages.py",
    "engine/core/simulate.py",
    "engine/core/snapshot.py",
    "engine/core/document.py",
    "engine/core/config/model.py",
    "engine/ports.py",
    "engine/release/rules.py",
    "engine/release/promotion.py",
    "engine/core/registrations.py",
    "engine/core/overrides.py",
    "engine/platforms.py",
}
YAML_ALLOWED = {
    "engine/core/yamlnode.py",
    "engine/core/appspec/model.py",
    "engine/core/appspec/server.py",
    "engine/core/appspec/permissions.py",
    "engine/core/appspec/serverless.py",
    "engine/core/config/parse.py",
    "engine/core/config/groups.py",
}
IO_LIBRARIES = {"aiohttp", "aioboto3", "aiobotocore", "boto3", "botocore", "sqlite3", "sqlite_utils", "asyncio"}
CHAT_LIBRARIES = {"slack_bolt", "slack_sdk", "gidgethub"}
ENGINE_INTERNALS = {"engine.store.sqlite", "engine.store.migrations", "engine.runtime.runner"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("module", sorted(PURE_CORE))
def test_pure_core_imports_only_stdlib_and_core(module: str) -> None:
    core_modules = {m.removesuffix(".py").replace("/", ".") for m in PURE_CORE}
    for name in imports(ROOT / module):
        if top(name) == "engine":
            assert name in core_modules or name == "engine", f"{module} imports {name}, which is not pure"
        elif top(name) == "yaml":
            assert module in YAML_ALLOWED, f"{module} imports yaml"
        else:
            assert top(name) in sys.stdlib_module_names, f"{module} imports {name}"
            assert top(name) not in IO_LIBRARIES, f"{module} imports {name}, an I/O library"


@pytest.mark.parametrize("module", ["engine/runtime/runner.py", "engine/runtime/deployer.py"])
def test_runner_and_service_use_ports_not_libraries(module: str) -> None:
    for name in imports(ROOT / module):
        assert top(name) not in IO_LIBRARIES - {"asyncio"}, f"{module} imports {name}"


def test_engine_never_imports_bot_or_chat_libraries() -> None:
    for path in (ROOT / "engine").rglob("*.py"):
        for name in imports(path):
            assert top(name) != "bot", f"{path} imports {name}"
            assert top(name) not in CHAT_LIBRARIES, f"{path} imports {name}"


def test_bot_uses_engine_internals_only_in_the_composition_root() -> None:
    # push_cmd uploads to S3 itself (like `aws deploy push`), before the server is involved.
    composition = {"bot/app.py", "bot/cli/server_cmd.py", "bot/cli/push_cmd.py"}
    for path in (ROOT / "bot").rglob("*.py"):
        relative = path.relative_to(ROOT).as_posix()
        for name in imports(path):
            if name in ENGINE_INTERNALS or name.startswith("engine.adapters"):
                assert relative in composition, f"{relative} imports {name}; only the composition root may"


def test_public_surface_is_sorted_and_importable() -> None:
    assert engine.__all__ == sorted(engine.__all__)
    for name in engine.__all__:
        assert hasattr(engine, name), name
