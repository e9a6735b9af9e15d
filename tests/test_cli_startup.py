"""What `deploybot --help`, `deploybot status` and `deploybot agent` import: only what each command uses.

Every `deploybot` command and every local agent is a fresh interpreter, so a library imported for nothing is paid
on each start (200 local agents pay it 200 times, in time and memory). These tests run the real command in a
subprocess and read the modules it had loaded when it exited; they assert on *what*
is imported, never on how long it took (the time is `make bench`'s business).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bot.cli
import engine

ROOT = Path(__file__).resolve().parent.parent

# The AWS, Slack and GitHub libraries and the store's: a command that does not talk to them must not load them.
CLOUD_AND_CHAT = {"aioboto3", "aiobotocore", "boto3", "botocore", "slack_bolt", "slack_sdk", "gidgethub"}
SERVER_SIDE = {
    "sqlite_utils",
    "sqlite3",
    "bot.assembly",
    "bot.app",
    "engine.store",
    "engine.runtime.deployer",
    "engine.adapters",
}


# Runs ``python -m bot`` as the console script does, and writes sys.modules to a file as the interpreter exits.
# (``-X importtime`` does not list what importlib.import_module loads, which is how bot.cli finds its commands.)
_RUN_AND_LIST = """
import atexit, runpy, sys
listing = sys.argv.pop(1)
atexit.register(lambda: open(listing, "w").write("\\n".join(sorted(sys.modules))))
sys.argv[0] = "deploybot"
runpy.run_module("bot", run_name="__main__", alter_sys=True)
"""


def imported_by(
    tmp_path: Path, *argv: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -m bot ARGV`` in a fresh interpreter; the process and every module loaded when it exited."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYBOT_")} | (env or {})
    listing = tmp_path / "modules.txt"
    process = subprocess.run(
        [sys.executable, "-c", _RUN_AND_LIST, str(listing), *argv],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return process, set(listing.read_text().split())


def loaded(modules: set[str], roots: set[str]) -> set[str]:
    """The members of ``roots`` (packages or modules) of which ``modules`` holds the module or a submodule."""
    return {root for root in roots if any(name == root or name.startswith(root + ".") for name in modules)}


def test_help_loads_no_cloud_chat_store_or_rendering_library(tmp_path: Path) -> None:
    process, modules = imported_by(tmp_path, "--help")
    assert process.returncode == 0, process.stderr[-2000:]
    assert "deploybot" in process.stdout and "agent" in process.stdout  # the real help, every command registered
    assert "bot.cli.server_cmd" in modules and "bot.cli.token_cmd" in modules  # guards against an empty parse
    assert loaded(modules, CLOUD_AND_CHAT | SERVER_SIDE) == set()
    assert loaded(modules, {"rich", "yaml", "engine.bundles", "engine.agent", "engine.core.appspec"}) == set()


def test_help_loads_no_http_library(tmp_path: Path) -> None:
    """``bot.client`` and ``bot.http`` may be named (a default, a help text); what costs is their HTTP stack."""
    process, modules = imported_by(tmp_path, "--help")
    assert process.returncode == 0, process.stderr[-2000:]
    assert loaded(modules, {"aiohttp", "asyncio", "ssl"}) == set()


def test_status_loads_the_client_and_no_cloud_chat_or_store_library(tmp_path: Path) -> None:
    # A closed port: the command imports all it needs, makes its one request and says the server is unreachable.
    process, modules = imported_by(
        tmp_path, "status", "--server", "http://127.0.0.1:9", env={"DEPLOYBOT_TOKEN": "startup-test-token"}
    )
    assert process.returncode == 1
    assert "error:" in process.stderr
    assert "bot.client" in modules and "engine.http11" in modules  # it did get as far as the request
    assert loaded(modules, CLOUD_AND_CHAT | SERVER_SIDE) == set()
    assert loaded(modules, {"aiohttp", "bot.http", "engine.bundles", "engine.agent", "engine.core.appspec"}) == set()


def test_agent_loads_its_own_modules_and_no_server_side_library(tmp_path: Path) -> None:
    # A token file that is missing: the agent command has imported its modules and stops with a usage error
    # before it connects anywhere.
    process, modules = imported_by(
        tmp_path,
        "agent",
        "--server",
        "http://127.0.0.1:9",
        "--name",
        "web-1",
        "--token-file",
        str(tmp_path / "missing"),
    )
    assert process.returncode == 2, process.stderr[-2000:]
    assert "engine.agent.client" in modules
    assert loaded(modules, CLOUD_AND_CHAT | SERVER_SIDE) == set()
    assert (
        loaded(modules, {"rich", "bot.client", "bot.http", "aiohttp", "engine.release", "engine.core.machine"}) == set()
    )


def test_engine_names_load_their_own_module_only() -> None:
    code = (
        "import sys\n"
        "import engine\n"
        "bare = sorted(m for m in sys.modules if m.startswith('engine.'))\n"
        "from engine import FINAL_STATUSES\n"
        "print(bare, 'engine.core.model' in sys.modules, 'engine.bundles' in sys.modules)\n"
    )
    process = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stderr
    assert process.stdout.split() == ["[]", "True", "False"]


def test_engine_lazy_sources_agree_with_the_declared_surface() -> None:
    """``engine._SOURCES`` (where each name loads from at run time) names exactly what the TYPE_CHECKING imports do."""
    tree = ast.parse((ROOT / "engine" / "__init__.py").read_text())
    declared: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine"):
            for alias in node.names:
                public = alias.asname or alias.name
                declared[public] = node.module if public == alias.name else f"{node.module}:{alias.name}"
    assert declared == engine._SOURCES
    assert sorted(declared) == engine.__all__


def test_each_command_is_listed_under_the_module_that_registers_it() -> None:
    """The table bot.cli reads to import one command's module alone says what each module really registers."""
    for module_name, words in bot.cli._COMMAND_MODULES.items():
        parser = argparse.ArgumentParser(prog="deploybot")
        subparsers = parser.add_subparsers(dest="command")
        importlib.import_module(module_name).register(subparsers)
        assert tuple(subparsers.choices) == words, module_name


def test_one_command_parser_parses_and_helps_like_the_whole_one(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["agent", "--server", "http://127.0.0.1:9", "--name", "web-1", "--tag", "role=web", "--env", "A=1"]
    whole, alone = bot.cli.build_parser(), bot.cli.build_parser("agent")
    assert vars(alone.parse_args(argv)) == vars(whole.parse_args(argv))
    helps = []
    for parser in (whole, alone):
        with pytest.raises(SystemExit):
            parser.parse_args(["agent", "--help"])
        helps.append(capsys.readouterr().out)
    assert helps[0] == helps[1]
    assert "--token-file" in helps[0]
