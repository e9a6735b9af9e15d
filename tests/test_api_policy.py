"""The JSON API's doors ask engine.may: route x caller x environment, through the real app over a real Deployer.

Every cell is one request by one caller (a per-user API token, the bootstrap token, or none) to one route, against
one of three deployment groups:

- ``staging``: shop-staging, no permission list (anyone declared may);
- ``listed``: shop-production, deployers ``[dev, '@release']``, approvers ``[appr]``, rollbackers ``[rb]``;
- ``closed``: vault-production, no list (production unset: only the admins).

(shop-dev and vault-staging are only where promotions into shop-staging and vault-production come from.)

Allowed, the effect is really there (a deployment, a lock, an approval, a token …) with the caller as the audit
log's actor; refused, the answer is 403 naming the exact rule, nothing changed and one ``access.denied`` entry was
written; without a token it is 401 and nothing at all is written.

Speed: the deployments every cell may need (two successful revisions per group, the promotion sources) are made
once per module in a template data directory, by scripted agents; each cell opens a fresh Deployer over its own
copy of it (as a restarted server would), with its clock a day later so the template's approvals have lapsed. No
agent runs in a cell: a started deployment stays InProgress on its host until the cell stops it or ends. A hook
execution is registered in the Deployer's HookExecutions as a Lambda/ECS hook invoker does (no AWS needed), and
/continue and /promote act on an in-place deployment, which has no wait or traffic stage: their effect is the audit
entry naming the caller.

Besides the matrix: every read needs a valid token and nothing more; a forged ``X-Deploybot-Actor: root`` changes
no cell; the requester may withdraw (reject) their own request.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import FakeClock, eventually
from test_service import ScriptedFleet, make_revision, never_fails

from bot.app import create_app
from bot.assembly import assemble_deployer
from bot.settings import Settings, ensure_api_token_file
from engine.core.config.model import EngineConfig
from engine.core.config.parse import parse_config
from engine.core.model import ROLLBACK_CREATOR
from engine.core.policy import BOOTSTRAP_ADMIN, VERBS, Action
from engine.core.requests import DeployRequest
from engine.runtime.deployer import Deployer

CONFIG = """
users:
  root: {}     # server.admins
  dev: {}      # shop-production deployer
  rel: {}      # shop-production deployer through @release
  appr: {}     # shop-production approver
  rb: {}       # shop-production rollbacker
  nobody: {}   # declared, listed nowhere
  ci: {}       # requests the deployments a cell acts on (never a caller)
roles:
  release: [rel]
server: {admins: [root]}
hosts: [{name: d1}, {name: s1}, {name: p1}, {name: vs1}, {name: vp1}]
applications:
  shop:
    revision: rev-a
    environments: [dev, staging, production]
    deployment_groups:
      dev: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [d1]}}
      staging: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [s1]}, required_approvals: 1}
      production:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {hosts: [p1]}
        required_approvals: 1
        deployers: [dev, '@release']
        approvers: [appr]
        rollbackers: [rb]
  vault:
    revision: rev-a
    environments: [staging, production]
    deployment_groups:
      staging: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [vs1]}}
      production: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [vp1]}, required_approvals: 1}
