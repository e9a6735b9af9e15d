"""``deploybot serve`` (the server: HTTP + engine + the local agent fleet) and ``deploybot agent`` (one host agent).

``serve`` first takes the data directory's lock (``bot.assembly.lock_data_dir``): a second server on the same data
directory says which pid holds it and exits 1 before it touches the database, the agents or HAProxy. It binds its
socket before anything else is started, so ``--port 0`` works: the real port is known before the local agents are
given the server's URL. It runs until SIGINT/SIGTERM, then stops in reverse order: HTTP (in-flight long
polls get a short grace), the local agents, and last the Deployer, which persists what is running so the next
start resumes it.

With ``server.tls`` it speaks HTTPS only (TLS 1.2 or later). The certificate files are checked before anything
starts — each readable and PEM, the key unencrypted and matching the certificate, and the certificate trusted by
``server.tls.ca`` (or the system CAs) for the address local agents connect to — so a mistake is one line naming the
file, never a traceback or a crash-looping agent. Local agents get ``--ca-file`` with ``server.tls.ca``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio
    import ssl
    from collections.abc import Iterator, Sequence

    from bot.settings import Settings
    from engine.core.config.model import DeploymentGroup, EngineConfig, TlsSettings
    from engine.ports import AlarmSource

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 2.0  # agents' long polls last 25 s; nothing else is worth waiting for
EXAMPLE_CONFIG = Path("config") / "deploybot.example.yml"


def default_config_path(cwd: Path) -> Path:
    """config/deploybot.example.yml of the checkout we run from: under ``cwd`` (or a parent), else this package's."""
    from bot.client import find_repo_root

    root = find_repo_root(cwd)
    if root is not None:
        return root / EXAMPLE_CONFIG
    from engine.core.config.parse import DEFAULT_CONFIG_PATH

    return DEFAULT_CONFIG_PATH


def _key_value(text: str) -> tuple[str, str]:
    """The agent's own KEY=VALUE rule, worded for argparse (a plain ValueError would become "invalid value")."""
    from engine.agent import parse_assignment  # the agent's modules load only when an option needs them

    try:
        return parse_assignment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host.strip("[]"), port), family=family, backlog=256)


def _local_host(host: str) -> str:
    """The address agents on this machine connect to (a wildcard listen address is not connectable)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "::1"
    return host.strip("[]")


def _local_url(host: str, port: int, scheme: str = "http") -> str:
    """How agents on this machine reach the server."""
    host = _local_host(host)
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class TlsFileError(ValueError):
    """A ``server.tls`` file the server cannot use; the message names the file and says why."""


def _read_pem(what: str, path: str, marker: bytes, kind: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsFileError(f"server.tls.{what} {path}: cannot read it: {exc.strerror or exc}") from None
    if marker not in data:
        raise TlsFileError(f"server.tls.{what} {path}: no PEM {kind} in it (expected a -----BEGIN ... block)")
    return data


def _no_password() -> bytes:
    raise TlsFileError("encrypted")  # never prompt on the terminal; the key's check below words the problem


def server_tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """The server's SSLContext (TLS 1.2 or later) from ``server.tls``; TlsFileError naming the file that is
    unreadable, not PEM, encrypted or not the certificate's key."""
    import ssl

    _read_pem("cert", tls.cert, b"-----BEGIN CERTIFICATE-----", "certificate")
    key = _read_pem("key", tls.key, b"PRIVATE KEY-----", "private key")
    if b"ENCRYPTED" in key:
        raise TlsFileError(f"server.tls.key {tls.key}: the key is encrypted: give it unencrypted (mode 0600)")
    if tls.ca is not None:
        _read_pem("ca", tls.ca, b"-----BEGIN CERTIFICATE-----", "certificate")
        try:
            ssl.create_default_context(cafile=tls.ca)
        except ssl.SSLError as exc:
            raise TlsFileError(f"server.tls.ca {tls.ca}: not a usable CA certificate: {exc.reason or exc}") from None
    if os.stat(tls.key).st_mode & 0o077:
        log.warning("server.tls.key %s can be read by other users: chmod 600 it", tls.key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert, tls.key, password=_no_password)
    except TlsFileError:
        raise TlsFileError(f"server.tls.key {tls.key}: the key is encrypted: give it unencrypted (mode 0600)") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsFileError(
                f"server.tls.key {tls.key} is not the key of the certificate in server.tls.cert {tls.cert}"
            ) from None
        raise TlsFileError(
            f"server.tls: cannot load the certificate {tls.cert} with the key {tls.key}: {exc.reason or exc}"
        ) from None
    return context


