"""The hook runner with real scripts: order, environment, error codes 1-6, process groups, output capture limits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HANG_GUARD, eventually

from engine.agent.executor import hook_environment
from engine.agent.hooks import HookGroup, HookOutcome, HookRunner
from engine.agent.output import ScriptLog, TailBuffer
from engine.core.agent_protocol import DeploymentSpec, RevisionRef
from engine.core.appspec import HookScript
from engine.core.model import LifecycleEvent, ScriptErrorCode

EVENT = LifecycleEvent.AFTER_INSTALL


def is_running(pid: int) -> bool:
    """Alive and not a zombie (orphans may never be reaped inside a container)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def wait_gone(pid: int, seconds: float = HANG_GUARD) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not is_running(pid):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def archive() -> Iterator[Path]:
    """World-readable, so scripts can also run as another user."""
    root = Path(tempfile.mkdtemp(prefix="hooks-"))
    os.chmod(root, 0o755)
    (root / "scripts").mkdir(mode=0o755)
    (root / "out").mkdir()
    os.chmod(root / "out", 0o777)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[ScriptLog]:
    with ScriptLog(tmp_path / "logs" / "scripts.log") as script_log:
        yield script_log


def script(archive: Path, name: str, body: str, *, executable: bool = True) -> str:
    path = archive / "scripts" / name
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, 0o755 if executable else 0o644)
    return f"scripts/{name}"


def spec(commit: str | None = "abc123") -> DeploymentSpec:
    return DeploymentSpec(
        deployment_id="arn:aws:codedeploy:us-east-1:1:deployment/d-ABCDEF123",
        application_name="hello",
        deployment_group_name="hello-staging",
        deployment_group_id="hello-staging-id",
        revision=RevisionRef(sha256="0" * 64, url="/agent/v1/bundles/x", commit=commit),
    )


def env_for(archive: Path) -> dict[str, str]:
    return hook_environment(spec(), EVENT, host="web-1", prefix=archive, extra={"COLOR": "blue"}) | {
        "OUT": str(archive / "out")
    }


async def run(archive: Path, log: ScriptLog, *scripts: HookScript, runner: HookRunner | None = None) -> HookOutcome:
    runner = runner or HookRunner(kill_grace=0.5, output_grace=0.5)
    return await runner.run_event(EVENT, scripts, archive_dir=archive, env=env_for(archive), log=log)


def test_environment_has_codedeploy_and_deploybot_variables_and_only_the_agents_basics(tmp_path: Path) -> None:
    base = {
        "PATH": "/bin",
        "TZ": "UTC",
        "LIFECYCLE_EVENT": "stale",
        "BUNDLE_COMMIT": "stale",
        # the agent's own environment beyond the basics: never a hook's
        "DEPLOYBOT_AGENT_TOKEN": "agent-secret",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "SSH_AUTH_SOCK": "/tmp/agent.sock",
    }
    extra = {"DEPLOYMENT_ID": "x", "DEPLOYBOT_AGENT_TOKEN": "agent-secret"}  # not even through --env
    env = hook_environment(spec(), EVENT, host="web-1", prefix=tmp_path, extra=extra, base=base)
    assert env == {
        "PATH": "/bin",
        "TZ": "UTC",
        "LIFECYCLE_EVENT": "AfterInstall",
        "DEPLOYMENT_ID": "d-ABCDEF123",  # the part after "deployment/" of an ARN; --env cannot override it
        "APPLICATION_NAME": "hello",
        "DEPLOYMENT_GROUP_NAME": "hello-staging",
        "DEPLOYMENT_GROUP_ID": "hello-staging-id",
        "BUNDLE_COMMIT": "abc123",
        "DEPLOYBOT_HOST": "web-1",
        "DEPLOYBOT_PREFIX": str(tmp_path),
    }
    plain = hook_environment(spec(commit=None), EVENT, host="h", prefix=None, extra={"COLOR": "red"}, base=base)
    assert "BUNDLE_COMMIT" not in plain and plain["DEPLOYBOT_PREFIX"] == "" and plain["COLOR"] == "red"


