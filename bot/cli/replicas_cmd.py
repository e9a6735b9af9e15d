"""``deploybot replicas [--json]``: the servers sharing the store (``GET /api/v1/replicas``), whether each is alive,
and the deployment groups each drives (it holds their lease) with the lease's expiry. On SQLite there is one.

Exit codes: 0 shown, 1 refused or server unreachable, 2 usage.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from bot.cli.deploy_cmd import _common, _print_json, _run, _stdout

if TYPE_CHECKING:
    from bot.client import ApiClient


async def fetch_replicas(api: ApiClient) -> dict[str, Any]:
    result: dict[str, Any] = await api._request("GET", "/api/v1/replicas")
    return result


def owns_text(owns: list[dict[str, Any]] | None, now: float) -> str:
    """The groups a replica holds the lease of, each with the seconds its lease has left; "n/a" without leases."""
    if owns is None:
        return "n/a (no group leases)"
    if not owns:
        return "-"
    return ", ".join(f"{lease['group']} (lease {max(0.0, lease['expires_at'] - now):.0f} s)" for lease in owns)


async def _replicas(args: argparse.Namespace, api: ApiClient) -> int:
    from rich.table import Table

    answer = await fetch_replicas(api)
    if args.json:
        _print_json(answer)
        return 0
    now = time.time()
    table = Table("replica", "url", "state", "last seen", "owns", "version", box=None)
    for replica in answer["replicas"]:
        state = "[green]alive[/]" if replica["alive"] else "[red]dead[/]"
        name = replica["id"] + (" (answering)" if replica["this"] else "")
        seen = f"{max(0.0, now - replica['last_seen']):.0f} s ago"
        table.add_row(name, replica["url"], state, seen, owns_text(replica["owns"], now), replica["version"])
    _stdout().print(table)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replicas = subparsers.add_parser(
        "replicas", help="the servers sharing the store: alive or not, the groups each drives and its lease expiry"
    )
    _common(replicas)
    replicas.set_defaults(func=_run(_replicas))
