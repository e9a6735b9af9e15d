"""The release flow over real HTTP (bot.app on 127.0.0.1, port 0) backed by the real Deployer and scripted agents,
and the ``deploybot`` release commands against that server: the same validation and the same sentences everywhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from test_service import ScriptedFleet, make_revision, never_fails

from bot.app import create_app
from bot.assembly import assemble_deployer
from bot.cli import main
from bot.settings import Settings
from engine.core.config.parse import parse_config
from engine.runtime.deployer import Deployer

TOKEN = "release-token"
CONFIG = """
server: {data_dir: var, admins: [root], revision_roots: [.]}
hosts:
  - {name: s1}
  - {name: p1}
  - {name: g1}
applications:
  app:
    revision: rev-a
    environments: [staging, production]
    deployment_groups:
      staging: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [s1]}}
      production: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [p1]}, deployers: [alice, bob]}
  gated:
    revision: rev-a
    environments: [prod]
    deployment_groups:
      prod:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {hosts: [g1]}
        required_approvals: 1
        approvers: [bob]
        deployers: [alice, carol]
"""


@dataclass
class Api:
    client: TestClient[Any, Any]
    deployer: Deployer
    url: str
    tokens: dict[str, str] = field(default_factory=dict)

    async def token(self, actor: str) -> str:
        """``actor``'s own API token (made on first use): who asks is whose token it is."""
        if actor not in self.tokens:
            self.tokens[actor] = (await self.deployer.tokens.create(actor, name="test"))[1]
        return self.tokens[actor]

    async def call(self, method: str, path: str, *, status: int, actor: str = "alice", **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {await self.token(actor)}"}
        async with self.client.request(method, "/api/v1" + path, headers=headers, **kwargs) as response:
            body = await response.json()
            assert response.status == status, body
            return body

    async def final(self, deployment_id: str) -> dict[str, Any]:
        async with asyncio.timeout(10):
            while True:
                doc = await self.call("GET", f"/deployments/{deployment_id}", status=200)
                if doc["status"] in ("Succeeded", "Failed", "Stopped"):
                    return dict(doc)
                await asyncio.sleep(0.02)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    make_revision(tmp_path, "rev-a", "1")
    make_revision(tmp_path, "rev-b", "2")
    config = parse_config(CONFIG, filename="api.yml", base_dir=str(tmp_path))
    deployer = await assemble_deployer(config, data_dir=tmp_path / "var")
    settings = Settings.from_env({"DEPLOYBOT_TOKEN": TOKEN}, data_dir=tmp_path / "var")
    agents = ScriptedFleet(deployer, ["s1", "p1", "g1"], never_fails)
    try:
        server = TestServer(create_app(settings, deployer=deployer), host="127.0.0.1", port=0)
        async with TestClient(server) as client:
            yield Api(client, deployer, str(server.make_url("")).rstrip("/"))
    finally:
        await agents.close()
        await deployer.close()


def deploy_body(environment: str = "staging", application: str = "app", **extra: Any) -> dict[str, Any]:
    return {"application": application, "environment": environment, **extra}


async def test_promote_carries_the_sha256_and_refusals_are_409_with_their_data(api: Api) -> None:
    staged = await api.call("POST", "/deployments", json=deploy_body(), status=201)
    staged = await api.final(staged["id"])
    refused = await api.call(
        "POST", "/applications/app/promote", json={"from": "production", "to": "staging"}, status=409
    )
    assert refused["error"] == "DeploymentRefused"
    assert refused["message"] == (
        "nothing has succeeded in app/production yet; staging is not next in order (production is the last environment)"
    )
    assert refused["details"]["checks"] == ["succeeded", "order"] and refused["details"]["gate"] == "promotion"

    promoted = await api.call(
        "POST", "/applications/app/promote", json={"from": "staging", "to": "production"}, status=201, actor="bob"
    )
    done = await api.final(promoted["id"])
    assert done["revision"]["sha256"] == staged["revision"]["sha256"]
    assert (done["created_by"], done["source"], done["promoted_from"]) == ("bob", "promotion", "staging")
    where = await api.call("GET", "/applications/app/where", status=200)
    assert [e["revision"]["sha256"] for e in where["environments"]] == [staged["revision"]["sha256"]] * 2
    assert [e["deployed_by"] for e in where["environments"]] == ["alice", "bob"]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/applications/app/promote", {"to": "production"}, 400, "'from' is required"),
        ("/applications/app/promote", {"from": "staging", "to": "x"}, 404, "has no environment 'x'"),
        ("/applications/nope/promote", {"from": "a", "to": "b"}, 404, "no application named 'nope'"),
        ("/applications/app/promote", {"from": "staging", "to": "production", "override": "yes"}, 400, "true or"),
        ("/locks", {"application": "app"}, 400, "'environment' is required"),
        ("/locks", {"application": "app", "environment": "staging", "expires_in_minutes": -1}, 400, "positive"),
        ("/locks", {"application": "app", "environment": "staging", "expires_in_minutes": True}, 400, "positive"),
        ("/locks", {"application": "app", "environment": "nowhere"}, 404, "has no environment"),
        ("/locks", {"application": "*", "reason": "x"}, 403, "only admins may freeze deployments (server.admins)"),
    ],
)
async def test_release_requests_are_validated(
    api: Api, path: str, body: dict[str, Any], status: int, message: str
) -> None:
    answer = await api.call("POST", path, json=body, status=status)
    assert message in answer["message"]


