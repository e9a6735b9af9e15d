"""``deploybot push APP --source DIR --to s3://BUCKET/PREFIX``: bundle, upload to S3, register (``aws deploy push``).

The bundle is the canonical tar.gz every other revision is (so the same files are the same revision wherever they
come from), uploaded as ``PREFIX/APP-<sha256[:12]>.tar.gz`` with its sha256 in the object's metadata. Credentials
come from the standard chain. With ``--config``, the named ``--account`` of the file's ``aws`` section gives the
region, profile and ``endpoint_url``; without it botocore reads AWS_REGION / AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL
itself. The server is then told where the revision is (it fetches and checks it), and the line to deploy it is
printed, pinned to this upload's version and ETag (``s3://BUCKET/KEY?versionId=V&etag=E``).

Exit codes: 0 pushed and registered, 1 the upload or the registration failed, 2 usage (bad arguments or config).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.cli.deploy_cmd import _common, _print_json, _run, _stderr, _stdout

if TYPE_CHECKING:
    from bot.client import ApiClient
    from engine import AwsAccount


class _Usage(Exception):
    """A mistake in the command line or config, reported before anything is uploaded (exit 2)."""


def _bucket_and_prefix(uri: str) -> tuple[str, str]:
    from engine.core.s3_urls import parse_s3_uri

    try:
        return parse_s3_uri(uri)
    except ValueError as exc:
        raise _Usage(f"--to: {exc}") from None


def _account(args: argparse.Namespace) -> AwsAccount:
    from engine import AwsAccount, ConfigError, load_config

    if args.config is None:
        if args.account not in (None, "default"):
            raise _Usage("--account names an account of a config file's `aws` section: give --config FILE too")
        return AwsAccount("default")
    try:
        config = load_config(Path(args.config))
    except (OSError, ConfigError) as exc:
        raise _Usage(f"cannot read {args.config}: {exc}") from None
    name = args.account or "default"
    if name != "default" and name not in config.aws_accounts:
        known = ", ".join(config.aws_accounts) or "none"
        raise _Usage(f"{args.config} has no aws account {name!r} (accounts: {known})")
    return config.aws_account(name)


async def register_s3_revision(
    api: ApiClient, location: dict[str, Any], *, application: str, description: str = ""
) -> dict[str, Any]:
    """``POST /api/v1/revisions`` with the S3 location; the server fetches and checks it, and answers
    ``{"sha256", "size", "source", "location"}``."""
    body: dict[str, Any] = {**location, "application": application}
    if description:
        body["description"] = description
    return await api.register_s3_revision(body)


async def _push_and_register(args: argparse.Namespace, api: ApiClient) -> int:
    from engine.adapters.aws.accounts import AwsClients
    from engine.adapters.aws.s3 import push_revision

    clients = AwsClients(args.aws_account)
    try:
        pushed = await push_revision(clients, args.source_dir, args.bucket, args.prefix, application=args.app)
    finally:
        await clients.close()
    version = f", version {pushed.version}" if pushed.version else ""
    _stderr().print(f"uploaded {pushed.uri} (sha256 {pushed.sha256}, etag {pushed.etag}{version})", markup=False)
    stored = await register_s3_revision(
        api, pushed.revision_location(), application=args.app, description=args.description
    )
    if args.json:
        _print_json({"location": pushed.to_json(), "revision": stored})
        return 0
    out = _stdout()
    out.print(f"registered revision sha256:{stored.get('sha256', pushed.sha256)} of {args.app}", markup=False)
    # The version and ETag pin this very upload: a later push to the same key is not what gets deployed.
    revision = shlex.quote(pushed.pinned_uri)
    out.print(f"deploy it with: deploybot deploy {args.app} --to ENV --revision {revision}", markup=False)
    return 0


def _push(args: argparse.Namespace) -> int:
    try:
        source = Path(args.source)
        if not source.is_dir():
            raise _Usage(f"--source {args.source}: not a directory")
        args.source_dir = source
        args.bucket, args.prefix = _bucket_and_prefix(args.to)
        args.aws_account = _account(args)
    except _Usage as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _run(_push_and_register)(args)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    push = subparsers.add_parser(
        "push", help="bundle a directory, upload it to S3 and register it as a revision (like `aws deploy push`)"
    )
    push.add_argument("app", help="application name")
    push.add_argument("--source", required=True, metavar="DIR", help="the revision directory (appspec.yml at its root)")
    push.add_argument("--to", required=True, metavar="s3://BUCKET/PREFIX", help="where to upload the bundle")
    push.add_argument("--account", metavar="NAME", help="aws account of --config (default: default)")
    push.add_argument("--config", metavar="FILE", help="config file whose `aws` section gives region and endpoint_url")
    push.add_argument("--description", default="", help="kept with the registered revision")
    _common(push)
    push.set_defaults(func=_push)