"""
HOSTS = {
    "shop-dev": "d1",
    "shop-staging": "s1",
    "shop-production": "p1",
    "vault-staging": "vs1",
    "vault-production": "vp1",
}
DAY = 86400.0


@dataclass(frozen=True)
class Env:
    """One column of the matrix: the group a cell acts on, and the environment a promotion into it comes from."""

    key: str
    application: str
    environment: str
    source: str

    @property
    def group(self) -> str:
        return f"{self.application}-{self.environment}"


ENVS = {
    "staging": Env("staging", "shop", "staging", "dev"),
    "listed": Env("listed", "shop", "production", "staging"),
    "closed": Env("closed", "vault", "production", "staging"),
}

# Callers: a user's own API token, "boot" the bootstrap token (var/api-token), "anonymous" no token at all.
CALLERS = ("root", "boot", "dev", "rel", "appr", "rb", "nobody", "anonymous")
ACTOR = {caller: caller for caller in CALLERS} | {"boot": BOOTSTRAP_ADMIN, "anonymous": ""}
ADMIN_RULE = {"root": "admin (server.admins)", "boot": f"bootstrap admin ({BOOTSTRAP_ADMIN})"}
MEMBERS = frozenset({"dev", "rel", "appr", "rb", "nobody"})  # the callers who are not admins
DEPLOYERS = frozenset({"dev", "rel"})

# (environment, action) -> (the rule that decides for the non-admin callers, which of them it allows)
RULES: dict[tuple[str, Action], tuple[str, frozenset[str]]] = {
    ("staging", Action.DEPLOY): ("shop-staging has no deployers list: anyone may deploy", MEMBERS),
    ("staging", Action.CONTROL): ("shop-staging has no deployers list: anyone may control deployments", MEMBERS),
    ("staging", Action.ROLLBACK): ("shop-staging has no rollbackers or deployers list: anyone may roll back", MEMBERS),
    ("staging", Action.APPROVE): ("shop-staging has no approvers list: anyone may approve", MEMBERS),
    ("staging", Action.LOCK): ("shop-staging has no deployers list: anyone may lock environments", MEMBERS),
    ("listed", Action.DEPLOY): ("shop-production.deployers: dev, @release", DEPLOYERS),
    ("listed", Action.CONTROL): ("shop-production.deployers: dev, @release", DEPLOYERS),
    ("listed", Action.ROLLBACK): ("shop-production.rollbackers: rb", frozenset({"rb"})),
    ("listed", Action.APPROVE): ("shop-production.approvers: appr", frozenset({"appr"})),
    ("listed", Action.LOCK): ("shop-production.deployers: dev, @release", DEPLOYERS),
    ("closed", Action.DEPLOY): ("vault-production has no deployers list: production needs one", frozenset()),
    ("closed", Action.CONTROL): ("vault-production has no deployers list: production needs one", frozenset()),
    ("closed", Action.ROLLBACK): (
        "vault-production has no rollbackers or deployers list: production needs one",
        frozenset(),
    ),
    ("closed", Action.APPROVE): ("vault-production has no approvers list: production needs one", frozenset()),
    ("closed", Action.LOCK): ("vault-production has no deployers list: production needs one", frozenset()),
}
ADMINS_ONLY = {
    Action.FREEZE: "only admins may freeze deployments (server.admins)",
    Action.ADMIN: "only admins may administer deploybot (server.admins)",
}


def refusal(caller: str, env: Env | None, action: Action) -> str | None:
    """The rule that must refuse ``caller`` (None: allowed), from the tables above rather than from engine.may."""
    if caller in ADMIN_RULE:
        return None
    if env is None:
        return ADMINS_ONLY[action]
    rule, allowed = RULES[(env.key, action)]
    return None if caller in allowed else rule


# ---------------------------------------------------------------------------------------------------- the template


@dataclass(frozen=True)
class Template:
    """A data directory a server left behind: tokens for every caller, two successful revisions in each group."""

    root: Path  # rev-a/, rev-b/ (the config's revisions) and var/ (the data directory)
    config: EngineConfig
    tokens: dict[str, str]  # caller -> plaintext API token
    shas: dict[str, str]  # revision directory -> sha256
    current: dict[str, str]  # group -> id of its latest (successful) deployment
    ended: float  # the template clock's last reading


async def _build(root: Path) -> Template:
    make_revision(root, "rev-a", "1")
    make_revision(root, "rev-b", "2")
    config = parse_config(CONFIG, filename="policy.yml", base_dir=str(root))
    clock = FakeClock(tick=0.001)
    deployer = await assemble_deployer(config, data_dir=root / "var", clock=clock)
    settings = Settings.from_env({}, data_dir=root / "var")
    ensure_api_token_file(settings.api_token_file)
    boot = settings.api_token_file.read_text().strip()
    await deployer.tokens.register_bootstrap({boot})
    tokens = {"boot": boot}
    for user in ("root", "dev", "rel", "appr", "rb", "nobody", "ci"):
        tokens[user] = (await deployer.tokens.create(user, name="matrix"))[1]
    agents = ScriptedFleet(deployer, list(HOSTS.values()), never_fails)
    shas: dict[str, str] = {}
    current: dict[str, str] = {}
    try:
        twice = [(group, revision) for group in ("shop-staging", "shop-production", "vault-production")
                 for revision in ("rev-a", "rev-b")]  # fmt: skip
        for group, revision in [("shop-dev", "rev-a"), ("vault-staging", "rev-a"), *twice]:
            application, _, environment = group.partition("-")
            doc = await deployer.start(DeployRequest(application, environment, revision=revision, actor="ci"))
            if doc["status"] == "WaitingApproval":
                await deployer.release.approve(doc["id"], actor="root")
            done = await _final(deployer, doc["id"])
            assert done["status"] == "Succeeded", done
            shas[revision] = done["revision"]["sha256"]
            current[done["group"]] = done["id"]
    finally:
        await agents.close()
        ended = clock.now()
        await deployer.close()
    return Template(root, config, tokens, shas, current, ended)


async def _final(deployer: Deployer, deployment_id: str) -> dict[str, Any]:
    async def ended() -> bool:
        return (await deployer.get(deployment_id))["status"] in ("Succeeded", "Failed", "Stopped")

    await eventually(ended, f"{deployment_id} to end")
    return await deployer.get(deployment_id)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return asyncio.run(_build(tmp_path_factory.mktemp("policy-template")))


# ---------------------------------------------------------------------------------------------------- one server


@dataclass
class Door:
    client: TestClient[Any, Any]
    deployer: Deployer
    template: Template

    async def call(
        self, caller: str, method: str, path: str, *, forged: bool = False, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = {"X-Deploybot-Actor": "root"} if forged else {}
        if caller != "anonymous":
            headers["Authorization"] = f"Bearer {self.template.tokens[caller]}"
        async with self.client.request(method, "/api/v1" + path, headers=headers, **kwargs) as response:
            return response.status, await response.json()

    async def log(self) -> list[dict[str, Any]]:
        return list(await self.deployer.store.read_log(limit=100_000))

    async def state(self) -> dict[str, Any]:
        """Everything a request could change besides the audit log (which ``cell`` compares entry by entry)."""
        deployer = self.deployer
        return {
            "deployments": [
                (r["id"], r["status"], (r["state"].get("machine") or {}).get("paused"))
                for r in await deployer.store.list_deployments(limit=None)
            ],
            "locks": await deployer.release.locks(),
            "tokens": [(t.id, t.user, t.revoked_at) for t in await deployer.tokens.list()],
            "agent_token": deployer.fleet.has_token(AGENT),
            "hooks": deployer.hooks.pending(),
        }

    async def running(self, env: Env) -> str:
        """A deployment of ``env``'s group on its host, InProgress (no agent answers it), requested by ci."""
        waiting = await self.waiting(env)
        await self.deployer.release.approve(waiting, actor="root")

        async def in_progress() -> bool:
            return (await self.deployer.get(waiting))["status"] == "InProgress"

        await eventually(in_progress, f"{waiting} to run")
        return waiting

    async def waiting(self, env: Env) -> str:
        """A deployment of ``env``'s group waiting for its one approval, requested by ci."""
        request = DeployRequest(env.application, env.environment, actor="ci")
        doc = await self.deployer.start(request)
        assert doc["status"] == "WaitingApproval", doc
        return str(doc["id"])

    async def entries(self, deployment_id: str, kind: str) -> list[str]:
        """The actors of ``deployment_id``'s audit entries of ``kind``."""
        return [
            e["actor"] for e in await self.deployer.store.read_log(deployment_id=deployment_id) if e["kind"] == kind
        ]