def check_local_trust(server: ssl.SSLContext, tls: TlsSettings, host: str | None) -> None:
    """TlsFileError unless a client trusting ``server.tls.ca`` (else the system CAs) accepts the certificate for
    ``host`` (where local agents connect; None: the chain alone). A TLS handshake in memory: no socket involved."""
    import ssl

    from engine.agent.client import tls_context

    client = tls_context(Path(tls.ca) if tls.ca else None)
    client.check_hostname = host is not None
    to_server, to_agent = ssl.MemoryBIO(), ssl.MemoryBIO()  # each end writes into the other's incoming buffer
    ends = [
        client.wrap_bio(to_agent, to_server, server_hostname=host or "deploybot"),
        server.wrap_bio(to_server, to_agent, server_side=True),
    ]
    try:
        for _ in range(8):  # TLS 1.3 needs three flights; 1.2 four
            for end in list(ends):
                try:
                    end.do_handshake()
                    ends.remove(end)
                except ssl.SSLWantReadError:
                    pass
            if not ends:
                return
    except ssl.SSLCertVerificationError as exc:
        trusted_by = f"server.tls.ca {tls.ca}" if tls.ca else "the system CAs (set server.tls.ca for a private CA)"
        where = f" for {host} (where local agents connect)" if host else ""
        raise TlsFileError(
            f"server.tls.cert {tls.cert} is not trusted by {trusted_by}{where}: certificate verify failed: "
            f"{exc.verify_message}"
        ) from None
    except ssl.SSLError as exc:
        raise TlsFileError(f"server.tls: a test handshake with {tls.cert} failed: {exc.reason or exc}") from None


@contextlib.contextmanager
def _stop_signals() -> Iterator[asyncio.Event]:
    """An event SIGINT or SIGTERM sets, handled from before "listening on" is printed: whoever reads that line and
    signals at once gets a clean stop, not the default handler's kill."""
    import asyncio

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _slack_line(settings: Settings) -> str:
    if not settings.slack_enabled:
        return "Slack: off (set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET, or SLACK_APP_TOKEN for Socket Mode)"
    ways = (["events at /slack/events"] if settings.slack_signing_secret else []) + (
        ["Socket Mode"] if settings.slack_app_token else []
    )
    return f"Slack: on ({', '.join(ways)})"