async def test_scripts_run_in_order_with_env_closed_stdin_and_own_session(archive: Path, log: ScriptLog) -> None:
    first = script(
        archive,
        "first.sh",
        'echo "first $LIFECYCLE_EVENT $DEPLOYMENT_ID $APPLICATION_NAME $DEPLOYBOT_HOST $COLOR" >> "$OUT/order"\n'
        'if read -r line; then echo "stdin: $line" >> "$OUT/order"; else echo "stdin closed" >> "$OUT/order"; fi\n'
        'echo "$$ $(cut -d" " -f6 /proc/$$/stat)" > "$OUT/session"\n'
        "echo hello from first\n",
    )
    second = script(archive, "second.sh", 'echo second >> "$OUT/order"\necho to stderr >&2\n')
    outcome = await run(archive, log, HookScript(first), HookScript(second))

    assert outcome.code is ScriptErrorCode.SUCCEEDED, outcome.message
    assert (archive / "out" / "order").read_text().splitlines() == [
        "first AfterInstall d-ABCDEF123 hello web-1 blue",
        "stdin closed",
        "second",
    ]
    pid, session = (archive / "out" / "session").read_text().split()
    assert pid == session  # the script leads its own session, hence its own process group
    assert "hello from first" in outcome.log_tail and "to stderr" in outcome.log_tail
    text = log.path.read_text()
    assert "LifecycleEvent - AfterInstall" in text
    assert "Script - scripts/first.sh" in text and "Script - scripts/second.sh" in text
    assert "[stdout]hello from first" in text and "[stdout]to stderr" in text


async def test_failing_script_is_code_4_and_stops_the_event(archive: Path, log: ScriptLog) -> None:
    failing = script(archive, "fail.sh", "echo about to fail\nexit 3\n")
    after = script(archive, "after.sh", 'touch "$OUT/after-ran"\n')
    outcome = await run(archive, log, HookScript(failing), HookScript(after))
    assert outcome.code is ScriptErrorCode.SCRIPT_FAILED
    assert outcome.message == "Script at specified location: scripts/fail.sh failed with exit code 3"
    assert "about to fail" in outcome.log_tail
    assert not (archive / "out" / "after-ran").exists()


async def test_missing_script_is_code_1_with_the_absolute_path(archive: Path, log: ScriptLog) -> None:
    outcome = await run(archive, log, HookScript("scripts/nope.sh"))
    assert outcome.code is ScriptErrorCode.SCRIPT_MISSING
    assert outcome.message == f"Script does not exist at specified location: {archive / 'scripts' / 'nope.sh'}"


@pytest.mark.parametrize("location", ["../../victim.sh", "/../../victim.sh", "scripts/link.sh"])
async def test_a_location_that_resolves_outside_the_revision_is_code_5_and_touches_nothing(
    tmp_path: Path, log: ScriptLog, location: str
) -> None:
    # The runner's own check, with the AppSpec validator bypassed: the script is named directly, or through a link
    # the bundle extraction would have refused.
    archive = tmp_path / "deployment" / "group" / "archive"
    (archive / "scripts").mkdir(parents=True)
    victim = tmp_path / "deployment" / "victim.sh"
    ran = tmp_path / "ran"
    victim.write_text(f"#!/bin/sh\ntouch {ran}\n")
    victim.chmod(0o644)
    (archive / "scripts" / "link.sh").symlink_to(victim)
    outcome = await HookRunner().run_event(EVENT, [HookScript(location)], archive_dir=archive, env={}, log=log)
    assert outcome.code is ScriptErrorCode.UNKNOWN_ERROR
    assert f"resolves to {victim}, outside the revision ({archive})" in outcome.message
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644  # never made executable
    assert victim.read_text() == f"#!/bin/sh\ntouch {ran}\n" and not ran.exists()  # never run


async def test_non_executable_script_is_made_executable(archive: Path, log: ScriptLog) -> None:
    location = script(archive, "plain.sh", "echo ran\n", executable=False)
    outcome = await run(archive, log, HookScript(location))
    assert outcome.succeeded and "ran" in outcome.log_tail
    assert stat.S_IMODE((archive / location).stat().st_mode) == 0o755


async def test_unrunnable_file_is_code_4_with_the_error(archive: Path, log: ScriptLog) -> None:
    (archive / "scripts" / "garbage.bin").write_bytes(b"\x00\x01\x02 not a program")
    outcome = await run(archive, log, HookScript("scripts/garbage.bin"))
    assert outcome.code is ScriptErrorCode.SCRIPT_FAILED
    assert outcome.message.startswith(
        "Script at specified location: scripts/garbage.bin failed with error OSError with message"
    )