@pytest.fixture
async def door(template: Template, tmp_path: Path) -> AsyncIterator[Door]:
    shutil.copytree(template.root / "var", tmp_path / "var")
    clock = FakeClock(start=template.ended + DAY, tick=0.001)  # the template's approvals have lapsed
    deployer = await assemble_deployer(template.config, data_dir=tmp_path / "var", clock=clock)
    try:
        settings = Settings.from_env({}, data_dir=tmp_path / "var")
        server = TestServer(create_app(settings, deployer=deployer), host="127.0.0.1", port=0)
        async with TestClient(server) as client:
            yield Door(client, deployer, template)
    finally:
        await deployer.close()


# ---------------------------------------------------------------------------------------------------- the routes

AGENT = "i-0matrix"
Arrange = Callable[[Door, Env | None], Awaitable[dict[str, Any]]]
Request = Callable[[dict[str, Any]], tuple[str, str, dict[str, Any] | None]]
Effect = Callable[[Door, dict[str, Any], Any, str], Awaitable[None]]


@dataclass(frozen=True)
class Route:
    """One route of the API: the action its door asks, what must exist first, the request, and its effect."""

    name: str
    action: Action
    arrange: Arrange
    request: Request
    status: int  # the answer when allowed
    effect: Effect  # (door, arranged, answer body, actor): asserts the effect is really there

    def __repr__(self) -> str:
        return self.name