async def test_locks_refuse_deployments_with_the_owner_and_reason_then_release(api: Api) -> None:
    lock = await api.call(
        "POST",
        "/locks",
        json={"application": "app", "environment": "staging", "reason": "db migration", "expires_in_minutes": 30},
        status=201,
    )
    assert (lock["owner"], lock["reason"], lock["scope"]) == ("alice", "db migration", "environment")
    assert [entry["owner"] for entry in (await api.call("GET", "/locks", status=200))["locks"]] == ["alice"]
    refused = await api.call("POST", "/deployments", json=deploy_body(), status=409, actor="carol")
    assert refused["message"] == "app/staging is locked by alice: db migration (expires in 30 min)"
    assert refused["details"]["lock"]["owner"] == "alice"
    released = await api.call(
        "DELETE", "/locks", json={"application": "app", "environment": "staging"}, status=200, actor="carol"
    )
    assert released["released"] is True
    assert (await api.call("DELETE", "/locks?application=app&environment=staging", status=200))["released"] is False
    assert (await api.call("GET", "/locks", status=200))["locks"] == []

    frozen = await api.call(
        "POST", "/locks", json={"application": "*", "reason": "release day"}, status=201, actor="root"
    )
    assert frozen["scope"] == "freeze"
    refused = await api.call("POST", "/deployments", json=deploy_body("production"), status=409)
    assert refused["message"] == "deployments are frozen everywhere by root: release day"
    await api.call("DELETE", "/locks", json={"application": "*"}, status=403, actor="alice")
    await api.call("DELETE", "/locks", json={"application": "*"}, status=200, actor="root")


async def test_approve_and_reject_through_the_api(api: Api) -> None:
    waiting = await api.call("POST", "/deployments", json=deploy_body("prod", "gated"), status=201, actor="alice")
    assert waiting["status"] == "WaitingApproval"
    assert waiting["approval"] == {
        "required": 1,
        "approved_by": [],
        "missing": 1,
        "approvers": ["bob"],
        "expires_at": None,
    }
    # The door asks the one policy first: only gated-prod's approvers may approve at all (403 with the rule).
    for outsider in ("alice", "mallory"):
        refused = await api.call("POST", f"/deployments/{waiting['id']}/approve", status=403, actor=outsider)
        assert refused["rule"] == "gated-prod.approvers: bob"
    approved = await api.call("POST", f"/deployments/{waiting['id']}/approve", status=200, actor="bob")
    assert approved["status"] != "WaitingApproval"
    assert (await api.final(waiting["id"]))["approval"] == {"approved_by": ["bob"]}

    second = await api.call("POST", "/deployments", json=deploy_body("prod", "gated", revision="rev-b"), status=201)
    rejected = await api.call(
        "POST", f"/deployments/{second['id']}/reject", json={"reason": "not today"}, status=200, actor="bob"
    )
    assert (rejected["status"], rejected["error"]["message"]) == ("Stopped", "rejected by bob: not today")
    log = await api.call("GET", f"/deployments/{second['id']}/log", status=200)
    assert [e["kind"] for e in log if e["kind"].startswith("approval.")] == ["approval.rejected"]
    await api.call("POST", "/deployments/d-NOPE/approve", status=404)


