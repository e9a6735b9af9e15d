"""``deploybot deploy | plan | status | wait | history | stop | rollback | pause | resume | continue | promote-now``:
thin commands over the JSON API (bot/client.py), each one request plus rendering (bot/cli/deploy_view.py).

Exit codes: 0 done (a followed deployment Succeeded), 1 refused / failed / stopped / server unreachable, 2 usage.
``--json`` prints exactly one JSON document on stdout; progress and notes go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

# Imports that cost time (rich, the HTTP client through bot.client, the engine) load inside the functions that use
# them, so building the parser (`deploybot --help`, `deploybot agent`) stays cheap; tests/test_cli_startup.py checks.
if TYPE_CHECKING:
    from rich.console import Console

    from bot.client import ApiClient

    Command = Callable[[argparse.Namespace, ApiClient], Awaitable[int]]

GITHUB_PREFIX = "github:"  # github:OWNER/REPO@SHA: the server downloads the commit from GitHub
_IDLE_WATCH_PAUSE = 1.0  # a watch answered without a change (e.g. queued): don't spin


def _console(file: TextIO) -> Console:
    """A terminal gets its real width; a pipe or file gets wide lines, so tables never truncate ids."""
    from rich.console import Console

    console = Console(file=file, highlight=False)
    if not console.is_terminal:
        console = Console(file=file, highlight=False, width=200)
    return console


def _stdout() -> Console:
    return _console(sys.stdout)


def _stderr() -> Console:
    return _console(sys.stderr)


def _print_json(document: object) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def _run(command: Command) -> Callable[[argparse.Namespace], int]:
    """Wrap an async command: one client, one event loop, errors turned into one readable stderr message."""

    def handler(args: argparse.Namespace) -> int:
        import asyncio

        from bot.client import ApiClient, ApiError, ClientError, find_api_token
        from engine import EngineError

        async def main() -> int:
            token = find_api_token(os.environ, Path.cwd())
            async with ApiClient(args.server, token=token, ca_file=args.ca_file) as api:
                return await command(args, api)

        try:
            return asyncio.run(main())
        except ApiError as exc:
            if getattr(args, "json", False):
                _print_json({"error": exc.error, **exc.body, "status": exc.status})
            first, *rest = exc.lines()
            print(f"error: {first}", *rest, sep="\n", file=sys.stderr)
            return 1
        except (ClientError, EngineError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted (the deployment itself goes on; `deploybot stop ID` stops it)", file=sys.stderr)
            return 130

    return handler


# ---------------------------------------------------------------------------------------------------- commands


async def _upload(api: ApiClient, source: str, application: str) -> str:
    """Build the canonical bundle locally (the server may be elsewhere), upload it, return ``sha256:<hex>``.

    ``sha256:`` and ``s3://`` revisions are already where the server can reach them, and ``github:`` ones are
    downloaded by the server (it holds the GitHub credentials): they pass through unchanged."""
    import asyncio
    import tempfile

    from engine import build_bundle

    if source.startswith(("sha256:", "s3://", GITHUB_PREFIX)):
        return source

    err = _stderr()
    with tempfile.TemporaryDirectory(prefix="deploybot-bundle-") as scratch:
        built = await asyncio.to_thread(build_bundle, source, Path(scratch))
        err.print(f"bundle {built.sha256[:12]} ({built.size} bytes) from {built.source}", markup=False)
        label = built.source.encode("ascii", "backslashreplace").decode("ascii")
        stored = await api.upload_revision(built.path, source=label, application=application)
    return f"sha256:{stored['sha256']}"


async def follow(api: ApiClient, deployment: Mapping[str, Any], *, as_json: bool) -> int:
    """Long-poll the deployment until it ends; 0 if it Succeeded, else 1 with the error and failed log tails."""
    import asyncio

    from bot.cli import deploy_view as view
    from engine import FINAL_STATUSES

    current = dict(deployment)
    with view.Progress(_stderr() if as_json else _stdout()) as progress:
        progress.update(current)
        while current.get("status") not in FINAL_STATUSES:
            after = int(current.get("version") or 0)
            latest = await api.watch(str(current["id"]), after=after)
            if int(latest.get("version") or 0) <= after and latest.get("status") == current.get("status"):
                await asyncio.sleep(_IDLE_WATCH_PAUSE)
            current = latest
            progress.update(current)
    succeeded = current.get("status") == "Succeeded"
    if as_json:
        _print_json(current)
    else:
        out = _stdout() if succeeded else _stderr()
        out.print(view.summary(current), markup=False)
        for line in view.failure_report(current):
            out.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0 if succeeded else 1


async def _deploy(args: argparse.Namespace, api: ApiClient) -> int:
    revision = await _upload(api, args.revision, args.app) if args.revision else None
    deployment = await api.start(
        args.app,
        args.to,
        revision=revision,
        config=args.config,
        description=args.description,
        ignore_alarms=args.ignore_alarms,
    )
    if args.wait:
        return await follow(api, deployment, as_json=args.json)
    _show(deployment, args.json)
    if not args.json:
        _stdout().print(f"follow it with: deploybot wait {deployment['id']}", markup=False)
    return 0


async def _plan(args: argparse.Namespace, api: ApiClient) -> int:
    from bot.cli import deploy_view as view
    from bot.client import ClientError

    if args.revision and args.revision.startswith(GITHUB_PREFIX):
        raise ClientError("plan takes no github: revision (only deploy fetches one); plan the same commit as git:SHA")
    revision = await _upload(api, args.revision, args.app) if args.revision else None
    result = await api.plan(args.app, args.to, revision=revision, config=args.config, from_env=args.from_env)
    if args.json:
        _print_json(result)
    else:
        _stdout().print(view.plan_view(result))
    plan = result.get("plan") or result
    return 1 if plan.get("startable") is False or result.get("blocked") else 0


def _show(deployment: Mapping[str, Any], as_json: bool) -> None:
    from bot.cli import deploy_view as view
    from engine import FINAL_STATUSES

    if as_json:
        _print_json(deployment)
        return
    out = _stdout()
    out.print(view.deployment_view(deployment))
    if deployment.get("status") in FINAL_STATUSES:
        out.print(view.summary(deployment), markup=False)
        for line in view.failure_report(deployment):
            out.print(line, markup=False, highlight=False, soft_wrap=True)


async def _status(args: argparse.Namespace, api: ApiClient) -> int:
    from bot.cli import deploy_view as view

    if args.id:
        _show(await api.get(args.id), args.json)
        return 0
    deployments = await api.list_deployments(limit=args.limit)
    _show_list(deployments, args.json)
    if not args.json:
        merges = [entry for entry in await api.queue() if entry.get("kind") in view.GITHUB_KINDS]
        if merges:
            _stdout().print("\nGitHub merges and deployments not started yet:", markup=False)
            _stdout().print(view.github_waiting_table(merges))
    return 0


def _show_list(deployments: list[dict[str, Any]], as_json: bool) -> None:
    from bot.cli import deploy_view as view

    if as_json:
        _print_json(deployments)
    elif deployments:
        _stdout().print(view.deployments_table(deployments))
    else:
        _stdout().print("no deployments yet")


async def _wait(args: argparse.Namespace, api: ApiClient) -> int:
    return await follow(api, await api.get(args.id), as_json=args.json)


async def _history(args: argparse.Namespace, api: ApiClient) -> int:
    _show_list(await api.list_deployments(args.app, args.env, limit=args.limit), args.json)
    return 0


async def _stop(args: argparse.Namespace, api: ApiClient) -> int:
    _show(await api.stop(args.id, rollback=True if args.rollback else None), args.json)
    return 0


async def _rollback(args: argparse.Namespace, api: ApiClient) -> int:
    deployment = await api.rollback(args.app, args.in_env)
    if args.wait:
        return await follow(api, deployment, as_json=args.json)
    _show(deployment, args.json)
    return 0


def _control(action: str) -> Command:
    async def command(args: argparse.Namespace, api: ApiClient) -> int:
        _show(await api.control(args.id, action), args.json)
        return 0

    return command


# ---------------------------------------------------------------------------------------------------- parser


def _common(parser: argparse.ArgumentParser, *, json_help: str = "print one JSON document") -> None:
    from bot.client import DEFAULT_SERVER_URL

    default = os.environ.get("DEPLOYBOT_URL") or DEFAULT_SERVER_URL
    parser.add_argument("--server", default=default, help=f"server URL (default $DEPLOYBOT_URL or {default})")
    parser.add_argument(
        "--ca-file",
        metavar="PATH",
        help="PEM file of the CA that signed an https:// server's certificate (default $DEPLOYBOT_CA_FILE, else the "
        "system CAs)",
    )
    parser.add_argument("--json", action="store_true", help=json_help)


def _revision_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app", help="application name")
    parser.add_argument("--to", required=True, metavar="ENV", help="environment")
    parser.add_argument(
        "--revision",
        metavar="SOURCE",
        help="DIR, FILE.tar.gz, FILE.zip, an AppSpec file (Lambda/ECS) or git:REF, bundled here and uploaded; "
        "s3://BUCKET/KEY, github:OWNER/REPO@SHA and sha256:HEX are fetched or looked up by the server (default: "
        "the app's revision)",
    )
    parser.add_argument("--config", metavar="NAME", help="deployment configuration (default: the group's)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    deploy = subparsers.add_parser("deploy", help="start (and follow) a deployment")
    _revision_options(deploy)
    deploy.add_argument("--wait", action="store_true", help="follow it until it ends; exit 1 unless it Succeeded")
    deploy.add_argument("--description", default="", help="a note kept with the deployment")
    deploy.add_argument(
        "--ignore-alarms",
        action="store_true",
        help="start even though one of the group's alarms is firing; no alarm stops this deployment",
    )
    _common(deploy)
    deploy.set_defaults(func=_run(_deploy))

    plan = subparsers.add_parser(
        "plan", help="dry run: revision and diff, gates, batches, hooks, traffic, rollback, ETA; changes nothing"
    )
    _revision_options(plan)
    plan.add_argument("--from", dest="from_env", metavar="ENV", help="plan promoting what last succeeded in ENV")
    _common(plan)
    plan.set_defaults(func=_run(_plan))

    status = subparsers.add_parser("status", help="one deployment, or the most recent ones")
    status.add_argument("id", nargs="?", help="deployment id (default: list recent deployments)")
    status.add_argument("--limit", type=int, default=20, help="how many recent deployments")
    _common(status)
    status.set_defaults(func=_run(_status))

    wait = subparsers.add_parser("wait", help="follow a deployment until it ends; exit 1 unless it Succeeded")
    wait.add_argument("id", help="deployment id")
    _common(wait, json_help="print the final deployment as JSON")
    wait.set_defaults(func=_run(_wait))

    history = subparsers.add_parser("history", help="an application's deployments, newest first")
    history.add_argument("app", help="application name")
    history.add_argument("--env", help="only this environment")
    history.add_argument("--limit", type=int, default=20, help="how many")
    _common(history)
    history.set_defaults(func=_run(_history))

    stop = subparsers.add_parser("stop", help="stop a deployment")
    stop.add_argument("id", help="deployment id")
    stop.add_argument("--rollback", action="store_true", help="also roll back to the last good revision")
    _common(stop)
    stop.set_defaults(func=_run(_stop))

    rollback = subparsers.add_parser("rollback", help="redeploy an environment's last good revision")
    rollback.add_argument("app", help="application name")
    rollback.add_argument("--in", dest="in_env", required=True, metavar="ENV", help="environment")
    rollback.add_argument("--wait", action="store_true", help="follow the rollback until it ends")
    _common(rollback)
    rollback.set_defaults(func=_run(_rollback))

    for name, action, text in (
        ("pause", "pause", "pause a deployment before its next step"),
        ("resume", "resume", "resume a paused deployment"),
        ("continue", "continue", "reroute traffic of a blue/green deployment waiting in Ready"),
        ("promote-now", "promote", "skip the remaining canary/linear waits"),
    ):
        parser = subparsers.add_parser(name, help=text)
        parser.add_argument("id", help="deployment id")
        _common(parser)
        parser.set_defaults(func=_run(_control(action)))