async def _nothing(door: Door, env: Env | None) -> dict[str, Any]:
    assert env is not None
    return {"env": env}


async def _running(door: Door, env: Env | None) -> dict[str, Any]:
    assert env is not None
    return {"env": env, "id": await door.running(env)}


async def _paused(door: Door, env: Env | None) -> dict[str, Any]:
    arranged = await _running(door, env)
    await door.deployer.control(arranged["id"], "pause", actor="ci")
    await eventually(lambda: _is_paused(door, arranged["id"], True), "the deployment to pause")
    return arranged


async def _is_paused(door: Door, deployment_id: str, paused: bool) -> bool:
    return (await door.deployer.get(deployment_id))["paused"] is paused


async def _waiting(door: Door, env: Env | None) -> dict[str, Any]:
    assert env is not None
    return {"env": env, "id": await door.waiting(env)}


async def _locked(door: Door, env: Env | None) -> dict[str, Any]:
    assert env is not None
    await door.deployer.release.lock(env.application, env.environment, actor="ci", reason="arranged")
    return {"env": env}


async def _hook(door: Door, env: Env | None) -> dict[str, Any]:
    """A running deployment with a hook execution waiting for its status callback, as a Lambda/ECS hook invoker
    registers it (engine/adapters/aws/hook_executions.py) before it invokes the function."""
    arranged = await _running(door, env)
    host = HOSTS[arranged["env"].group]
    at = door.deployer.clock.now()
    execution, _ = await door.deployer.hooks.start(arranged["id"], host, "AfterInstall", "matrix-hook", at=at)
    return {**arranged, "execution": execution}


async def _empty(door: Door, env: Env | None) -> dict[str, Any]:
    return {}


async def _frozen(door: Door, env: Env | None) -> dict[str, Any]:
    await door.deployer.release.lock("*", "*", actor="root", reason="arranged")
    return {}


async def _spare_token(door: Door, env: Env | None) -> dict[str, Any]:
    token, plaintext = await door.deployer.tokens.create("nobody", name="spare", actor="ci")
    return {"token_id": token.id, "token": plaintext}


async def _deployed(door: Door, arranged: dict[str, Any], body: Any, actor: str) -> None:
    env: Env = arranged["env"]
    assert (body["group"], body["created_by"], body["status"]) == (env.group, actor, "WaitingApproval")
    assert await door.entries(body["id"], "deployment.requested") == [actor]


async def _promoted(door: Door, arranged: dict[str, Any], body: Any, actor: str) -> None:
    env: Env = arranged["env"]
    source = await door.deployer.get(door.template.current[f"{env.application}-{env.source}"])
    assert (body["group"], body["created_by"], body["source"], body["promoted_from"]) == (
        env.group,
        actor,
        "promotion",
        env.source,
    )
    assert body["revision"]["sha256"] == source["revision"]["sha256"]
    assert await door.entries(body["id"], "deployment.requested") == [actor]
    promotions = [e for e in await door.log() if e["kind"] == "promotion.requested"]
    assert [(e["actor"], e["data"]["to"]) for e in promotions] == [(actor, env.environment)]


async def _stopped(door: Door, arranged: dict[str, Any], body: Any, actor: str) -> None:
    assert (body["id"], body["status"], body["error"]["message"]) == (arranged["id"], "Stopped", f"stopped by {actor}")
    assert body["rollback"]["by"] is None
    assert await door.entries(arranged["id"], "deployment.stop_requested") == [actor]


