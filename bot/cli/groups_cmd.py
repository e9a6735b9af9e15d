"""``deploybot groups``: every deployment group, and where it comes from — the config file, or the CodeDeploy API
(CreateApplication / CreateDeploymentGroup, docs/codedeploy-api.md). Those of the config file change only there;
those of the API only through it."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from bot.cli.deploy_cmd import _common, _print_json, _run, _stdout

if TYPE_CHECKING:
    from bot.client import ApiClient


async def _groups(args: argparse.Namespace, api: ApiClient) -> int:
    from rich.table import Table

    applications = await api.applications()
    if args.application:
        applications = [a for a in applications if a["name"].casefold() == args.application.casefold()]
    rows = [
        {
            "application": app["name"],
            "group": env["group"],
            "environment": env["name"],
            "platform": app["platform"],
            "deployment_type": env["deployment_type"],
            "deployment_config": env["deployment_config"],
            "targets": env["targets"],
            "source": app.get("source", "config file"),
        }
        for app in applications
        for env in app["environments"]
    ]
    if args.json:
        _print_json(rows)
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("application", "group", "platform", "type", "configuration", "source"):
        table.add_column(column, no_wrap=True)  # names are read whole; the targets list wraps instead
    table.add_column("targets", overflow="fold")
    for row in rows:
        targets = ", ".join(row["targets"]) or "-"
        table.add_row(
            row["application"],
            row["group"],
            row["platform"],
            row["deployment_type"],
            row["deployment_config"],
            row["source"],
            targets,
        )
    _stdout().print(table)  # a pipe gets wide lines, a terminal its width
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    groups = subparsers.add_parser("groups", help="every deployment group and where it comes from (config file or API)")
    groups.add_argument("application", nargs="?", help="only this application's groups")
    _common(groups)
    groups.set_defaults(func=_run(_groups))
