"""``deploybot agent install`` and ``deploybot agent uninstall``: the host agent as a systemd service.

``install`` writes ``deploybot-agent.service`` (default in /etc/systemd/system): it starts at boot once the network
is up, restarts 5 s after a crash, and runs ``deploybot agent`` — this installation's own ``deploybot`` script (else
this interpreter with ``-m bot``), by absolute path — with the server, host name and root given here.

The token stays in its file. The unit names the file (``--token-file``), never the token: a command line is
visible to every user (``ps``), and a unit's ``Environment=`` to anyone who can run ``systemctl show``. The agent
reads the file itself, as root, and reads it again after a 401, so a token rotated on the server and written to the
file is picked up without a restart. (systemd's ``LoadCredential=`` would copy the file once at start, which loses
that, and needs systemd 247 or later; Amazon Linux 2 has 219.) ``install`` refuses a missing or empty token file
and one that other users may read or write, saying the ``chmod`` that fixes it.

Hooks run as root (they install files anywhere, restart services, add users), so the unit does not sandbox the
agent: ``ProtectSystem=strict`` or a private /tmp would break ordinary deployments, and seccomp filters would be
inherited by the applications hooks start. What protects the host is the token file's mode, the unit holding no
secret, the agent's state directory (0700), and ``KillMode=process``: stopping the agent stops only the agent (it
ends the hook it is running and reports it), never the applications its hooks started.

``install`` does not run ``systemctl`` unless ``--enable`` is given, and then only where systemd is running (the
check ``sd_booted`` makes: /run/systemd/system exists); otherwise it prints the commands to run.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

UNIT_NAME = "deploybot-agent.service"
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
STATE_DIRECTORY = "deploybot-agent"
DEFAULT_ROOT = Path("/var/lib") / STATE_DIRECTORY
"""The agent's working directory when ``--root`` is not given: systemd creates it (0700) as its StateDirectory."""
RESTART_SECONDS = 5
USAGE_EXIT_STATUS = 2
"""``deploybot agent`` exits 2 on a usage error (a bad option, an unreadable token file): restarting cannot fix it."""

_BARE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


class ServiceProblem(ValueError):
    """Why the service cannot be installed as asked; the message says what to do."""