async def _stopped_with_rollback(door: Door, arranged: dict[str, Any], body: Any, actor: str) -> None:
    assert (body["id"], body["status"]) == (arranged["id"], "Stopped")
    rollback = await door.deployer.get(body["rollback"]["by"])
    assert (rollback["rollback"]["of"], rollback["revision"]["sha256"]) == (arranged["id"], door.template.shas["rev-b"])
    stops = [e for e in await door.deployer.store.read_log(deployment_id=arranged["id"]) if "stop_req" in e["kind"]]
    assert [(e["actor"], e["data"]) for e in stops] == [(actor, {"rollback": True})]


def _controlled(action: str) -> Effect:
    async def effect(door: Door, arranged: dict[str, Any], body: Any, actor: str) -> None:
        assert (body["id"], body["status"]) == (arranged["id"], "InProgress")
        assert await door.entries(arranged["id"], f"deployment.{action}") == [actor]
        if action in ("pause", "resume"):  # what the machine does with it (continue/promote have no stage here)
            await eventually(lambda: _is_paused(door, arranged["id"], action == "pause"), f"the {action}")

    return effect


async def _rolled_back(door: Door, arranged: dict[str, Any], body: Any, actor: str) -> None:
    env: Env = arranged["env"]
    latest = door.template.current[env.group]
    assert (body["group"], body["created_by"], body["rollback"]["of"]) == (env.group, ROLLBACK_CREATOR, latest)
    assert body["revision"]["sha256"] == door.template.shas["rev-a"]  # the revision before the current rev-b
    assert await door.entries(latest, "rollback.requested") == [actor]
    assert await door.entries(body["id"], "deployment.requested") == [actor]


async def _lock_set(door: Door, arranged: dict[str, Any], body: Any, actor: str) -> None:
    env: Env = arranged["env"]
    assert (body["application"], body["environment"], body["owner"]) == (env.application, env.environment, actor)
    assert [(lock["environment"], lock["owner"]) for lock in await door.deployer.release.locks()] == [
        (env.environment, actor)
    ]
    assert [e["actor"] for e in await door.log() if e["kind"] == "lock.set"] == [actor]


async def _lock_released(door: Door, arranged: dict[str, Any], body: Any, actor: str) -> None:
    assert (body["released"], body["lock"]["owner"]) == (True, "ci")
    assert await door.deployer.release.locks() == []
    assert [e["actor"] for e in await door.log() if e["kind"] == "lock.released"] == [actor]


async def _approved(door: Door, arranged: dict[str, Any], body: Any, actor: str) -> None:
    assert body["id"] == arranged["id"] and body["status"] != "WaitingApproval"
    assert body["approval"]["approved_by"] == [actor]
    assert await door.entries(arranged["id"], "approval.granted") == [actor]


async def _rejected(door: Door, arranged: dict[str, Any], body: Any, actor: str) -> None:
    assert (body["id"], body["status"]) == (arranged["id"], "Stopped")
    assert body["error"]["message"] == f"rejected by {actor}: matrix"
    assert await door.entries(arranged["id"], "approval.rejected") == [actor]


async def _hook_reported(door: Door, arranged: dict[str, Any], body: Any, actor: str) -> None:
    execution = arranged["execution"]
    assert (body["lifecycleEventHookExecutionId"], body["status"]) == (execution.execution_id, "Succeeded")
    assert execution.result.result() == "Succeeded" and door.deployer.hooks.pending() == []
    assert await door.entries(arranged["id"], "hook.status") == [actor]


async def _frozen_now(door: Door, arranged: dict[str, Any], body: Any, actor: str) -> None:
    assert (body["scope"], body["owner"]) == ("freeze", actor)
    assert [(lock["scope"], lock["owner"]) for lock in await door.deployer.release.locks()] == [("freeze", actor)]
    assert [e["actor"] for e in await door.log() if e["kind"] == "freeze.set"] == [actor]


async def _thawed(door: Door, arranged: dict[str, Any], body: Any, actor: str) -> None:
    assert (body["released"], body["lock"]["scope"]) == (True, "freeze")
    assert await door.deployer.release.locks() == []
    assert [e["actor"] for e in await door.log() if e["kind"] == "freeze.released"] == [actor]