async def test_queue_shows_what_each_waiting_deployment_waits_for(api: Api) -> None:
    await api.call("POST", "/deployments", json=deploy_body("prod", "gated"), status=201)
    queue = (await api.call("GET", "/queue?application=gated", status=200))["queue"]
    assert [(d["status"], d["queue_position"]) for d in queue] == [("WaitingApproval", None)]
    assert "waiting for 1 more approval(s) from bob" in queue[0]["waiting_for"]["message"]
    assert (await api.call("GET", "/queue", status=200))["queue"] == queue
    await api.call("GET", "/queue?environment=prod", status=400)


async def test_plan_from_an_environment_plans_the_promotion(api: Api) -> None:
    staged = await api.final((await api.call("POST", "/deployments", json=deploy_body(), status=201))["id"])
    plan = await api.call("POST", "/plan", json={**deploy_body("production"), "from": "staging"}, status=200)
    assert plan["revision"]["sha256"] == staged["revision"]["sha256"]
    assert [g["gate"] for g in plan["gates"]] == ["promotion", "lock", "approval", "queue"]
    assert plan["blocked"] is False and plan["batches"] == [["p1"]]


# ---------------------------------------------------------------------------------------------------- the CLI


@pytest.fixture
def cli(api: Api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Any:
    monkeypatch.chdir(tmp_path)

    async def run(*argv: str, user: str = "alice") -> tuple[int, str, str]:
        monkeypatch.setenv("DEPLOYBOT_TOKEN", await api.token(user))  # the CLI acts as its token's user
        capsys.readouterr()
        code = await asyncio.to_thread(main, [*argv, "--server", api.url])
        out, err = capsys.readouterr()
        return code, out, err

    return run


async def test_cli_release_commands(api: Api, cli: Any) -> None:
    code, out, err = await cli("deploy", "app", "--to", "staging", "--wait")
    assert code == 0, err
    code, out, err = await cli("plan", "app", "--to", "production", "--from", "staging")
    assert code == 0, err
    assert "gate promotion: clear" in out and "gate lock: clear" in out and "rollback (manual only)" in out

    code, out, _ = await cli("lock", "production", "--app", "app", "--reason", "db migration", "--for", "30")
    assert code == 0 and "app/production locked by alice: db migration (until" in out
    code, out, _ = await cli("locks")
    assert "app/production locked by alice: db migration" in out
    code, _, err = await cli("promote", "app", "--from", "staging", "--to", "production", user="bob")
    assert code == 1 and "error: app/production is locked by alice: db migration (expires in 30 min)" in err
    code, out, err = await cli("plan", "app", "--to", "production", "--from", "staging")
    assert code == 1 and "gate lock: refuse — app/production is locked by alice" in out
    code, out, _ = await cli("unlock", "production", "--app", "app", user="bob")
    assert code == 0 and out.startswith("released: app/production locked by alice")

    code, _, err = await cli("freeze", "--reason", "release day")
    assert code == 1 and "only admins may freeze deployments (server.admins)" in err
    assert (await cli("freeze", "--reason", "release day", user="root"))[0] == 0
    code, _, err = await cli("deploy", "app", "--to", "staging")
    assert code == 1 and "deployments are frozen everywhere by root: release day" in err
    assert (await cli("unfreeze", user="root"))[1].strip() == "the freeze is lifted"

    code, out, err = await cli("promote", "app", "--from", "staging", "--to", "production", "--wait", user="bob")
    assert code == 0, err
    code, out, _ = await cli("where", "app", "--json")
    where = json.loads(out)
    assert [e["deployed_by"] for e in where["environments"]] == ["alice", "bob"]
    code, out, _ = await cli("where", "app")
    assert code == 0 and "staging" in out and "production" in out

    code, out, _ = await cli("deploy", "gated", "--to", "prod")
    ident = out.split()[0]
    assert "WaitingApproval" in out and f"deploybot approve {ident}" in out
    code, out, _ = await cli("queue", "gated")
    assert ident in out and "waiting for 1 more approval(s) from bob" in out
    code, _, err = await cli("approve", ident)
    assert code == 1 and "alice may not approve on gated-prod: gated-prod.approvers: bob" in err
    code, out, err = await cli("approve", ident, "--json", user="bob")
    assert code == 0, err
    assert json.loads(out)["id"] == ident
    code, out, _ = await cli("history", "app")
    assert code == 0 and "took" in out and " s " in out