@dataclass(frozen=True, slots=True)
class AgentService:
    """What the unit runs: ``deploybot agent`` with these options, as ``user`` (None: root)."""

    program: tuple[str, ...]
    server: str
    name: str
    token_file: Path
    root: Path | None = None
    user: str | None = None
    ca_file: Path | None = None
    tags: tuple[tuple[str, str], ...] = ()
    log_format: str | None = None
    version: str = field(default="", compare=False)

    def argv(self) -> list[str]:
        """The agent's command line (the token file's path, never the token)."""
        argv = [*self.program, "agent", "--server", self.server, "--name", self.name]
        argv += ["--token-file", str(self.token_file), "--root", str(self.root or DEFAULT_ROOT)]
        if self.ca_file is not None:
            argv += ["--ca-file", str(self.ca_file)]
        for key, value in self.tags:
            argv += ["--tag", f"{key}={value}"]
        if self.log_format:
            argv += ["--log-format", self.log_format]
        return argv

    def unit(self) -> str:
        """The unit file's text."""
        lines = [
            f"# Written by `deploybot agent install`{f' (deploybot {self.version})' if self.version else ''}.",
            "# Run it again to change the options; `deploybot agent uninstall` removes this file.",
            "[Unit]",
            f"Description=deploybot agent for host {self.name.replace('%', '%%')}",
            "After=network-online.target",
            "Wants=network-online.target",
            "",
            "[Service]",
            "Type=simple",
            f"ExecStart={exec_line(self.argv())}",
            "Restart=on-failure",
            f"RestartSec={RESTART_SECONDS}",
            f"RestartPreventExitStatus={USAGE_EXIT_STATUS}",
            "# SIGTERM goes to the agent alone: it ends the hook it is running and reports it. What the hooks started",
            "# (the applications) keeps running across an agent restart.",
            "KillMode=process",
            "TimeoutStopSec=60",
            "SyslogIdentifier=deploybot-agent",
        ]
        if self.user:
            lines.append(f"User={self.user}")
        if self.root is None:
            lines += [f"StateDirectory={STATE_DIRECTORY}", "StateDirectoryMode=0700"]
        lines += [
            "# Hooks run as root and may change anything on the host, so the agent is not sandboxed further",
            "# (see `deploybot agent install --help`); the token stays in its 0600 file, never in this unit.",
            "LockPersonality=yes",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
        return "\n".join(lines)


def _escaped(text: str) -> str:
    """``text`` where systemd expands specifiers (``%``) and variables (``$``): taken literally."""
    return text.replace("%", "%%").replace("$", "$$")


def exec_line(argv: list[str]) -> str:
    """``argv`` as an ExecStart= value: each argument taken literally (quoted when it holds anything but plain
    characters; ``%`` and ``$`` doubled so systemd expands nothing)."""
    words = []
    for arg in argv:
        word = arg if _BARE.fullmatch(arg) else '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
        words.append(_escaped(word))
    return " ".join(words)


def deploybot_program() -> tuple[str, ...]:
    """How the unit runs deploybot: the ``deploybot`` script installed next to this interpreter (a virtualenv's or
    pipx's bin/), else this interpreter with ``-m bot``. Absolute either way: systemd has no PATH of ours."""
    interpreter = Path(sys.executable).absolute()  # not resolved: a virtualenv's python is a symlink out of it
    script = interpreter.parent / "deploybot"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (str(interpreter), "-m", "bot")


def check_token_file(path: Path, *, user: str | None = None) -> None:
    """ServiceProblem unless ``path`` is a non-empty regular file only its owner may read or write (and, for a
    service running as ``user``, owned by that user)."""
    try:
        status = path.stat()
    except FileNotFoundError:
        raise ServiceProblem(
            f"the token file {path} does not exist: on the server, `deploybot agent-token NAME` prints the host's "
            f"token; write it to {path} and `chmod 600 {path}`"
        ) from None
    except OSError as exc:
        raise ServiceProblem(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise ServiceProblem(f"the token file {path} is not a regular file")
    if status.st_mode & 0o077:
        raise ServiceProblem(
            f"the token file {path} can be read or written by other users (mode {status.st_mode & 0o777:o}): "
            f"run `chmod 600 {path}`, then install again"
        )
    if status.st_size == 0:
        raise ServiceProblem(f"the token file {path} is empty: write the host's agent token to it")
    if user is not None:
        import pwd

        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            raise ServiceProblem(f"--user {user}: there is no such user on this machine") from None
        if status.st_uid != uid:
            raise ServiceProblem(
                f"the service runs as {user} but the token file {path} belongs to uid {status.st_uid}, and only its "
                f"owner may read it: run `chown {user} {path}`"
            )


def _check_value(option: str, value: str) -> None:
    if not value or any(ord(char) < 32 or char == "\x7f" for char in value):
        raise ServiceProblem(f"{option} {value!r}: empty or holding control characters (a line break ends a unit line)")


def service_from(args: argparse.Namespace) -> AgentService:
    """The service ``install`` was asked for, its files checked; ServiceProblem saying what is wrong."""
    _check_value("--server", args.server)
    _check_value("--name", args.name)
    if not args.server.lower().startswith(("http://", "https://")):
        raise ServiceProblem(f"--server {args.server}: give the server's URL (http://HOST:PORT or https://...)")
    token_file = Path(args.token_file).absolute()
    check_token_file(token_file, user=args.user)
    root = Path(args.root).absolute() if args.root else None
    ca_file = Path(args.ca_file).absolute() if args.ca_file else None
    if ca_file is not None and not ca_file.is_file():
        raise ServiceProblem(f"--ca-file {ca_file}: no such file")
    for path in (token_file, root, ca_file):
        if path is not None:
            _check_value("a path", str(path))
    tags = tuple(args.tag)
    for key, value in tags:
        _check_value("--tag", f"{key}={value}")
    if args.user is not None:
        _check_value("--user", args.user)
    return AgentService(
        program=deploybot_program(),
        server=args.server,
        name=args.name,
        token_file=token_file,
        root=root,
        user=args.user,
        ca_file=ca_file,
        tags=tags,
        log_format=args.log_format,
        version=_version(),
    )


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("deploybot")
    except metadata.PackageNotFoundError:
        return ""


def systemd_running() -> bool:
    """Whether this machine was booted with systemd (what ``sd_booted()`` checks): ``systemctl`` can work."""
    return Path("/run/systemd/system").is_dir()


def _write_atomically(path: Path, text: str) -> None:
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(scratch, 0o644)
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise


def _systemctl(*argv: str) -> bool:
    """Run ``systemctl ARGV``; False (its output already on the terminal) when it fails."""
    print(f"$ systemctl {' '.join(argv)}", flush=True)
    try:
        return subprocess.run(["systemctl", *argv], check=False).returncode == 0
    except OSError as exc:
        print(f"error: cannot run systemctl: {exc.strerror or exc}", file=sys.stderr)
        return False


def _install(args: argparse.Namespace) -> int:
    try:
        service = service_from(args)
    except ServiceProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    unit_dir = Path(args.unit_dir)
    path = unit_dir / UNIT_NAME
    existed = path.exists()
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, service.unit())
    except OSError as exc:
        hint = " (run it as root)" if isinstance(exc, PermissionError) else ""
        print(f"error: cannot write {path}: {exc.strerror or exc}{hint}", file=sys.stderr)
        return 1
    print(f"{'updated' if existed else 'wrote'} {path}: deploybot agent {service.name} -> {service.server}")
    print(f"  runs: {shlex.join(service.argv())}")
    if not args.enable:
        print("next: systemctl daemon-reload && systemctl enable --now deploybot-agent")
        print("      then `journalctl -u deploybot-agent -f` shows its log, `deploybot hosts` shows it online")
        return 0
    if not systemd_running():
        print(
            "error: --enable: systemd is not running on this machine (it is not PID 1), so the service cannot be "
            "enabled here; the unit is written: on a machine booted with systemd, run "
            "`systemctl daemon-reload && systemctl enable --now deploybot-agent`",
            file=sys.stderr,
        )
        return 1
    if not (_systemctl("daemon-reload") and _systemctl("enable", "--now", UNIT_NAME)):
        return 1
    print("deploybot-agent is enabled and started: `systemctl status deploybot-agent` shows it")
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    unit_dir = Path(args.unit_dir)
    path = unit_dir / UNIT_NAME
    wanted = unit_dir / "multi-user.target.wants" / UNIT_NAME  # what `systemctl enable` linked
    if not path.exists() and not wanted.is_symlink():
        print(f"no {UNIT_NAME} in {unit_dir}: nothing to remove")
        return 0
    if args.stop and systemd_running():
        _systemctl("disable", "--now", UNIT_NAME)
    try:
        path.unlink(missing_ok=True)
        if wanted.is_symlink():
            wanted.unlink()
    except OSError as exc:
        hint = " (run it as root)" if isinstance(exc, PermissionError) else ""
        print(f"error: cannot remove {path}: {exc.strerror or exc}{hint}", file=sys.stderr)
        return 1
    print(f"removed {path}")
    if args.stop and systemd_running():
        return 0 if _systemctl("daemon-reload") else 1
    print("next: systemctl stop deploybot-agent; systemctl daemon-reload")
    print(f"      (the agent's state in {DEFAULT_ROOT} or its --root is left in place)")
    return 0


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected K=V, got {text!r}")
    return key, value


def register(agent: argparse.ArgumentParser) -> None:
    """``install`` and ``uninstall`` under ``deploybot agent`` (which alone still runs the agent)."""
    actions = agent.add_subparsers(dest="agent_action", metavar="{install,uninstall}")
    install = actions.add_parser(
        "install",
        help="write a systemd unit that runs this agent at boot and restarts it on failure",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    install.add_argument("--server", required=True, metavar="URL", help="the deploybot server")
    install.add_argument("--name", required=True, help="this host's name in the server's config")
    install.add_argument(
        "--token-file", required=True, metavar="PATH", help="file holding this host's agent token (mode 0600)"
    )
    install.add_argument("--root", metavar="DIR", help=f"the agent's working directory (default: {DEFAULT_ROOT})")
    install.add_argument("--user", help="run the agent as USER (default: root; hooks then run as USER too)")
    install.add_argument("--ca-file", metavar="PATH", help="PEM file of the CA of an https:// server's certificate")
    install.add_argument(
        "--tag", type=_key_value, action="append", default=[], metavar="K=V", help="a host tag (repeatable)"
    )
    install.add_argument("--log-format", choices=("text", "json"), help="the agent's log format (default: text)")
    install.add_argument(
        "--unit-dir",
        default=str(DEFAULT_UNIT_DIR),
        metavar="DIR",
        help=f"where to write it (default: {DEFAULT_UNIT_DIR})",
    )
    install.add_argument(
        "--enable", action="store_true", help="then run systemctl daemon-reload and enable --now (needs systemd)"
    )
    install.set_defaults(func=_install)

    uninstall = actions.add_parser("uninstall", help="remove the systemd unit `install` wrote")
    uninstall.add_argument(
        "--unit-dir", default=str(DEFAULT_UNIT_DIR), metavar="DIR", help=f"where it is (default: {DEFAULT_UNIT_DIR})"
    )
    uninstall.add_argument("--stop", action="store_true", help="first run systemctl disable --now (needs systemd)")
    uninstall.set_defaults(func=_uninstall)