async def test_timeout_kills_the_whole_process_group(archive: Path, log: ScriptLog) -> None:
    # The script and its child sleep an hour: the run ends within the hang guard only if the timeout killed them.
    location = script(archive, "hang.sh", 'sleep 3600 > /dev/null 2>&1 &\necho $! > "$OUT/child"\nsleep 3600\n')
    async with asyncio.timeout(HANG_GUARD):
        outcome = await run(archive, log, HookScript(location, timeout=1))

    assert outcome.code is ScriptErrorCode.SCRIPT_TIMED_OUT
    assert outcome.message == "Script at specified location: scripts/hang.sh failed to complete in 1 seconds"
    child = int((archive / "out" / "child").read_text())
    assert wait_gone(child), "the background child survived the timeout"


async def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(archive: Path, log: ScriptLog) -> None:
    location = script(archive, "stubborn.sh", "trap '' TERM\necho $$ > \"$OUT/pid\"\nwhile :; do sleep 0.1; done\n")
    started = time.monotonic()
    async with asyncio.timeout(HANG_GUARD):  # the script loops for ever: only SIGKILL ends it
        outcome = await run(archive, log, HookScript(location, timeout=1))
    assert outcome.code is ScriptErrorCode.SCRIPT_TIMED_OUT
    assert time.monotonic() - started >= 1.4  # deadline + kill grace (0.5 s): a lower bound, which load cannot fail
    assert wait_gone(int((archive / "out" / "pid").read_text()))


async def test_background_child_holding_stdout_is_code_6(archive: Path, log: ScriptLog) -> None:
    # The child holds stdout for an hour, and the deadline is an hour: only the output grace ends the run this soon.
    location = script(archive, "leak.sh", 'sleep 3600 &\necho $! > "$OUT/child"\necho started\n')
    async with asyncio.timeout(HANG_GUARD):
        outcome = await run(archive, log, HookScript(location, timeout=3600))
    assert outcome.code is ScriptErrorCode.OUTPUTS_LEFT_OPEN
    assert outcome.message == "Script at specified location: scripts/leak.sh failed to close STDOUT"
    assert wait_gone(int((archive / "out" / "child").read_text()))


async def test_background_child_with_redirected_output_is_left_running(archive: Path, log: ScriptLog) -> None:
    location = script(archive, "daemon.sh", 'sleep 30 > /dev/null 2>&1 < /dev/null &\necho $! > "$OUT/child"\n')
    outcome = await run(archive, log, HookScript(location))
    child = int((archive / "out" / "child").read_text())
    try:
        assert outcome.succeeded, outcome.message
        assert is_running(child)  # how hooks start servers: CodeDeploy leaves them alone
    finally:
        os.kill(child, signal.SIGKILL)


