"""The server's event loop (bot/event_loop.py): uvloop unless the operator asks for Python's own, and a whole
deployment works on either, through a real ``deploybot serve`` and its local agent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import DeploybotServer, write_revision

from bot.event_loop import event_loop

CONFIG = """server: {data_dir: var, revision_roots: [.]}
hosts:
  - {name: loop-1, local: true}
applications:
  app:
    platform: server
    environments: [prod]
    deployment_groups:
      prod:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {hosts: [loop-1]}
"""


def test_the_loop_comes_from_the_option_then_the_environment_then_is_uvloop() -> None:
    assert event_loop(None, {}) == "uvloop"
    assert event_loop(None, {"DEPLOYBOT_EVENT_LOOP": " asyncio "}) == "asyncio"
    assert event_loop("uvloop", {"DEPLOYBOT_EVENT_LOOP": "asyncio"}) == "uvloop"
    with pytest.raises(ValueError, match="DEPLOYBOT_EVENT_LOOP='trio' is not an event loop: use uvloop or asyncio"):
        event_loop(None, {"DEPLOYBOT_EVENT_LOOP": "trio"})


def test_an_unknown_event_loop_is_a_usage_error_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "deploybot.yml").write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYBOT_")} | {"DEPLOYBOT_EVENT_LOOP": "trio"}
    argv = [sys.executable, "-m", "bot", "serve", "--config", "deploybot.yml", "--port", "0"]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "error: DEPLOYBOT_EVENT_LOOP='trio' is not an event loop: use uvloop or asyncio" in done.stderr
    assert not (tmp_path / "var").exists()  # refused before the data directory was made


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_deployment_runs_to_the_end_on_either_loop(tmp_path: Path, loop: str) -> None:
    server = DeploybotServer(tmp_path, CONFIG)
    try:
        server.start(env={"DEPLOYBOT_EVENT_LOOP": loop} if loop == "asyncio" else {})
        assert f"  event loop: {loop}\n" in server.output  # the loop the server runs on, as it says
        assert server.process is not None
        libraries = Path(f"/proc/{server.process.pid}/maps").read_text()
        assert ("/uvloop/loop." in libraries) == (loop == "uvloop")
        revision = write_revision(
            tmp_path, "loop-rev", {"ValidateService": 'test -f "$DEPLOYBOT_PREFIX/opt/e2e/VERSION"'}
        )
        done = server.wait_final(server.deploy("app", "prod", revision)["id"])
        assert done["status"] == "Succeeded", done
        (target,) = done["targets"]
        assert [event["status"] for event in target["events"]] == ["Succeeded"] * len(target["events"])
    finally:
        server.cleanup()
    assert server.process.returncode == 0  # stopped on SIGTERM, cleanly, on either loop