async def _token_issued(door: Door, arranged: dict[str, Any], body: Any, actor: str) -> None:
    assert (body["user"], body["name"], body["status"]) == ("nobody", "issued", "active")
    async with door.client.get("/api/v1/locks", headers={"Authorization": f"Bearer {body['token']}"}) as response:
        assert response.status == 200  # the token works
    created = [e for e in await door.log() if e["kind"] == "token.created" and e["data"]["name"] == "issued"]
    assert [(e["actor"], e["data"]["token_id"]) for e in created] == [(actor, body["id"])]


async def _tokens_listed(door: Door, arranged: dict[str, Any], body: Any, actor: str) -> None:
    listed = {(t["user"], t["name"], t["status"]) for t in body["tokens"]}
    assert {(user, "matrix", "active") for user in ("root", "dev", "rel", "appr", "rb", "nobody", "ci")} <= listed
    assert (BOOTSTRAP_ADMIN, "bootstrap", "active") in listed and not any("token" in t for t in body["tokens"])


async def _token_revoked(door: Door, arranged: dict[str, Any], body: Any, actor: str) -> None:
    assert (body["id"], body["status"]) == (arranged["token_id"], "revoked")
    async with door.client.get("/api/v1/locks", headers={"Authorization": f"Bearer {arranged['token']}"}) as response:
        assert response.status == 401
    revoked = [e for e in await door.log() if e["kind"] == "token.revoked"]
    assert [(e["actor"], e["data"]["token_id"]) for e in revoked] == [(actor, arranged["token_id"])]


async def _agent_token_issued(door: Door, arranged: dict[str, Any], body: Any, actor: str) -> None:
    assert (body["name"], body["rotated"]) == (AGENT, False)
    assert door.deployer.fleet.authenticate(body["token"]) == AGENT
    issued = [e for e in await door.log() if e["kind"] == "agent_token.issued"]
    assert [(e["actor"], e["data"]) for e in issued] == [(actor, {"host": AGENT})]


def _on(arranged: dict[str, Any], suffix: str) -> str:
    return f"/deployments/{arranged['id']}/{suffix}"


def _where(arranged: dict[str, Any]) -> dict[str, Any]:
    env: Env = arranged["env"]
    return {"application": env.application, "environment": env.environment}


GROUP_ROUTES = [
    Route(
        "deploy",
        Action.DEPLOY,
        _nothing,
        lambda a: ("POST", "/deployments", _where(a)),
        201,
        _deployed,
    ),
    Route(
        "promote",
        Action.DEPLOY,
        _nothing,
        lambda a: (
            "POST",
            f"/applications/{a['env'].application}/promote",
            {"from": a["env"].source, "to": a["env"].environment},
        ),
        201,
        _promoted,
    ),
    Route("stop", Action.CONTROL, _running, lambda a: ("POST", _on(a, "stop"), {}), 200, _stopped),
    Route(
        "stop+rollback",
        Action.ROLLBACK,
        _running,
        lambda a: ("POST", _on(a, "stop"), {"rollback": True}),
        200,
        _stopped_with_rollback,
    ),
    Route("pause", Action.CONTROL, _running, lambda a: ("POST", _on(a, "pause"), None), 200, _controlled("pause")),
    Route("resume", Action.CONTROL, _paused, lambda a: ("POST", _on(a, "resume"), None), 200, _controlled("resume")),
    Route(
        "continue", Action.CONTROL, _running, lambda a: ("POST", _on(a, "continue"), None), 200, _controlled("continue")
    ),
    Route(
        "promote-traffic",
        Action.CONTROL,
        _running,
        lambda a: ("POST", _on(a, "promote"), None),
        200,
        _controlled("promote"),
    ),
    Route(
        "rollback",
        Action.ROLLBACK,
        _nothing,
        lambda a: ("POST", f"/applications/{a['env'].application}/environments/{a['env'].environment}/rollback", None),
        201,
        _rolled_back,
    ),
    Route(
        "lock", Action.LOCK, _nothing, lambda a: ("POST", "/locks", {**_where(a), "reason": "matrix"}), 201, _lock_set
    ),
    Route("unlock", Action.LOCK, _locked, lambda a: ("DELETE", "/locks", _where(a)), 200, _lock_released),
    Route("approve", Action.APPROVE, _waiting, lambda a: ("POST", _on(a, "approve"), None), 200, _approved),
    Route(
        "reject", Action.APPROVE, _waiting, lambda a: ("POST", _on(a, "reject"), {"reason": "matrix"}), 200, _rejected
    ),
    Route(
        "hook-status",
        Action.CONTROL,
        _hook,
        lambda a: ("PUT", f"/lifecycle-hooks/{a['execution'].execution_id}", {"status": "Succeeded"}),
        200,
        _hook_reported,
    ),
]