async def test_flood_of_output_keeps_memory_and_log_bounded(archive: Path, tmp_path: Path) -> None:
    location = script(archive, "flood.sh", "yes 'flooding the agent with output' | head -c 100000000\necho done\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with ScriptLog(tmp_path / "flood.log", cap=10 * 1024 * 1024) as flood_log:
        outcome = await run(archive, flood_log, HookScript(location, timeout=60))  # its deadline: the only time limit
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024

    assert outcome.succeeded, outcome.message
    assert growth_mb < 50, f"peak RSS grew by {growth_mb:.0f} MB"
    assert len(outcome.log_tail.encode()) <= 4096 and outcome.log_tail.endswith("done\n")
    size = (tmp_path / "flood.log").stat().st_size
    assert 10 * 1024 * 1024 <= size < 10 * 1024 * 1024 + 4096
    last_line = (tmp_path / "flood.log").read_text().splitlines()[-1]
    assert "log cap of 10485760 bytes reached" in last_line
    dropped = int(last_line.split(": ")[1].split()[0])
    assert 85_000_000 < dropped < 100_000_000


def test_tail_buffer_stays_bounded() -> None:
    tail = TailBuffer(16)
    for chunk in (b"a" * 10, b"b" * 10, b"c" * 100, b"0123456789", "é".encode() * 3):
        tail.append(chunk)
        assert len(tail) <= 16
    assert tail.text() == "0123456789ééé"
    tail.append(b"ABCDEFGHIJK")  # cuts the first "é" in half: the broken character is dropped
    assert tail.text() == "ééABCDEFGHIJK"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_runas_runs_the_script_as_that_user(archive: Path, log: ScriptLog) -> None:
    location = script(archive, "whoami.sh", 'echo "$(id -un) $HOME" > "$OUT/who"\n')
    outcome = await run(archive, log, HookScript(location, runas="nobody"))
    assert outcome.succeeded, outcome.message
    assert (archive / "out" / "who").read_text().split() == ["nobody", "/nonexistent"]

    failing = script(archive, "fail-as.sh", "exit 7\n")
    outcome = await run(archive, log, HookScript(failing, runas="nobody"))
    assert (
        outcome.message == "Script at specified location: scripts/fail-as.sh run as user nobody failed with exit code 7"
    )

    outcome = await run(archive, log, HookScript(location, runas="no-such-user-xyz"))
    assert outcome.code is ScriptErrorCode.SCRIPT_FAILED and "no such user 'no-such-user-xyz'" in outcome.message


@pytest.mark.skipif(os.geteuid() == 0, reason="only an unprivileged agent refuses runas")
async def test_runas_needs_a_root_agent(archive: Path, log: ScriptLog) -> None:
    location = script(archive, "whoami.sh", "id -un\n")
    outcome = await run(archive, log, HookScript(location, runas="nobody"))
    assert outcome.code is ScriptErrorCode.SCRIPT_FAILED
    assert "runas requires the agent to run as root" in outcome.message


async def test_each_script_tells_its_process_group_while_it_runs(archive: Path, log: ScriptLog) -> None:
    told: list[HookGroup | None] = []

    def tell(group: HookGroup | None) -> None:
        told.append(group)
        (archive / "out" / f"told-{len(told)}").touch()  # each script waits to be told about, so it is

    wait = 'while [ ! -e "$OUT/told-{}" ]; do sleep 0.01; done\n'
    first = script(archive, "first.sh", 'echo $$ > "$OUT/first"\n' + wait.format(1))
    second = script(
        archive, "second.sh", 'echo $$ > "$OUT/second"\nsleep 30 > /dev/null 2>&1 < /dev/null &\n' + wait.format(3)
    )
    scripts = [HookScript(first), HookScript(second)]
    outcome = await HookRunner().run_event(
        EVENT, scripts, archive_dir=archive, env=env_for(archive), log=log, on_group=tell
    )
    assert outcome.succeeded, outcome.message
    pids = [int((archive / "out" / name).read_text()) for name in ("first", "second")]
    assert [group.pgid if group else None for group in told] == [pids[0], None, pids[1], None]
    # the second script's group lives on in its server; "None" told the agent it is no longer a hook to end
    os.killpg(pids[1], signal.SIGKILL)


async def test_an_orphaned_script_is_ended_only_while_it_is_still_that_script(tmp_path: Path) -> None:
    # a script left by a killed agent, which ignores SIGTERM: SIGKILL after the grace ends it, and its child
    ready = tmp_path / "ready"
    orphan = subprocess.Popen(
        ["sh", "-c", f"trap '' TERM; sleep 60 & touch {ready}; while :; do sleep 0.05; done"], start_new_session=True
    )
    try:
        await eventually(ready.exists, "the script ignores SIGTERM")
        group = HookGroup.of(orphan.pid)
        assert group is not None and group.pgid == orphan.pid
        runner = HookRunner(kill_grace=0.2)
        assert not await runner.end_orphan(HookGroup(orphan.pid, group.start_time - 1))  # the pid was reused
        assert orphan.poll() is None
        assert await runner.end_orphan(group)
        assert orphan.wait(HANG_GUARD) == -signal.SIGKILL
        assert not await runner.end_orphan(group)  # gone: nothing to signal, and nothing is
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(orphan.pid, signal.SIGKILL)


def test_an_appspec_is_read_and_parsed_once_per_version_of_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.agent import executor
    from engine.core import appspec

    parsed: list[str] = []
    real = appspec.parse_appspec

    def counted(text: str, **kwargs: object) -> object:
        parsed.append(text)
        return real(text, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(appspec, "parse_appspec", counted)
    path = tmp_path / "appspec.yml"
    path.write_text("version: 0.0\nos: linux\nhooks:\n  BeforeInstall:\n    - location: a.sh\n")
    first = executor._load_appspec(tmp_path, ("appspec.yml",))
    assert executor._load_appspec(tmp_path, ("appspec.yml",)) is first and len(parsed) == 1  # a stat, no read
    (tmp_path / "next").mkdir()  # the next deployment of the revision, extracted anew: read, not parsed again
    shutil.copy(path, tmp_path / "next" / "appspec.yml")
    assert executor._load_appspec(tmp_path / "next", ("appspec.yml",)) is first and len(parsed) == 1

    path.write_text("version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n    - location: scripts/b.sh\n")  # edited
    edited = executor._load_appspec(tmp_path, ("appspec.yml",))
    assert [str(event) for event in edited.hooks] == ["AfterInstall"] and len(parsed) == 2

    path.unlink()
    with pytest.raises(executor._Failed, match="did not find an AppSpec file"):
        executor._load_appspec(tmp_path, ("appspec.yml",))
