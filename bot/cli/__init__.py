"""deploybot: a CodeDeploy-style deployment engine (server, host agent and command line).

Each sub-command lives in one module of ``bot.cli`` that exposes ``register(subparsers)``.

Exit codes: 0 success, 1 failure (invalid file, failed deployment, refused request), 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module registers its own sub-commands; a command sets ``func(args) -> int`` as its handler. The words each
# module registers are listed so that running one command imports only its module: a command's start pays for
# what it uses, not for every command (tests/test_cli_startup.py checks the lists against what each registers).
_COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "bot.cli.appspec_cmd": ("appspec",),
    "bot.cli.configs_cmd": ("configs",),
    "bot.cli.config_cmd": ("config",),
    "bot.cli.server_cmd": ("serve", "agent"),
    "bot.cli.deploy_cmd": (
        "deploy",
        "plan",
        "status",
        "wait",
        "history",
        "stop",
        "rollback",
        "pause",
        "resume",
        "continue",
        "promote-now",
    ),
    "bot.cli.hosts_cmd": ("hosts", "agent-token"),
    "bot.cli.groups_cmd": ("groups",),
    "bot.cli.push_cmd": ("push",),
    "bot.cli.hooks_cmd": ("hooks", "hook-status"),
    "bot.cli.release_cmd": (
        "promote",
        "where",
        "lock",
        "unlock",
        "locks",
        "freeze",
        "unfreeze",
        "approve",
        "reject",
        "queue",
    ),
    "bot.cli.token_cmd": ("token",),
    "bot.cli.stats_cmd": ("stats",),
    "bot.cli.replicas_cmd": ("replicas",),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``command`` (a word of _COMMAND_MODULES), only the module registering it."""
    parser = argparse.ArgumentParser(
        prog="deploybot",
        description="A CodeDeploy-style deployment engine: applications, deployment groups, revisions, agents.",
        epilog="Start with `make run`, then `deploybot deploy hello --to staging --wait`. See README.md.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, words in _COMMAND_MODULES.items():
        if command is not None and command not in words:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # `deploybot agent ...` builds the agent's parser alone; `--help`, no command or an unknown one get them all.
    known = arguments[0] if arguments and any(arguments[0] in words for words in _COMMAND_MODULES.values()) else None
    parser = build_parser(known)
    args = parser.parse_args(arguments)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    result: int = args.func(args)
    return result