async def _serve(
    config: EngineConfig,
    settings: Settings,
    config_path: Path,
    tls: ssl.SSLContext | None = None,
    *,
    log_format: str = "text",
) -> None:
    from aiohttp import web

    from bot.app import create_app
    from bot.assembly import assemble_deployer
    from bot.event_loop import running as running_loop
    from bot.github import describe as describe_github
    from bot.heap import settle as settle_heap
    from bot.localfleet import LocalFleet, agent_processes
    from engine.adapters.aws.accounts import AwsAccounts
    from engine.adapters.aws.elbv2 import build_elb_routers
    from engine.adapters.clock import SystemClock
    from engine.adapters.haproxy.stack import build_alarms, haproxy_groups, start_haproxy

    sock = _listen_socket(config.server.listen_host, config.server.listen_port)
    url = _local_url(config.server.listen_host, sock.getsockname()[1], "https" if tls else "http")
    clock = SystemClock()
    try:
        haproxy = await start_haproxy(config, run_dir=settings.data_dir / "haproxy", clock=clock)
    except BaseException:
        sock.close()
        raise

    # One set of AWS clients for everything (made on first use: a server without AWS groups never creates one).
    aws = AwsAccounts(dict(config.aws_accounts))

    def alarms(group: DeploymentGroup, targets: Sequence[str]) -> AlarmSource | None:
        account = aws.clients(str(group.extra.get("aws_account", "default")))
        return build_alarms(group, targets, runtime=haproxy.runtime if haproxy else None, clock=clock, aws=account)

    try:
        routers = {**(haproxy.routers() if haproxy else {}), **build_elb_routers(config, aws, clock=clock)}
        deployer = await assemble_deployer(
            config,
            data_dir=settings.data_dir,
            clock=clock,
            routers=routers,
            alarm_factory=alarms,
            aws=aws,
            replica_url=url,
        )
    except BaseException:
        sock.close()
        if haproxy:
            await haproxy.stop()
        raise
    try:
        ca = config.server.tls.ca if tls is not None and config.server.tls is not None else None
        ca_file = Path(ca) if ca else None
        agents = agent_processes(
            config.local_hosts(),
            server_url=url,
            data_dir=settings.data_dir,
            token_for=deployer.fleet.token_for,
            ca_file=ca_file,
            log_format=log_format,
        )
        app = create_app(settings, deployer=deployer, local_fleet=LocalFleet(agents) if agents else None)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
        await runner.setup()
        settle_heap()  # startup is over: what it built lives as long as the process (bot/heap.py)
        try:
            await web.SockSite(runner, sock, shutdown_timeout=SHUTDOWN_GRACE_SECONDS, ssl_context=tls).start()
            with _stop_signals() as stopped:
                haproxy_socket = settings.data_dir / "haproxy" / "haproxy.sock"
                print(f"deploybot {config_path.name}:", flush=True)
                print(f"  config {config_path}, data in {settings.data_dir}", flush=True)
                print(f"  API token in {settings.api_token_file} (or $DEPLOYBOT_TOKEN)", flush=True)
                if agents:
                    names = ", ".join(agent.name for agent in agents)
                    where = settings.data_dir / "hosts" / "NAME" / "agent.log"
                    print(f"  local agents: {names} (logs in {where})", flush=True)
                for group in haproxy_groups(config):
                    assert group.load_balancer is not None
                    port = group.load_balancer.port
                    print(
                        f"  HAProxy: {group.name} on http://127.0.0.1:{port} (runtime API {haproxy_socket})", flush=True
                    )
                if config.server.public_url:
                    print(f"  public URL {config.server.public_url}", flush=True)
                if tls and config.server.tls:
                    print(f"  {_tls_line(config.server.tls)}", flush=True)
                print(f"  {_slack_line(settings)}", flush=True)
                print(f"  {describe_github(settings)}", flush=True)
                print(f"  event loop: {running_loop()}", flush=True)
                print(f"deploybot listening on {url}", flush=True)  # last: everything above is ready by now
                await stopped.wait()
                print("deploybot shutting down", flush=True)
        finally:
            await runner.cleanup()
    finally:
        await deployer.close()
        if haproxy:
            await haproxy.stop()
    print("deploybot stopped", flush=True)


DATABASE_FILE = "deploybot.db"
"""The database in the data directory (bot.assembly opens the same file)."""


async def _check_database(config: EngineConfig, data_dir: Path, *, init: bool) -> None:
    """Open and close the store before anything else starts, so a damaged, unreadable or empty (without ``--init``)
    SQLite file, or a PostgreSQL server out of reach, stops ``serve`` with the store's one line instead of a traceback
    later. With ``store.url`` no SQLite file is opened or made."""
    from bot.assembly import open_store

    path = data_dir / DATABASE_FILE
    empty = config.store is None and path.is_file() and path.stat().st_size == 0
    store = await open_store(config, data_dir, init=init)
    await store.close()
    if empty:
        print(f"initialized an empty database in {path} (--init)", flush=True)


