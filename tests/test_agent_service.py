"""``deploybot agent install`` / ``uninstall``: the systemd unit it writes, checked by systemd itself
(``systemd-analyze verify``, which needs no running systemd), and its command line run against a real server."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HANG_GUARD, eventually
from e2e_support import DeploybotServer

from bot.cli import main
from bot.cli.agent_service import UNIT_NAME, exec_line

TOKEN = "agent-token-7c1d-do-not-print"
SERVER = "http://127.0.0.1:9"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def install(tmp_path: Path, token_file: Path, *extra: str, name: str = "web-1") -> int:
    argv = ["agent", "install", "--server", SERVER, "--name", name, "--token-file", str(token_file)]
    return main([*argv, "--unit-dir", str(tmp_path / "units"), *extra])


def unit_text(tmp_path: Path) -> str:
    return (tmp_path / "units" / UNIT_NAME).read_text()


def directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit, by key (a key may repeat)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def exec_start_argv(text: str) -> list[str]:
    """ExecStart= as the argv systemd runs: our quoting is the shell's double quotes, with ``%``/``$`` doubled."""
    (line,) = directives(text)["ExecStart"]
    return shlex.split(line.replace("%%", "%").replace("$$", "$"))


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (make system-deps installs Debian's systemd package)")
    return subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    "extra",
    [
        (),
        (
            "--root",
            "agent root",
            "--user",
            pwd.getpwuid(os.getuid()).pw_name,
            "--tag",
            "role=web",
            "--log-format",
            "json",
        ),
    ],
    ids=["defaults", "every-option"],
)
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path, token_file: Path, extra: tuple[str, ...]) -> None:
    assert install(tmp_path, token_file, *extra) == 0
    checked = verify(tmp_path / "units" / UNIT_NAME)
    assert checked.returncode == 0, checked.stderr
    assert UNIT_NAME not in checked.stderr, checked.stderr  # no warning about our unit either (unknown keys, ...)


def test_the_unit_restarts_on_failure_after_the_network_and_starts_at_boot(tmp_path: Path, token_file: Path) -> None:
    assert install(tmp_path, token_file) == 0
    unit = directives(unit_text(tmp_path))
    assert unit["Restart"] == ["on-failure"] and unit["RestartSec"] == ["5"]
    assert unit["RestartPreventExitStatus"] == ["2"]  # a usage error is not cured by restarting
    assert unit["After"] == ["network-online.target"] and unit["Wants"] == ["network-online.target"]
    assert unit["WantedBy"] == ["multi-user.target"]
    assert unit["KillMode"] == ["process"]  # applications the hooks started outlive an agent restart
    assert unit["StateDirectory"] == ["deploybot-agent"] and unit["StateDirectoryMode"] == ["0700"]
    assert "ProtectSystem" not in unit and "PrivateTmp" not in unit  # hooks run as root and write anywhere
    assert "User" not in unit