ADMIN_ROUTES = [
    Route(
        "freeze",
        Action.FREEZE,
        _empty,
        lambda a: ("POST", "/locks", {"application": "*", "reason": "matrix"}),
        201,
        _frozen_now,
    ),
    Route("unfreeze", Action.FREEZE, _frozen, lambda a: ("DELETE", "/locks", {"application": "*"}), 200, _thawed),
    Route(
        "token-create",
        Action.ADMIN,
        _empty,
        lambda a: ("POST", "/tokens", {"user": "nobody", "name": "issued"}),
        201,
        _token_issued,
    ),
    Route("token-list", Action.ADMIN, _empty, lambda a: ("GET", "/tokens", None), 200, _tokens_listed),
    Route(
        "token-revoke",
        Action.ADMIN,
        _spare_token,
        lambda a: ("DELETE", f"/tokens/{a['token_id']}", None),
        200,
        _token_revoked,
    ),
    Route(
        "agent-token",
        Action.ADMIN,
        _empty,
        lambda a: ("POST", "/agent-tokens", {"name": AGENT}),
        201,
        _agent_token_issued,
    ),
]
ROUTES = {route.name: route for route in (*GROUP_ROUTES, *ADMIN_ROUTES)}


# ---------------------------------------------------------------------------------------------------- the cells


async def cell(door: Door, route: Route, env: Env | None, caller: str, *, forged: bool = False) -> int:
    """One request, and what must follow from it: the effect (allowed), a 403 and nothing else (refused), or a 401.
    Returns the audit log's length before the request."""
    arranged = await route.arrange(door, env)
    method, path, body = route.request(arranged)
    before, mark = await door.state(), len(await door.log())
    status, answer = await door.call(caller, method, path, json=body, forged=forged)
    actor = ACTOR[caller]
    if caller == "anonymous":
        assert (status, answer["error"], answer["reason"]) == (401, "Unauthorized", "missing"), answer
        assert (await door.log())[mark:] == []
        assert await door.state() == before
        return mark
    rule = refusal(caller, env, route.action)
    if rule is None:
        assert status == route.status, answer
        await route.effect(door, arranged, answer, actor)
        assert "access.denied" not in {e["kind"] for e in await door.log()}
        return mark
    target = env.group if env is not None else "*"
    assert status == 403, answer
    assert answer == {
        "error": "Forbidden",
        "message": f"{actor} may not {VERBS[route.action]} on {target}: {rule}",
        "actor": actor,
        "action": str(route.action),
        "target": target,
        "rule": rule,
    }
    new = (await door.log())[mark:]
    assert [(e["kind"], e["actor"], e["data"]) for e in new] == [
        ("access.denied", actor, {"door": "api", "action": str(route.action), "target": target, "rule": rule})
    ]
    assert await door.state() == before
    return mark


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("env", ENVS.values(), ids=ENVS.keys())
@pytest.mark.parametrize("route", GROUP_ROUTES, ids=repr)
async def test_group_route(door: Door, route: Route, env: Env, caller: str) -> None:
    await cell(door, route, env, caller)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("route", ADMIN_ROUTES, ids=repr)
async def test_admin_route(door: Door, route: Route, caller: str) -> None:
    await cell(door, route, None, caller)


# ---------------------------------------------------------------------------------------------------- reads


def _ids(body: Any) -> set[str]:
    return {d["id"] for d in body["deployments"]}


