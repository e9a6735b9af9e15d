"""The deploy/status/... commands against a real HTTP server (FakeDeployer behind bot.app) on 127.0.0.1.

The CLI runs its own event loop, so each invocation runs in a worker thread while the server keeps serving on the
test's loop.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from fake_deployer import FakeDeployer
from rich.console import Console

from bot.app import create_app
from bot.cli import deploy_view, main
from bot.client import find_api_token
from bot.settings import Settings

TOKEN = "cli-test-token"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hello"


@dataclass
class Cli:
    url: str
    deployer: FakeDeployer
    capsys: pytest.CaptureFixture[str]

    async def run(self, *argv: str, server: str | None = None) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = await asyncio.to_thread(main, [*argv, "--server", server or self.url])
        out, err = self.capsys.readouterr()
        return code, out, err

    async def json(self, *argv: str) -> Any:
        code, out, err = await self.run(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
async def cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> AsyncIterator[Cli]:
    monkeypatch.setenv("DEPLOYBOT_TOKEN", TOKEN)
    monkeypatch.delenv("DEPLOYBOT_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    deployer = FakeDeployer()
    settings = Settings.from_env({"DEPLOYBOT_TOKEN": TOKEN}, data_dir=tmp_path / "data")
    server = TestServer(create_app(settings, deployer=deployer), host="127.0.0.1")
    await server.start_server()
    yield Cli(str(server.make_url("/")).rstrip("/"), deployer, capsys)
    await deployer.close()
    await server.close()


async def test_deploy_json_starts_a_deployment_as_the_tokens_user(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = await cli.json("deploy", "hello", "--to", "staging", "--config", "CodeDeployDefault.AllAtOnce")
    assert deployment["status"] == "Created"
    request = cli.deployer.calls[-1][1]
    assert (request.application, request.environment, request.revision) == ("hello", "staging", None)
    assert request.config_name == "CodeDeployDefault.AllAtOnce"
    assert request.actor == "deploybot-admin"  # DEPLOYBOT_TOKEN is the server's bootstrap token
    monkeypatch.setenv("DEPLOYBOT_TOKEN", await cli.deployer.token_for("carol"))
    monkeypatch.setenv("LOGNAME", "mallory")  # the OS user says nothing about who asks
    await cli.json("deploy", "hello", "--to", "staging")
    assert cli.deployer.calls[-1][1].actor == "carol"


async def test_deploy_revision_builds_the_bundle_locally_and_uploads_it(cli: Cli) -> None:
    code, out, err = await cli.run("deploy", "hello", "--to", "staging", "--revision", str(EXAMPLE))
    assert code == 0, err
    (_, source, data) = next(call for call in cli.deployer.calls if call[0] == "store_revision")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as bundle:
        names = bundle.getnames()
    assert "appspec.yml" in names
    assert str(EXAMPLE) in source
    sha = next(iter(cli.deployer.revisions))
    assert cli.deployer.calls[-1][1].revision == f"sha256:{sha}"
    assert f"bundle {sha[:12]}" in err
    assert "deploybot wait d-" in out


async def test_deploy_wait_follows_until_succeeded(cli: Cli) -> None:
    cli.deployer.script = "succeed"
    code, out, err = await cli.run("deploy", "hello", "--to", "staging", "--wait")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].endswith("hello → staging: Created")
    assert "  web-1 BeforeInstall Succeeded" in lines
    assert "  web-2 ValidateService Succeeded" in lines
    assert lines[-1].startswith("✓ d-") and "Succeeded after" in lines[-1]
    assert any(call[0] == "watch" for call in cli.deployer.calls)


async def test_deploy_wait_exits_1_with_the_error_and_log_tail_on_failure(cli: Cli) -> None:
    cli.deployer.script = "fail"
    code, out, err = await cli.run("deploy", "hello", "--to", "staging", "--wait")
    assert code == 1
    assert "  web-2 ValidateService Failed" in out
    assert "Failed after" in err
    assert "error: HEALTH_CONSTRAINTS: ValidateService failed on web-2" in err
    assert "--- web-2 ValidateService failed (error code 1): script failed" in err
    assert "    curl: (7) Failed to connect to 127.0.0.1 port 9102" in err


async def test_wait_json_prints_only_the_final_document(cli: Cli) -> None:
    deployment = await cli.json("deploy", "hello", "--to", "staging")
    cli.deployer.advance(deployment["id"], status="Stopped")
    code, out, _ = await cli.run("wait", deployment["id"], "--json")
    assert code == 1
    assert json.loads(out)["status"] == "Stopped"


async def test_status_history_and_controls(cli: Cli) -> None:
    code, out, _ = await cli.run("status")
    assert (code, out.strip()) == (0, "no deployments yet")
    first = await cli.json("deploy", "hello", "--to", "staging")
    second = await cli.json("deploy", "hello", "--to", "production")
    ident = first["id"]
    assert (await cli.json("status", ident))["id"] == ident
    assert [d["id"] for d in await cli.json("status")] == [second["id"], ident]
    assert [d["id"] for d in await cli.json("history", "hello", "--env", "staging")] == [ident]
    code, out, _ = await cli.run("history", "hello")
    assert code == 0 and ident in out and second["id"] in out
    code, out, _ = await cli.run("status", ident)
    assert code == 0 and "web-1" in out and "hello → staging" in out
    for command, action in (
        ("pause", "pause"),
        ("resume", "resume"),
        ("continue", "continue"),
        ("promote-now", "promote"),
    ):
        code, _, err = await cli.run(command, ident)
        assert code == 0, err
        assert cli.deployer.calls[-1][:3] == ("control", ident, action)
    assert (await cli.json("stop", ident, "--rollback"))["status"] == "Stopped"
    assert cli.deployer.calls[-1] == ("stop", ident, True, "deploybot-admin")
    rollback = await cli.json("rollback", "hello", "--in", "staging")
    assert rollback["rollback"]["of"] == ident


async def test_plan_prints_batches_and_events(cli: Cli) -> None:
    code, out, err = await cli.run("plan", "hello", "--to", "staging")
    assert code == 0, err
    assert "batch 1: web-1" in out and "batch 2: web-2" in out
    assert "ApplicationStop → DownloadBundle" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("deploy", "nope", "--to", "staging"), "error: no application named 'nope'"),
        (("deploy", "api", "--to", "production"), "error: api/production is locked"),
        (("status", "d-missing"), "error: no deployment 'd-missing'"),
        (("deploy", "hello", "--to", "staging", "--revision", "/no/such/dir"), "error: "),
    ],
)
async def test_refusals_exit_1_with_the_engine_message(cli: Cli, argv: tuple[str, ...], message: str) -> None:
    code, _, err = await cli.run(*argv)
    assert code == 1
    assert message in err


async def test_invalid_uploaded_bundle_lists_the_problems(cli: Cli, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "appspec.yml").write_text("version: 0.0\nos: linux\nhoks: {}\n")
    code, _, err = await cli.run("deploy", "hello", "--to", "staging", "--revision", str(broken))
    assert code == 1
    assert "error: the revision's AppSpec is invalid:\n  appspec.yml:3:5: unknown key 'hoks'" in err
    assert not any(call[0] == "start" for call in cli.deployer.calls)


async def test_unreachable_server_says_how_to_start_it(cli: Cli) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    code, _, err = await cli.run("status", server=url)
    assert code == 1
    assert f"deploybot server is not running at {url} — start it with `make run`" in err


async def test_bad_token_says_where_it_looked(cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEPLOYBOT_TOKEN", "wrong")
    code, _, err = await cli.run("status")
    assert code == 1
    assert "error: bad API token: unknown token: the server has no such API token" in err
    assert err.rstrip().endswith("(looked in $DEPLOYBOT_TOKEN)")
    monkeypatch.delenv("DEPLOYBOT_TOKEN")
    code, _, err = await cli.run("status")
    assert code == 1
    assert f"API token (looked in $DEPLOYBOT_TOKEN, {tmp_path / 'var' / 'api-token'}" in err


def test_token_lookup_order(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "config").mkdir(parents=True)
    (repo / "config" / "deploybot.example.yml").write_text("{}\n")
    (repo / "var").mkdir()
    (repo / "var" / "api-token").write_text("from-repo\n")
    sub = repo / "examples" / "hello"
    sub.mkdir(parents=True)
    assert find_api_token({"DEPLOYBOT_TOKEN": "env"}, sub).token == "env"
    found = find_api_token({}, sub)
    assert found.token == "from-repo"
    assert found.looked_in == ("$DEPLOYBOT_TOKEN", str(sub / "var" / "api-token"), str(repo / "var" / "api-token"))
    (sub / "var").mkdir()
    (sub / "var" / "api-token").write_text("from-cwd\n")
    assert find_api_token({}, sub).token == "from-cwd"


def test_plain_progress_prints_each_change_once() -> None:
    progress = deploy_view.Progress(Console(file=io.StringIO()))
    deployment: dict[str, Any] = {
        "id": "d-1",
        "application": "hello",
        "environment": "staging",
        "status": "InProgress",
        "targets": [
            {
                "name": "web-1",
                "status": "InProgress",
                "events": [{"name": "BeforeInstall", "status": "Succeeded"}, {"name": "Install", "status": "Pending"}],
            }
        ],
    }
    assert list(progress.changes(deployment)) == ["d-1 hello → staging: InProgress", "  web-1 BeforeInstall Succeeded"]
    assert list(progress.changes(deployment)) == []
    deployment["status"] = "Ready"
    deployment["targets"][0]["events"][1]["status"] = "InProgress"
    assert list(progress.changes(deployment)) == [
        "d-1 hello → staging: Ready",
        "  waiting to reroute traffic: `deploybot continue d-1`",
        "  web-1 Install InProgress",
    ]


def test_live_table_shows_hosts_by_events() -> None:
    console = Console(file=io.StringIO(), width=120, record=True)
    console.print(
        deploy_view.deployment_view(
            {
                "id": "d-7",
                "application": "hello",
                "environment": "production",
                "status": "InProgress",
                "revision": {"sha256": "ab" * 32},
                "config": "CodeDeployDefault.OneAtATime",
                "traffic": {"percent": 20},
                "targets": [
                    {
                        "name": "web-1",
                        "status": "Succeeded",
                        "events": [{"name": "BeforeAllowTraffic", "status": "Succeeded"}],
                    },
                    {
                        "name": "web-2",
                        "status": "Failed",
                        "events": [{"name": "BeforeAllowTraffic", "status": "Failed"}],
                    },
                ],
            }
        )
    )
    text = console.export_text()
    assert "d-7  hello → production  InProgress  revision abababababab" in text
    assert "traffic 20%" in text
    assert "Before" in text and "Allow" in text
    web1, web2 = (line for line in text.splitlines() if line.startswith("web-"))
    assert "✓" in web1 and "✗" in web2
