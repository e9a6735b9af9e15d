"""``deploybot stats`` against a real server and a real SQLite store holding a history built here (deployments over
100 days, a fake clock at "now"): the numbers printed are the numbers counted by hand.

The CLI runs its own event loop, so each invocation runs in a worker thread while the server serves on the test's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from conftest import FakeClock, deployer_from
from test_service import CONFIG, make_revision

from bot.app import create_app
from bot.cli import main
from bot.settings import Settings
from engine.runtime.deployer import Deployer

TOKEN = "stats-test-token"
NOW = 1_800_000_000.0
DAY = 86400.0
HOUR = 3600.0


async def seed_history(deployer: Deployer, workdir: Path) -> None:
    """Production: a deploy 100 days ago (outside both windows); in the last 90 days a GitHub commit deployed an hour
    after it was made, a failure restored by its rollback 10 minutes later, a commit deployed 2 hours after it was
    made (20 days ago), a deploy with no commit time, one rolled back by hand 30 minutes later, and a stop without
    rollback; one still running. Staging: one deploy yesterday."""
    github = []
    for name, made_at in (("one", NOW - 80 * DAY - HOUR), ("two", NOW - 20 * DAY - 2 * HOUR)):
        location = {"github": {"repository": "acme/app", "commit": name * 8, "committed_at": made_at}}
        path = make_revision(workdir, f"gh-{name}", name)
        github.append((await deployer.revisions.add(path, label=f"github:acme/app@{name}", location=location)).sha256)
    local = (await deployer.revisions.add(make_revision(workdir, "local", "local"))).sha256
    rows: list[dict[str, Any]] = [
        {"id": "d1", "status": "Succeeded", "ended_at": NOW - 100 * DAY},
        {"id": "d2", "status": "Succeeded", "ended_at": NOW - 80 * DAY, "revision_sha256": github[0]},
        {"id": "d3", "status": "Failed", "ended_at": NOW - 60 * DAY, "rolled_back_by": None},
        {"id": "d4", "status": "Succeeded", "ended_at": NOW - 60 * DAY + 600, "rollback_of": "d3"},
        {"id": "d5", "status": "Succeeded", "ended_at": NOW - 20 * DAY, "revision_sha256": github[1]},
        {"id": "d6", "status": "Succeeded", "ended_at": NOW - 10 * DAY},
        {"id": "d7", "status": "Succeeded", "ended_at": NOW - 5 * DAY, "rolled_back_by": "d8"},
        {"id": "d8", "status": "Succeeded", "ended_at": NOW - 5 * DAY + 1800, "rollback_of": "d7"},
        {"id": "d9", "status": "Stopped", "ended_at": NOW - 2 * DAY},
        {"id": "d10", "status": "InProgress", "ended_at": None},
        {"id": "s1", "status": "Succeeded", "ended_at": NOW - DAY, "environment": "staging"},
    ]
    for row in rows:
        environment = row.pop("environment", "production")
        ended = row["ended_at"] if row["ended_at"] is not None else NOW - 60
        await deployer.store.create_deployment(
            {
                "application": "app",
                "environment": environment,
                "group_name": f"app-{environment}",
                "revision_sha256": local,
                "created_by": "alice",
                "created_at": ended - 120,
                "started_at": ended - 115,
                **row,
            }
        )


@dataclass
class Cli:
    url: str
    deployer: Deployer
    capsys: pytest.CaptureFixture[str]

    async def run(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = await asyncio.to_thread(main, [*argv, "--server", self.url])
        out, err = self.capsys.readouterr()
        return code, out, err

    async def json(self, *argv: str) -> Any:
        code, out, err = await self.run(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


async def serve_history(workdir: Path) -> AsyncIterator[tuple[str, Deployer]]:
    """A real server (its URL) over a real store holding ``seed_history``, its clock stopped at NOW."""
    make_revision(workdir, "rev-a", "1")  # the application's default revision (unused: nothing is deployed here)
    deployer = await deployer_from(CONFIG % {"heartbeat": 60}, workdir, clock=FakeClock(start=NOW))
    try:
        await seed_history(deployer, workdir)
        settings = Settings.from_env({"DEPLOYBOT_TOKEN": TOKEN}, data_dir=workdir / "var")
        server = TestServer(create_app(settings, deployer=deployer), host="127.0.0.1")
        await server.start_server()
        try:
            yield str(server.make_url("/")).rstrip("/"), deployer
        finally:
            await server.close()
    finally:
        await deployer.close()


@pytest.fixture
async def cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> AsyncIterator[Cli]:
    monkeypatch.setenv("DEPLOYBOT_TOKEN", TOKEN)
    monkeypatch.delenv("DEPLOYBOT_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    async for url, deployer in serve_history(tmp_path):
        yield Cli(url, deployer, capsys)


PRODUCTION_30 = {
    "application": "app",
    "environment": "production",
    "days": 30,
    "deployments": 4,  # d5 d6 d7 d9
    "successful": 3,  # d5 d6 d7
    "failed": 1,  # d7, rolled back
    "deployments_per_day": 0.1,
    "deployments_per_week": 0.7,
    "change_failure_rate": 0.25,
    "restores": 1,
    "time_to_restore_seconds": 1800.0,  # d7 → its rollback d8
    "lead_times": 1,
    "lead_time_seconds": 7200.0,  # d5's commit
}
PRODUCTION_90 = {
    **PRODUCTION_30,
    "days": 90,
    "deployments": 6,  # + d2 d3
    "successful": 4,
    "failed": 2,
    "deployments_per_day": round(4 / 90, 4),
    "deployments_per_week": round(4 / 90 * 7, 4),
    "change_failure_rate": 0.3333,
    "restores": 2,
    "time_to_restore_seconds": 1200.0,  # median of 600 (d3 → d4) and 1800
    "lead_times": 2,
    "lead_time_seconds": 5400.0,  # median of 1 h (d2) and 2 h (d5)
}


@pytest.mark.parametrize(("days", "expected"), [(30, PRODUCTION_30), (90, PRODUCTION_90)])
async def test_stats_json_are_the_numbers_of_the_history(cli: Cli, days: int, expected: dict[str, Any]) -> None:
    stats = await cli.json("stats", "app", "--env", "production", "--days", str(days))
    assert (stats["application"], stats["days"], stats["at"]) == ("app", days, NOW)
    assert stats["environments"] == [expected]


async def test_stats_without_env_show_each_environment_in_promotion_order(cli: Cli) -> None:
    stats = await cli.json("stats", "APP")  # names are case-insensitive, as everywhere
    assert [n["environment"] for n in stats["environments"]] == ["staging", "production"]
    staging = stats["environments"][0]
    assert (staging["successful"], staging["change_failure_rate"], staging["lead_time_seconds"]) == (1, 0.0, None)


async def test_stats_table_says_each_number_in_words(cli: Cli) -> None:
    code, out, err = await cli.run("stats", "app")
    assert code == 0, err
    assert "app: the last 30 days" in out
    production = next(line for line in out.splitlines() if line.strip().startswith("production"))
    assert "0.7 (3 successful)" in production and "25% (1 of 4)" in production
    assert "30m (median of 1)" in production and "2.0h (median of 1)" in production
    staging = next(line for line in out.splitlines() if line.strip().startswith("staging"))
    assert "n/a (median of 0)" in staging  # no commit time known: no lead time


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (("stats", "nope"), "nope"),
        (("stats", "app", "--env", "qa"), "qa"),
    ],
)
async def test_stats_of_something_unknown_fail_with_the_servers_words(
    cli: Cli, argv: tuple[str, ...], words: str
) -> None:
    code, out, err = await cli.run(*argv)
    assert code == 1 and out == "" and err.startswith("error: ") and words in err


async def test_stats_endpoint_refuses_a_window_it_cannot_count(cli: Cli) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        for days in ("0", "-30", "soon"):
            async with http.get(f"{cli.url}/api/v1/applications/app/stats", params={"days": days}) as response:
                body = await response.json()
                assert response.status == 400 and "/stats?env=ENV&days=N" in body["usage"], (days, body)
        async with http.get(f"{cli.url}/api/v1/applications/app/stats") as response:
            assert response.status == 200 and (await response.json())["days"] == 30
        async with http.get(f"{cli.url}/api/v1/applications/app/stats", params={"days": "400"}) as response:
            assert response.status == 200 and (await response.json())["days"] == 365  # at most a year
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.get(f"{cli.url}/api/v1/applications/app/stats") as answer,
    ):
        assert answer.status == 401
