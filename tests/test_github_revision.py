"""``deploybot deploy APP --to ENV --revision github:OWNER/REPO@SHA``: the server downloads the commit with its GitHub
credentials, like a merge, and deploys it as the API caller (whose permission is checked as for any deploy). The
CLI runs against the real app (test_github_webhooks' world: real Deployer, fake GitHub API)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import deployer_from
from test_github_webhooks import CONFIG, REPO, SHA1, World, open_world

from bot.app import create_app
from bot.cli import main
from bot.settings import Settings


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with open_world(tmp_path) as opened:
        yield opened


async def deploy(
    url: str, token: str, *argv: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    monkeypatch.setenv("DEPLOYBOT_TOKEN", token)
    monkeypatch.delenv("DEPLOYBOT_URL", raising=False)
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["deploy", *argv, "--server", url])
    out, err = capsys.readouterr()
    return code, out, err


def url_of(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("/")).rstrip("/")


async def test_a_github_revision_is_downloaded_by_the_server_and_deployed_as_the_caller(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token = (await world.deployer.tokens.create("alice", name="test"))[1]
    revision = f"github:{REPO}@{SHA1[:7]}"  # a short SHA: the server asks GitHub for the whole one
    code, out, err = await deploy(
        url_of(world.client),
        token,
        "api",
        "--to",
        "staging",
        "--revision",
        revision,
        "--json",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 0, err
    deployment = json.loads(out)
    assert deployment["created_by"] == "alice"
    assert deployment["revision"]["commit"] == SHA1
    assert deployment["revision"]["source"] == f"github:{REPO}@{SHA1[:12]}"
    [tarball] = world.github.called("GET", f"/repos/{REPO}/tarball/{SHA1}")
    assert tarball.authorization == "token ghp_test"  # the server's credentials, never the caller's
    await world.settle()
    [done] = await world.history()
    assert done["status"] == "Succeeded"


@pytest.mark.parametrize(
    ("revision", "environment", "message"),
    [
        (
            f"github:acme/other@{SHA1}",
            "staging",
            "error: acme/other is not a GitHub repository of api: its repository is acme/api",
        ),
        ("github:acme/api@" + "f" * 40, "staging", "error: acme/api has no commit " + "f" * 40),
        ("github:acme/api", "staging", "error: 'github:acme/api' is not github:OWNER/REPO@SHA"),
        ("github:acme/api@main", "staging", "error: 'main' is not a commit SHA (7 to 40 hex digits)"),
        (
            f"github:acme/api@{SHA1}",
            "production",
            "error: alice may not deploy on api-production: api-production.deployers: ci-bot",
        ),
    ],
    ids=["other-repository", "unknown-sha", "no-sha", "branch-name", "not-a-deployer"],
)
async def test_a_github_revision_that_cannot_be_deployed_is_a_clear_refusal(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    revision: str,
    environment: str,
    message: str,
) -> None:
    token = (await world.deployer.tokens.create("alice", name="test"))[1]
    code, _, err = await deploy(
        url_of(world.client),
        token,
        "api",
        "--to",
        environment,
        "--revision",
        revision,
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 1
    assert message in err, err
    assert world.github.called("GET", f"/repos/{REPO}/tarball") == []
    assert await world.history() == []


async def test_a_github_revision_on_a_server_without_github_says_github_is_not_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("GITHUB_TOKEN", "GITHUB_WEBHOOK_SECRET", "GITHUB_APP_ID", "GITHUB_APP_PRIVATE_KEY"):
        monkeypatch.delenv(name, raising=False)
    deployer = await deployer_from(CONFIG, tmp_path)
    app = create_app(Settings.from_env({}, data_dir=tmp_path / "var"), deployer=deployer)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            token = (await deployer.tokens.create("alice", name="test"))[1]
            code, _, err = await deploy(
                url_of(client),
                token,
                "api",
                "--to",
                "staging",
                "--revision",
                f"github:{REPO}@{SHA1}",
                monkeypatch=monkeypatch,
                capsys=capsys,
            )
            headers = {"Authorization": f"Bearer {token}"}
            body = {"application": "api", "environment": "staging", "revision": f"github:{REPO}@{SHA1}"}
            async with client.post("/api/v1/deployments", json=body, headers=headers) as response:
                status, answer = response.status, await response.json()
    finally:
        await deployer.close()
    assert code == 1
    assert "error: this server cannot fetch github: revisions: GitHub is not configured" in err
    assert (status, answer["error"]) == (409, "GitHubNotConfigured")


async def test_plan_refuses_a_github_revision_before_asking_the_server(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEPLOYBOT_TOKEN", "unused")
    capsys.readouterr()
    argv = ["plan", "api", "--to", "staging", "--revision", f"github:{REPO}@{SHA1}", "--server", url_of(world.client)]
    assert await asyncio.to_thread(main, argv) == 1
    assert "error: plan takes no github: revision" in capsys.readouterr().err
