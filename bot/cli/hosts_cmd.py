"""``deploybot hosts`` (which agents are online, and what they run) and ``deploybot agent-token NAME``.

``agent-token`` reads the token file the server keeps in its data directory (or, with ``store.url``, the database the
replicas share), so it runs on the server's machine:
it is how you start an agent on a real host (``deploybot agent --server URL --name NAME --token-file FILE``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.cli.deploy_cmd import _common, _print_json, _run

if TYPE_CHECKING:
    from bot.client import ApiClient


async def _hosts(args: argparse.Namespace, api: ApiClient) -> int:
    from rich.console import Console
    from rich.table import Table

    hosts = await api.hosts()
    if args.json:
        _print_json(hosts)
        return 0
    table = Table("host", "agent", "last seen", "running", "tags", box=None)
    now = time.time()
    for host in hosts:
        seen = f"{now - host['last_seen']:.0f} s ago" if host["last_seen"] else "-"
        running = host["running"]
        doing = f"{running['event']} of {running['deployment_id']}" if running else "-"
        tags = ", ".join(f"{k}={v}" for k, v in host["tags"].items())
        style = {"online": "green", "offline": "red"}.get(host["agent"], "yellow")
        table.add_row(host["name"], f"[{style}]{host['agent']}[/]", seen, doing, tags)
    Console(soft_wrap=True).print(table)
    return 0


def _agent_token(args: argparse.Namespace) -> int:
    from bot.cli.server_cmd import default_config_path
    from engine import ConfigError, load_config

    path = Path(args.config) if args.config else default_config_path(Path.cwd())
    try:
        config = load_config(path)
    except (OSError, ConfigError) as exc:
        print(f"error: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    if config.store is not None:  # replicas: the tokens are in the database (docs/postgresql.md)
        from bot.cli.server_cmd import stored_agent_token
        from engine import EngineError

        try:
            token = stored_agent_token(config, args.name)
        except EngineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    else:
        tokens_file = Path(config.server.data_dir) / "agent-tokens.json"
        try:
            tokens: dict[str, Any] = json.loads(tokens_file.read_text())
        except OSError:
            print(
                f"error: no {tokens_file} yet: start the server once (`make run`) to issue agent tokens",
                file=sys.stderr,
            )
            return 1
        token = tokens.get(
            args.name
        )  # a config host, or an instance registered through the API or an agent-tokens call
    if token is None and args.name not in config.hosts:
        print(
            f"error: {args.name!r} is not a host in {path} (hosts: {', '.join(config.hosts)}) and has no token: "
            "register it (CodeDeploy RegisterOnPremisesInstance) or POST /api/v1/agent-tokens",
            file=sys.stderr,
        )
        return 1
    if token is None:
        print(f"error: no token for {args.name} yet: restart the server after adding the host", file=sys.stderr)
        return 1
    print(token)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hosts = subparsers.add_parser("hosts", help="the configured hosts and whether their agents are online")
    _common(hosts)
    hosts.set_defaults(func=_run(_hosts))
    token = subparsers.add_parser("agent-token", help="print a host's agent token (run on the server's machine)")
    token.add_argument("name", help="host name from the config")
    token.add_argument("--config", metavar="FILE", help="config file (default: the embedded example)")
    token.set_defaults(func=_agent_token)
