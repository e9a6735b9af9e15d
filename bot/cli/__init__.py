"""deploybot: a CodeDeploy-style deployment engine (server, host agent and command line).

Each sub-command lives in one module of ``bot.cli`` that exposes ``register(subparsers)``.

Exit codes: 0 success, 1 failure (invalid file, failed deployment, refused request), 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module registers its own sub-commands; a command sets ``func(args) -> int`` as its handler.
_COMMAND_MODULES = (
    "bot.cli.appspec_cmd",
    "bot.cli.configs_cmd",
    "bot.cli.config_cmd",
    "bot.cli.server_cmd",
    "bot.cli.deploy_cmd",
    "bot.cli.hosts_cmd",
    "bot.cli.push_cmd",
    "bot.cli.hooks_cmd",
    "bot.cli.release_cmd",
    "bot.cli.token_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deploybot",
        description="A CodeDeploy-style deployment engine: applications, deployment groups, revisions, agents.",
        epilog="Start with `make run`, then `deploybot deploy hello --to staging --wait`. See README.md.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    result: int = args.func(args)
    return result
