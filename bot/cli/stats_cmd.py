"""``deploybot stats APP [--env ENV] [--days 30|90] [--json]``: an application's delivery numbers (deployment
frequency, change failure rate, time to restore, lead time) per environment, from the server
(``GET /api/v1/applications/{app}/stats``; engine/core/delivery.py says how each is counted).

Exit codes: 0 shown, 1 refused (unknown application or environment) or server unreachable, 2 usage.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from bot.cli.deploy_cmd import _common, _print_json, _run, _stdout

if TYPE_CHECKING:
    from bot.client import ApiClient

WINDOWS = (30, 90)


async def fetch_stats(api: ApiClient, application: str, environment: str | None, days: int) -> dict[str, Any]:
    params = {"days": str(days), **({"env": environment} if environment else {})}
    path = f"/api/v1/applications/{quote(application, safe='')}/stats"
    result: dict[str, Any] = await api._request("GET", path, params=params)
    return result


async def _stats(args: argparse.Namespace, api: ApiClient) -> int:
    from rich.table import Table

    from bot.pages.render import rate_text, seconds_text

    stats = await fetch_stats(api, args.app, args.env, args.days)
    if args.json:
        _print_json(stats)
        return 0
    table = Table("environment", "deployments/week", "change failure rate", "time to restore", "lead time", box=None)
    for n in stats["environments"]:
        table.add_row(
            n["environment"],
            f"{n['deployments_per_week']:.1f} ({n['successful']} successful)",
            f"{rate_text(n['change_failure_rate'])} ({n['failed']} of {n['deployments']})",
            f"{seconds_text(n['time_to_restore_seconds'])} (median of {n['restores']})",
            f"{seconds_text(n['lead_time_seconds'])} (median of {n['lead_times']})",
        )
    console = _stdout()
    console.print(f"{stats['application']}: the last {stats['days']} days")
    console.print(table)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stats = subparsers.add_parser(
        "stats",
        help="delivery numbers: deployment frequency, change failure rate, time to restore, lead time",
    )
    stats.add_argument("app", help="application name")
    stats.add_argument("--env", help="only this environment (default: each of the application's)")
    stats.add_argument("--days", type=int, choices=WINDOWS, default=30, help="the window, in days (default 30)")
    _common(stats)
    stats.set_defaults(func=_run(_stats))