def stored_agent_token(config: EngineConfig, name: str) -> str | None:
    """The agent token of host ``name`` in the database of ``store.url`` (replicas keep them there, not in a data
    directory's agent-tokens.json), or None when it has none: for ``deploybot agent-token NAME``."""
    import asyncio

    from bot.assembly import open_store

    async def read() -> str | None:
        store = await open_store(config, Path(config.server.data_dir))
        try:
            row = await store.agent_token_of(name)
        finally:
            await store.close()
        return None if row is None else str(row["token"])

    return asyncio.run(read())


def _tls_line(tls: TlsSettings) -> str:
    if tls.ca:
        return f"TLS: certificate {tls.cert}; agents and the CLI elsewhere need --ca-file {tls.ca}"
    return f"TLS: certificate {tls.cert} (agents and the CLI verify it against the system CAs)"


def _tls_for(config: EngineConfig) -> ssl.SSLContext | None:
    """The server's SSLContext when ``server.tls`` is set, checked as the module docstring says; TlsFileError."""
    tls = config.server.tls
    if tls is None:
        return None
    context = server_tls_context(tls)
    local = _local_host(config.server.listen_host) if config.local_hosts() else None
    if local is not None or tls.ca is not None:
        check_local_trust(context, tls, local)
    return context


def _serve_command(args: argparse.Namespace) -> int:
    import asyncio

    from bot.assembly import DataDirInUse, lock_data_dir
    from bot.event_loop import event_loop
    from bot.event_loop import run as run_on
    from bot.settings import Settings, ensure_api_token_file
    from engine.core.config.parse import load_config
    from engine.core.errors import ConfigError, EngineError

    config_path = Path(args.config) if args.config else default_config_path(Path.cwd())
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot read {config_path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if args.port is not None:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, listen_port=args.port))
    if args.data_dir is not None:  # replicas: one config, one database, a data directory (and lock) each
        data_dir = str(Path(args.data_dir).absolute())
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, data_dir=data_dir))
    if (chosen_log_format := _configure_logging(args)) is None:
        return 2
    try:
        loop = event_loop(args.event_loop, os.environ)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        tls = _tls_for(config)
    except TlsFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    settings = Settings.from_env(os.environ, data_dir=Path(config.server.data_dir))
    try:
        lock = lock_data_dir(settings.data_dir)  # first: nothing may touch a data dir another server is using
    except DataDirInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot use the data directory {settings.data_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        if ensure_api_token_file(settings.api_token_file):
            print(f"created API token {settings.api_token_file}", flush=True)
        try:
            asyncio.run(_check_database(config, settings.data_dir, init=args.init))
            run_on(_serve(config, settings, config_path, tls, log_format=chosen_log_format), loop)
        except (EngineError, ValueError) as exc:  # HAProxy missing or its port taken; a malformed setting
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            address = f"{config.server.listen_host}:{config.server.listen_port}"
            print(f"error: cannot listen on {address}: {exc.strerror or exc} (try --port)", file=sys.stderr)
            return 1
    finally:
        os.close(lock)  # the data directory is free again (the kernel drops the lock at any exit anyway)
    return 0


def _configure_logging(args: argparse.Namespace) -> str | None:
    """Logs to stderr as ``--log-format`` or $DEPLOYBOT_LOG_FORMAT says (bot/logs.py), with the engine's fields on
    JSON lines; the format chosen, or None (said on stderr) for an unknown one."""
    from bot.logs import configure, log_format
    from engine.core import log_context

    try:
        chosen = log_format(args.log_format, os.environ)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    configure(chosen, sources=[log_context.current])
    return chosen


def _log_format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log lines on stderr: text, or one JSON object a line (default: $DEPLOYBOT_LOG_FORMAT, else text)",
    )


