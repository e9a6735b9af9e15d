"""``deploybot token create | list | revoke``: per-user API tokens over the JSON API (admins only, for now).

``create`` prints the new token alone on stdout, once (``TOKEN=$(deploybot token create alice)``), and what it is on
stderr; the server keeps only its hash, so it cannot be shown again. Nothing secret is ever an argument.

Exit codes: 0 done, 1 refused / server unreachable, 2 usage (with a usage line).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bot.cli.deploy_cmd import _common, _print_json, _run, _stderr, _stdout

if TYPE_CHECKING:
    from bot.client import ApiClient


def _lifetime(text: str) -> float:
    """argparse's reading of ``--expires``: a bad value is a usage error (exit 2) before any request."""
    from bot.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _describe(token: Mapping[str, Any]) -> str:
    from bot.cli import deploy_view as view

    expires = f"expires {view.when(token['expires_at'])}" if token.get("expires_at") else "never expires"
    return f"{token['id']} of {token['user']} ({token['name']}, {token['status']}, {expires})"


async def _create(args: argparse.Namespace, api: ApiClient) -> int:
    token = await api.create_token(args.user, name=args.name, expires_in=args.expires)
    if args.json:
        _print_json(token)
        return 0
    sys.stdout.write(f"{token['token']}\n")
    sys.stdout.flush()
    note = f"created {_describe(token)}; this is the only time the token is shown: keep it (e.g. in DEPLOYBOT_TOKEN)"
    _stderr().print(note, markup=False)
    return 0


async def _list(args: argparse.Namespace, api: ApiClient) -> int:
    from rich.table import Table

    from bot.cli import deploy_view as view

    tokens = await api.tokens(args.user)
    if args.json:
        _print_json(tokens)
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("id", "user", "name", "status", "created", "expires", "last used"):
        table.add_column(column, no_wrap=True)
    for token in tokens:
        table.add_row(
            str(token["id"]),
            str(token["user"]),
            str(token["name"]),
            str(token["status"]),
            view.when(token.get("created_at")),
            view.when(token.get("expires_at")) if token.get("expires_at") else "never",
            view.when(token.get("last_used_at")),
        )
    _stdout().print(table)
    return 0


async def _revoke(args: argparse.Namespace, api: ApiClient) -> int:
    token = await api.revoke_token(args.id)
    if args.json:
        _print_json(token)
    else:
        _stdout().print(f"revoked {token['id']} of {token['user']} ({token['name']})", markup=False)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from bot.durations import DURATION_FORMAT

    parser = subparsers.add_parser(
        "token",
        help="per-user API tokens: create, list, revoke (admins)",
        description="Per-user API tokens: each request made with one acts as its user. Admins only, for now.",
    )

    def usage(_args: argparse.Namespace) -> int:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: name an action: create, list or revoke", file=sys.stderr)
        return 2

    parser.set_defaults(func=usage)
    actions = parser.add_subparsers(dest="token_action", metavar="ACTION")

    create = actions.add_parser("create", help="make a token for USER; prints it once")
    create.add_argument("user", metavar="USER", help="whose token it is: every request made with it acts as USER")
    create.add_argument("--name", default="default", help="what it is for, e.g. laptop or ci (default: default)")
    create.add_argument(
        "--expires", type=_lifetime, metavar="DURATION", help=f"lifetime ({DURATION_FORMAT}; default: never)"
    )
    _common(create, json_help="print the token's JSON document (with the token) instead")
    create.set_defaults(func=_run(_create))

    listing = actions.add_parser("list", help="every token with its status (never the token itself)")
    listing.add_argument("--user", metavar="USER", help="only USER's tokens")
    _common(listing)
    listing.set_defaults(func=_run(_list))

    revoke = actions.add_parser("revoke", help="refuse a token from the next request on")
    revoke.add_argument("id", metavar="ID", help="the token's id (tok-...), from `deploybot token list`")
    _common(revoke)
    revoke.set_defaults(func=_run(_revoke))