def test_the_unit_names_the_token_file_and_never_holds_the_token(tmp_path: Path, token_file: Path) -> None:
    assert install(tmp_path, token_file, "--log-format", "json") == 0
    text = unit_text(tmp_path)
    assert TOKEN not in text
    assert "Environment" not in directives(text) and "LoadCredential" not in directives(text)
    argv = exec_start_argv(text)
    assert argv[argv.index("--token-file") + 1] == str(token_file)
    assert argv[1:6] == ["agent", "--server", SERVER, "--name", "web-1"]
    assert Path(argv[0]).is_absolute() and os.access(argv[0], os.X_OK)
    assert argv[argv.index("--root") + 1] == "/var/lib/deploybot-agent"
    assert argv[argv.index("--log-format") + 1] == "json"
    assert (tmp_path / "units" / UNIT_NAME).stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_token_file_other_users_may_read_or_write_is_refused(
    tmp_path: Path, token_file: Path, mode: int, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file.chmod(mode)
    assert install(tmp_path, token_file) == 1
    error = capsys.readouterr().err
    assert f"mode {mode:o}" in error and f"chmod 600 {token_file}" in error
    assert not (tmp_path / "units" / UNIT_NAME).exists()


def test_a_missing_or_empty_token_file_is_refused(
    tmp_path: Path, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert install(tmp_path, token_file.with_name("missing.token")) == 1
    error = capsys.readouterr().err
    assert "does not exist" in error and "deploybot agent-token NAME" in error
    token_file.write_text("")
    assert install(tmp_path, token_file) == 1
    assert "is empty" in capsys.readouterr().err
    assert not (tmp_path / "units").exists()


def test_a_user_the_token_file_does_not_belong_to_is_refused(
    tmp_path: Path, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = "nobody" if os.getuid() != 65534 else "root"
    assert install(tmp_path, token_file, "--user", other) == 1
    assert f"chown {other} {token_file}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option", [("--name", "web-1\nExecStartPre=/bin/evil"), ("--server", "http://x\n[Install]"), ("--server", "x")]
)
def test_values_that_would_break_out_of_their_line_are_refused(
    tmp_path: Path, token_file: Path, option: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["agent", "install", "--server", SERVER, "--name", "web-1", "--token-file", str(token_file)]
    argv[argv.index(option[0]) + 1] = option[1]
    assert main([*argv, "--unit-dir", str(tmp_path / "units")]) == 1
    assert option[0] in capsys.readouterr().err
    assert not (tmp_path / "units" / UNIT_NAME).exists()


def test_odd_characters_in_arguments_reach_the_agent_as_they_were(tmp_path: Path, token_file: Path) -> None:
    odd = ["/opt/my agent", 'say "hi"', "100%", "$HOME", "back\\slash"]
    line = exec_line(["/usr/bin/deploybot", *odd])
    assert shlex.split(line.replace("%%", "%").replace("$$", "$")) == ["/usr/bin/deploybot", *odd]
    assert install(tmp_path, token_file, "--root", str(tmp_path / "100% $HOME dir")) == 0
    checked = verify(tmp_path / "units" / UNIT_NAME)  # systemd reads it back without complaint
    assert checked.returncode == 0, checked.stderr
    argv = exec_start_argv(unit_text(tmp_path))
    assert argv[argv.index("--root") + 1] == str(tmp_path / "100% $HOME dir")


def test_install_prints_the_next_steps_and_runs_no_systemctl(
    tmp_path: Path, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert install(tmp_path, token_file) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'units' / UNIT_NAME}" in out
    assert "systemctl daemon-reload && systemctl enable --now deploybot-agent" in out
    assert "$ systemctl" not in out
    assert install(tmp_path, token_file, name="web-2") == 0  # again: the unit is updated in place
    assert "updated" in capsys.readouterr().out
    assert exec_start_argv(unit_text(tmp_path))[5] == "web-2"


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="systemd runs here: --enable would enable it")
def test_enable_without_systemd_says_why_and_leaves_the_unit_written(
    tmp_path: Path, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert install(tmp_path, token_file, "--enable") == 1
    error = capsys.readouterr().err
    assert "systemd is not running" in error and "systemctl daemon-reload && systemctl enable --now" in error
    assert (tmp_path / "units" / UNIT_NAME).is_file()


def test_uninstall_removes_the_unit_and_its_enable_link(
    tmp_path: Path, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert install(tmp_path, token_file) == 0
    units = tmp_path / "units"
    (units / "multi-user.target.wants").mkdir()
    (units / "multi-user.target.wants" / UNIT_NAME).symlink_to(units / UNIT_NAME)  # as `systemctl enable` links it
    capsys.readouterr()
    assert main(["agent", "uninstall", "--unit-dir", str(units)]) == 0
    out = capsys.readouterr().out
    assert f"removed {units / UNIT_NAME}" in out and "systemctl stop deploybot-agent; systemctl daemon-reload" in out
    assert not (units / UNIT_NAME).exists()
    assert not (units / "multi-user.target.wants" / UNIT_NAME).is_symlink()
    assert token_file.exists()  # the host's token is the operator's to remove
    assert main(["agent", "uninstall", "--unit-dir", str(units)]) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_running_the_agent_still_needs_a_server_and_a_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "--name", "web-1"]) == 2
    assert "needs --server URL and --name NAME" in capsys.readouterr().err


CONFIG = """server: {data_dir: var, heartbeat_timeout: 60}
hosts:
  - {name: svc-1, local: false}
applications:
  app:
    platform: server
    environments: [prod]
    deployment_groups:
      prod:
        targets: {hosts: [svc-1]}
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DeploybotServer]:
    (tmp_path / "server").mkdir()
    started = DeploybotServer(tmp_path / "server", CONFIG)
    try:
        started.start()
        yield started
    finally:
        started.cleanup()


async def test_the_units_command_line_runs_an_agent_a_real_server_sees_online(
    tmp_path: Path, server: DeploybotServer
) -> None:
    issued = re.search(r'"svc-1":\s*"([^"]+)"', (server.data_dir / "agent-tokens.json").read_text())
    assert issued is not None
    token_file = tmp_path / "svc-1.token"
    token_file.write_text(issued.group(1))
    token_file.chmod(0o600)
    argv = ["agent", "install", "--server", server.url, "--name", "svc-1", "--token-file", str(token_file)]
    assert main([*argv, "--root", str(tmp_path / "agent"), "--unit-dir", str(tmp_path / "units")]) == 0
    text = unit_text(tmp_path)
    assert issued.group(1) not in text
    command = exec_start_argv(text)
    # What systemd would run: the command line alone, from /, with none of our environment's secrets.
    environment = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    with (tmp_path / "agent.log").open("ab") as log:
        agent = subprocess.Popen(command, cwd="/", env=environment, stdout=log, stderr=subprocess.STDOUT)
    server.extra_processes.append(agent)

    async def online() -> bool:
        status, hosts = await asyncio.to_thread(server.api, "GET", "/api/v1/hosts")
        return status == 200 and {h["name"]: h["agent"] for h in hosts["hosts"]}.get("svc-1") == "online"

    await eventually(online, "the server sees the service's agent online", poll=0.1)
    assert (tmp_path / "agent").is_dir()  # its --root
    agent.send_signal(signal.SIGTERM)  # what `systemctl stop` sends (KillMode=process: to the agent alone)
    assert await asyncio.to_thread(agent.wait, HANG_GUARD) == 0  # a clean stop: Restart=on-failure leaves it down
    assert issued.group(1) not in (tmp_path / "agent.log").read_text()
