"""``deploybot hooks`` (Lambda/ECS hook executions waiting for their status callback) and
``deploybot hook-status EXECUTION_ID Succeeded|Failed`` (answer one by hand).

A hook function is meant to call PutLifecycleEventHookExecutionStatus itself; these are for the operator whose
function crashed before it could, and who would otherwise wait for the hook timeout.
"""

from __future__ import annotations

import argparse
import shutil
import time
from typing import TYPE_CHECKING

from bot.cli.deploy_cmd import _common, _print_json, _run

if TYPE_CHECKING:
    from bot.client import ApiClient


async def _hooks(args: argparse.Namespace, api: ApiClient) -> int:
    from rich.console import Console
    from rich.table import Table

    executions = await api.hook_executions(args.deployment)
    if args.json:
        _print_json(executions)
        return 0
    if not executions:
        Console().print("no hook is waiting for a status", markup=False)
        return 0
    table = Table(box=None)
    table.add_column("execution id", no_wrap=True, min_width=36)  # whole: it is what `hook-status` takes
    for name in ("deployment", "event", "function", "waiting"):
        table.add_column(name)
    now = time.time()
    for e in executions:
        waited = f"{now - e['started_at']:.0f} s"
        table.add_row(e["execution_id"], e["deployment_id"], e["event"], e["function"], waited)
    # Wide enough for whole ids and event names even when piped (rich assumes 80 columns without a terminal).
    Console(soft_wrap=True, width=max(shutil.get_terminal_size((160, 24)).columns, 120)).print(table)
    return 0


async def _hook_status(args: argparse.Namespace, api: ApiClient) -> int:
    from rich.console import Console

    result = await api.put_hook_status(args.execution_id, args.status)
    if args.json:
        _print_json(result)
    else:
        Console().print(f"{result['event']} of {result['deployment_id']}: {args.status}", markup=False)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hooks = subparsers.add_parser("hooks", help="Lambda/ECS hook executions waiting for their status callback")
    hooks.add_argument("--deployment", metavar="ID", help="only this deployment's")
    _common(hooks)
    hooks.set_defaults(func=_run(_hooks))
    status = subparsers.add_parser("hook-status", help="report a waiting hook's result by hand")
    status.add_argument("execution_id", help="from `deploybot hooks`")
    status.add_argument("status", choices=("Succeeded", "Failed"))
    _common(status)
    status.set_defaults(func=_run(_hook_status))
