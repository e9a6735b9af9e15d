"""``deploybot promote | where | lock | unlock | locks | freeze | unfreeze | approve | reject | queue``: the release
flow over the JSON API. Refusals come back with the engine's own sentence (who locked it and why, which check a
promotion failed), so the CLI says exactly what Slack and GitHub say.

Exit codes: 0 done, 1 refused / server unreachable (a followed promotion: 1 unless it Succeeded), 2 usage.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bot.cli.deploy_cmd import _common, _print_json, _run, _show, _stdout, follow

if TYPE_CHECKING:
    from rich.table import Table

    from bot.client import ApiClient

FREEZE = "*"


def _expiry(lock: Mapping[str, Any]) -> str:
    from bot.cli import deploy_view as view

    return f"until {view.when(lock['expires_at'])}" if lock.get("expires_at") else "until unlocked"


def _lock_line(lock: Mapping[str, Any]) -> str:
    what = "everything (freeze)" if lock.get("scope") == "freeze" else f"{lock['application']}/{lock['environment']}"
    reason = f": {lock['reason']}" if lock.get("reason") else ""
    return f"{what} locked by {lock['owner']}{reason} ({_expiry(lock)})"


def _print_lock(lock: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(lock)
    else:
        _stdout().print(_lock_line(lock), markup=False)


# ---------------------------------------------------------------------------------------------------- commands


async def _promote(args: argparse.Namespace, api: ApiClient) -> int:
    deployment = await api.promote(args.app, args.from_env, args.to, override=args.override, revision=args.revision)
    if args.wait:
        return await follow(api, deployment, as_json=args.json)
    _show(deployment, args.json)
    if not args.json:
        _stdout().print(f"follow it with: deploybot wait {deployment['id']}", markup=False)
    return 0


async def _where(args: argparse.Namespace, api: ApiClient) -> int:
    result = await api.where(args.app)
    if args.json:
        _print_json(result)
        return 0
    _stdout().print(where_table(result["environments"]))
    return 0


def where_table(environments: Sequence[Mapping[str, Any]]) -> Table:
    from rich.table import Table
    from rich.text import Text

    from bot.cli import deploy_view as view

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("environment", "revision", "since", "by", "deployment", "what", "now", "lock"):
        table.add_column(column, no_wrap=True)
    for env in environments:
        now: list[str] = []
        if env.get("in_flight"):
            now.append(f"{env['in_flight']['id']} {env['in_flight']['status']}")
        last = env.get("last") or {}
        if last and last.get("status") != "Succeeded":
            now.append(f"last {last['id']} {last['status']}")
        if env.get("waiting"):
            now.append(f"{env['waiting']} waiting")
        lock = env.get("lock")
        table.add_row(
            str(env["environment"]),
            view.short_sha(env.get("revision")),
            view.when(env.get("since")),
            str(env.get("deployed_by") or "-"),
            str(env.get("deployment_id") or "-"),
            str(env.get("description") or "-"),
            ", ".join(now) or "-",
            Text(f"{lock['owner']}: {lock.get('reason') or '-'}", style="red") if lock else Text("-"),
        )
    return table


async def _lock(args: argparse.Namespace, api: ApiClient) -> int:
    lock = await api.lock(args.app, args.env, reason=args.reason, minutes=args.minutes)
    _print_lock(lock, args.json)
    return 0


async def _unlock(args: argparse.Namespace, api: ApiClient) -> int:
    result = await api.unlock(args.app, args.env)
    if args.json:
        _print_json(result)
    elif result.get("released"):
        _stdout().print(f"released: {_lock_line(result['lock'])}", markup=False)
    else:
        _stdout().print(f"{args.app}/{args.env} was not locked", markup=False)
    return 0


async def _freeze(args: argparse.Namespace, api: ApiClient) -> int:
    lock = await api.lock(FREEZE, FREEZE, reason=args.reason, minutes=args.minutes)
    _print_lock(lock, args.json)
    return 0


async def _unfreeze(args: argparse.Namespace, api: ApiClient) -> int:
    result = await api.unlock(FREEZE, FREEZE)
    if args.json:
        _print_json(result)
    else:
        _stdout().print("the freeze is lifted" if result.get("released") else "nothing was frozen", markup=False)
    return 0


async def _locks(args: argparse.Namespace, api: ApiClient) -> int:
    locks = await api.locks()
    if args.json:
        _print_json(locks)
    elif not locks:
        _stdout().print("no locks")
    else:
        for lock in locks:
            _stdout().print(_lock_line(lock), markup=False)
    return 0


async def _approve(args: argparse.Namespace, api: ApiClient) -> int:
    _show(await api.approve(args.id), args.json)
    return 0


async def _reject(args: argparse.Namespace, api: ApiClient) -> int:
    _show(await api.reject(args.id, reason=args.reason), args.json)
    return 0


async def _queue(args: argparse.Namespace, api: ApiClient) -> int:
    from bot.cli import deploy_view as view

    waiting = await api.queue(args.app, args.env)
    github = [entry for entry in waiting if entry.get("kind") in view.GITHUB_KINDS]
    deployments = [entry for entry in waiting if entry.get("kind") not in view.GITHUB_KINDS]
    if args.json:
        _print_json(waiting)
    elif not waiting:
        _stdout().print("nothing is waiting")
    else:
        if deployments:
            _stdout().print(queue_table(deployments))
        if github and deployments:
            _stdout().print("\nGitHub merges and deployments not started yet:", markup=False)
        if github:
            _stdout().print(view.github_waiting_table(github))
    return 0


def queue_table(deployments: Sequence[Mapping[str, Any]]) -> Table:
    from rich.table import Table

    from bot.cli import deploy_view as view

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("#", "id", "environment", "status", "revision", "by", "requested", "starts in", "waiting for"):
        table.add_column(column, no_wrap=True)
    for d in deployments:
        table.add_row(
            str(d.get("queue_position") or "-"),
            str(d.get("id")),
            str(d.get("environment")),
            view.styled(d.get("status")),
            view.short_sha(d.get("revision")),
            str(d.get("created_by") or "-"),
            view.when(d.get("created_at")),
            f"~{view.span(d['eta_seconds'])}" if d.get("eta_seconds") is not None else "-",
            str((d.get("waiting_for") or {}).get("message") or "-"),
        )
    return table


# ---------------------------------------------------------------------------------------------------- parser


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of minutes: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 minutes")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    promote = subparsers.add_parser("promote", help="deploy what last succeeded in one environment to the next")
    promote.add_argument("app", help="application name")
    promote.add_argument("--from", dest="from_env", required=True, metavar="ENV", help="source environment")
    promote.add_argument("--to", required=True, metavar="ENV", help="target environment (the next in order)")
    promote.add_argument("--revision", metavar="SHA256", help="promote this revision (must have succeeded in --from)")
    promote.add_argument("--override", action="store_true", help="admins: skip the order and soak-time checks")
    promote.add_argument("--wait", action="store_true", help="follow it until it ends; exit 1 unless it Succeeded")
    _common(promote)
    promote.set_defaults(func=_run(_promote))

    where = subparsers.add_parser("where", help="which revision runs in each environment, since when, by whom")
    where.add_argument("app", help="application name")
    _common(where)
    where.set_defaults(func=_run(_where))

    lock = subparsers.add_parser("lock", help="lock an environment: deployments to it are refused or queued")
    lock.add_argument("env", help="environment")
    lock.add_argument("--app", required=True, help="application name")
    lock.add_argument("--reason", default="", help="shown to everyone the lock stops")
    lock.add_argument("--for", dest="minutes", type=_minutes, metavar="MINUTES", help="release it by itself after")
    _common(lock)
    lock.set_defaults(func=_run(_lock))

    unlock = subparsers.add_parser("unlock", help="release an environment's lock")
    unlock.add_argument("env", help="environment")
    unlock.add_argument("--app", required=True, help="application name")
    _common(unlock)
    unlock.set_defaults(func=_run(_unlock))

    locks = subparsers.add_parser("locks", help="current locks and the freeze")
    _common(locks)
    locks.set_defaults(func=_run(_locks))

    freeze = subparsers.add_parser("freeze", help="admins: hold deployments to every environment")
    freeze.add_argument("--reason", default="", help="shown to everyone the freeze stops")
    freeze.add_argument("--for", dest="minutes", type=_minutes, metavar="MINUTES", help="lift it by itself after")
    _common(freeze)
    freeze.set_defaults(func=_run(_freeze))

    unfreeze = subparsers.add_parser("unfreeze", help="admins: lift the freeze")
    _common(unfreeze)
    unfreeze.set_defaults(func=_run(_unfreeze))

    approve = subparsers.add_parser("approve", help="approve a deployment waiting for approval")
    approve.add_argument("id", help="deployment id")
    _common(approve)
    approve.set_defaults(func=_run(_approve))

    reject = subparsers.add_parser("reject", help="reject (stop) a deployment waiting for approval")
    reject.add_argument("id", help="deployment id")
    reject.add_argument("--reason", default="", help="why")
    _common(reject)
    reject.set_defaults(func=_run(_reject))

    queue = subparsers.add_parser(
        "queue", help="deployments waiting (position, ETA, what holds them) and GitHub merges waiting for checks"
    )
    queue.add_argument("app", nargs="?", help="application name (default: all)")
    queue.add_argument("--env", help="only this environment")
    _common(queue)
    queue.set_defaults(func=_run(_queue))