# path -> what the answer must show (the arranged state: a lock on shop-staging, a deployment waiting for approval
# in shop-production, a hook execution waiting on a running deployment of shop-staging)
READS: dict[str, Callable[[Any, Template, dict[str, str]], bool]] = {
    "/deployments": lambda body, t, a: set(t.current.values()) | {a["waiting"], a["running"]} <= _ids(body),
    "/deployments?application=vault&environment=production": lambda body, t, a: (
        {d["group"] for d in body["deployments"]} == {"vault-production"} and len(body["deployments"]) == 2
    ),
    "/deployments/{waiting}": lambda body, t, a: (body["id"], body["status"]) == (a["waiting"], "WaitingApproval"),
    "/deployments/{waiting}/log": lambda body, t, a: [e["kind"] for e in body] == ["deployment.requested"],
    "/deployments/{running}/watch?wait=0": lambda body, t, a: (
        (body["id"], body["status"]) == (a["running"], "InProgress")
    ),
    "/applications": lambda body, t, a: [app["name"] for app in body["applications"]] == ["shop", "vault"],
    "/applications/shop/where": lambda body, t, a: (
        [e["deployment_id"] for e in body["environments"]]
        == [t.current[f"shop-{env}"] for env in ("dev", "staging", "production")]
    ),
    "/locks": lambda body, t, a: (
        [(lock["environment"], lock["owner"]) for lock in body["locks"]] == [("staging", "ci")]
    ),
    "/queue": lambda body, t, a: [d["id"] for d in body["queue"]] == [a["waiting"]],
    "/hosts": lambda body, t, a: [h["name"] for h in body["hosts"]] == list(HOSTS.values()),
    "/lifecycle-hooks": lambda body, t, a: [e["execution_id"] for e in body["executions"]] == [a["execution"]],
}


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("path", READS)
async def test_reads_need_any_valid_token(door: Door, path: str, caller: str) -> None:
    hooked = await _hook(door, ENVS["staging"])
    await door.deployer.release.lock("shop", "staging", actor="ci", reason="arranged")
    arranged = {
        "waiting": await door.waiting(ENVS["listed"]),
        "running": hooked["id"],
        "execution": hooked["execution"].execution_id,
    }
    before, mark = await door.state(), len(await door.log())
    status, body = await door.call(caller, "GET", path.format(**arranged))
    if caller == "anonymous":
        assert (status, body["reason"]) == (401, "missing")
    else:
        assert status == 200, body
        assert READS[path](body, door.template, arranged), body
    assert (await door.log())[mark:] == [] and await door.state() == before


# ---------------------------------------------------------------------------------------------------- who asks


FORGED = [
    *[pytest.param(route, "listed", "nobody", id=f"{route.name}-listed-nobody") for route in GROUP_ROUTES],
    *[pytest.param(route, None, "dev", id=f"{route.name}-dev") for route in ADMIN_ROUTES],
    # allowed cells: the effect names the token's user, not the header's
    pytest.param(ROUTES["deploy"], "staging", "nobody", id="deploy-staging-nobody"),
    pytest.param(ROUTES["lock"], "listed", "rel", id="lock-listed-rel"),
]


@pytest.mark.parametrize(("route", "env", "caller"), FORGED)
async def test_a_forged_actor_header_changes_nothing(door: Door, route: Route, env: str | None, caller: str) -> None:
    """Every request carries ``X-Deploybot-Actor: root``; each cell must come out exactly as without it."""
    mark = await cell(door, route, ENVS[env] if env else None, caller, forged=True)
    assert {e["actor"] for e in (await door.log())[mark:]} <= {ACTOR[caller], "deploybot"}


# ---------------------------------------------------------------------------------------------------- withdrawing


@pytest.mark.parametrize(
    ("env", "requester"),
    [("staging", "nobody"), ("listed", "dev"), ("listed", "rel"), ("closed", "root"), ("closed", "boot")],
)
async def test_the_requester_may_withdraw_their_own_request(door: Door, env: str, requester: str) -> None:
    """/reject by whoever asked for the deployment (through the API) and may control the group: withdrawn."""
    where = {"application": ENVS[env].application, "environment": ENVS[env].environment}
    status, requested = await door.call(requester, "POST", "/deployments", json=where)
    assert (status, requested["status"]) == (201, "WaitingApproval"), requested
    status, body = await door.call(
        requester, "POST", f"/deployments/{requested['id']}/reject", json={"reason": "matrix"}
    )
    assert status == 200, body
    await _rejected(door, {"id": requested["id"]}, body, ACTOR[requester])
    assert "access.denied" not in {e["kind"] for e in await door.log()}