def _agent_token(args: argparse.Namespace) -> str:
    """The token from ``--token-file``, else $DEPLOYBOT_AGENT_TOKEN (dropped from the environment once read, so no
    child inherits it); ValueError saying what to give. A token on the command line is refused: ``ps`` shows it."""
    from engine.agent import TOKEN_VARIABLE, read_token_file

    if args.token is not None:
        raise ValueError(
            f"--token is not accepted (any user can read a command line with ps): "
            f"use --token-file PATH or set {TOKEN_VARIABLE}"
        )
    token = os.environ.pop(TOKEN_VARIABLE, "").strip()
    if args.token_file:
        return read_token_file(Path(args.token_file))
    if not token:
        raise ValueError(f"no agent token: give --token-file PATH or set {TOKEN_VARIABLE}")
    return token


def _agent_command(args: argparse.Namespace) -> int:
    import asyncio

    from engine.agent import AgentOptions, run_agent
    from engine.agent.client import ServerNotTrusted, tls_context
    from engine.core import log_context

    if not args.server or not args.name:
        print("error: deploybot agent needs --server URL and --name NAME", file=sys.stderr)
        return 2
    if _configure_logging(args) is None:
        return 2
    try:
        token = _agent_token(args)
        if args.ca_file:
            tls_context(Path(args.ca_file))  # an unusable CA file is a usage error, said before anything starts
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options: dict[str, Any] = {
        "server": args.server,
        "name": args.name,
        "token": token,
        "token_file": Path(args.token_file) if args.token_file else None,
        "tags": dict(args.tag),
        "env": dict(args.env),
    }
    if args.root:
        options["root"] = Path(args.root)
    if args.prefix:
        options["prefix"] = Path(args.prefix)
    if args.ca_file:
        options["ca_file"] = Path(args.ca_file)
    try:
        with log_context.bind(host=args.name):  # every line of this agent names its host
            asyncio.run(run_agent(AgentOptions(**options)))
    except ServerNotTrusted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser("serve", help="run the server (HTTP API, agent protocol, engine, local fleet)")
    serve.add_argument("--config", metavar="FILE", help=f"config file (default: {EXAMPLE_CONFIG} of the checkout)")
    serve.add_argument("--port", type=int, metavar="N", help="listen on this port (0: any free one)")
    serve.add_argument(
        "--data-dir",
        metavar="DIR",
        help="this server's data directory instead of server.data_dir (each replica on one store.url has its own)",
    )
    serve.add_argument(
        "--init",
        action="store_true",
        help="start on a zero-byte database file as an empty database (refused without it: it may be a lost one)",
    )
    _log_format_option(serve)
    serve.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        help="the server's event loop (default: $DEPLOYBOT_EVENT_LOOP, else uvloop; asyncio is Python's own)",
    )
    serve.set_defaults(func=_serve_command)

    agent = subparsers.add_parser("agent", help="run a host agent (long-polls the server for lifecycle events)")
    agent.add_argument("--server", metavar="URL", help="the deploybot server (required)")
    agent.add_argument("--name", help="this host's name in the config (required)")
    agent.add_argument("--token-file", metavar="PATH", help="file holding this host's agent token (mode 0600)")
    agent.add_argument("--token", help=argparse.SUPPRESS)  # refused with a message saying what to use instead
    agent.add_argument("--root", metavar="DIR", help="the agent's working directory (deployments, logs)")
    agent.add_argument("--prefix", metavar="DIR", help="place absolute appspec destinations under DIR")
    agent.add_argument(
        "--ca-file",
        metavar="PATH",
        help="PEM file of the CA that signed an https:// server's certificate (default: the system CAs)",
    )
    agent.add_argument(
        "--tag", type=_key_value, action="append", default=[], metavar="K=V", help="a host tag (repeatable)"
    )
    agent.add_argument(
        "--env", type=_key_value, action="append", default=[], metavar="K=V", help="hook environment (repeatable)"
    )
    _log_format_option(agent)
    agent.set_defaults(func=_agent_command)
    from bot.cli import agent_service  # `deploybot agent install` / `uninstall`: the agent as a systemd service

    agent_service.register(agent)
