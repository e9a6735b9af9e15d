"""Who may do what from Slack: every command and button by every kind of caller by three kinds of environment, through
signed requests to the real bolt app on a real Deployer (SQLite, scripted agents) and a fake Slack Web API.

The expected answers are written out here (ALLOWED, RULES), not computed with ``engine.may``: the door must agree
with the rule as the docs state it. An allowed cell must really happen, by the caller's deploybot user (the
deployment, lock, approval, stop or control is there, with that actor); a refused one must answer who, what and the
rule, and change nothing.

Isolation: every caller gets applications of their own (``plain-<who>`` with environments dev, staging, production
and no lists; ``shop-<who>`` with staging and a production that lists deployers, approvers and rollbackers), so the
21 cells of one command or button run against one server, each in its own deployment group.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from conftest import HANG_GUARD, eventually
from fake_slack import FakeSlack
from slack_support import BOT_TOKEN, SECRET, ScriptedAgents, button_body, signed, slash_body, texts

from bot.app import create_app
from bot.assembly import assemble_deployer
from bot.messages import ButtonState
from bot.settings import Settings
from bot.slack.app import SLACK
from engine import ROLLBACK_CREATOR, Action, DeployRequest
from engine.core.config.parse import parse_config
from engine.runtime.deployer import Deployer

APPSPEC = "version: 0.0\nos: linux\nfiles:\n  - source: VERSION\n    destination: /opt/app\n"
ACTIVE = ("Created", "InProgress", "Ready", "Baking")

# The kinds of caller: their Slack id, and the deploybot user it maps to (None: no users entry claims it).
CALLERS: dict[str, tuple[str, str | None]] = {
    "admin": ("U0ROOT", "root"),
    "listed deployer": ("U0DANA", "dana"),
    "role member": ("U0RITA", "rita"),  # in @release, which production's deployers list
    "approver": ("U0APRIL", "april"),
    "rollbacker": ("U0ROB", "rob"),
    "unmapped Slack user": ("U0NOBODY", None),
    "mapped, unlisted": ("U0MARK", "mark"),
}
# The kinds of environment: (application prefix, environment).
ENVIRONMENTS: dict[str, tuple[str, str]] = {
    "staging, no lists": ("plain", "staging"),
    "production, no lists": ("plain", "production"),
    "production, with lists": ("shop", "production"),
}
GROUP_ACTIONS = (Action.DEPLOY, Action.CONTROL, Action.ROLLBACK, Action.APPROVE, Action.LOCK)
EVERYONE = frozenset({"root", "dana", "rita", "april", "rob", "mark"})
RELEASE = frozenset({"root", "dana", "rita"})
ALLOWED: dict[str, dict[Action, frozenset[str]]] = {
    "staging, no lists": dict.fromkeys(GROUP_ACTIONS, EVERYONE),
    "production, no lists": dict.fromkeys(GROUP_ACTIONS, frozenset({"root"})),
    "production, with lists": {
        Action.DEPLOY: RELEASE,
        Action.CONTROL: RELEASE,
        Action.LOCK: RELEASE,
        Action.ROLLBACK: frozenset({"root", "rob"}),
        Action.APPROVE: frozenset({"root", "april"}),
    },
}
# What a refusal names as the rule ({group}: the deployment group's name).
RULES: dict[str, dict[Action, str]] = {
    "production, no lists": {
        Action.DEPLOY: "{group} has no deployers list: production needs one",
        Action.CONTROL: "{group} has no deployers list: production needs one",
        Action.LOCK: "{group} has no deployers list: production needs one",
        Action.ROLLBACK: "{group} has no rollbackers or deployers list: production needs one",
        Action.APPROVE: "{group} has no approvers list: production needs one",
    },
    "production, with lists": {
        Action.DEPLOY: "{group}.deployers: dana, @release",
        Action.CONTROL: "{group}.deployers: dana, @release",
        Action.LOCK: "{group}.deployers: dana, @release",
        Action.ROLLBACK: "{group}.rollbackers: rob",
        Action.APPROVE: "{group}.approvers: april",
    },
}


def key_of(caller: str) -> str:
    return (CALLERS[caller][1] or "nobody").lower()


def config_text(*, approvals: bool) -> str:
    """Every caller's own applications; with ``approvals``, the groups under test need one approval."""
    needs = ", required_approvals: 1" if approvals else ""
    users = "".join(f"  {user}: {{slack: {slack}}}\n" for slack, user in CALLERS.values() if user)
    hosts, apps = [], []
    for caller in CALLERS:
        key = key_of(caller)
        plain, shop = f"plain-{key}", f"shop-{key}"
        hosts += [f"h-{plain}-dev", f"h-{plain}-staging", f"h-{plain}-production", f"h-{shop}-staging"]
        hosts += [f"h-{shop}-production"]

        def group(app: str, env: str, extra: str = "") -> str:
            return (
                f"      {env}: {{deployment_config: CodeDeployDefault.AllAtOnce, "
                f"targets: {{hosts: [h-{app}-{env}]}}{extra}}}\n"
            )

        lists = ", deployers: [dana, '@release'], approvers: [april], rollbackers: [rob]"
        apps.append(
            f"  {plain}:\n    revision: rev-a\n    slack_channel: '#deploys'\n"
            "    environments: [dev, staging, production]\n    deployment_groups:\n"
            + group(plain, "dev")
            + group(plain, "staging", needs)
            + group(plain, "production", needs)
        )
        apps.append(
            f"  {shop}:\n    revision: rev-a\n    slack_channel: '#deploys'\n"
            "    environments: [staging, production]\n    deployment_groups:\n"
            + group(shop, "staging")
            + group(shop, "production", lists + needs)
        )
    return (
        "server: {data_dir: var, admins: [root]}\n"
        f"users:\n{users}"
        "roles: {release: [rita]}\n"
        "hosts:\n" + "".join(f"  - {{name: {h}}}\n" for h in hosts) + "applications:\n" + "".join(apps)
    )


def make_revision(root: Path, name: str, version: str) -> None:
    (root / name).mkdir()
    (root / name / "appspec.yml").write_text(APPSPEC)
    (root / name / "VERSION").write_text(version)


class Rig:
    def __init__(self, slack: FakeSlack, deployer: Deployer, url: str, session: ClientSession, app: Any, root: Path):
        self.slack, self.deployer, self.url, self.session, self.app, self.root = (
            slack,
            deployer,
            url,
            session,
            app,
            root,
        )

    async def post(self, body: str) -> str:
        """Send a signed request; what Slack is answered at once (the acknowledgement)."""
        async with self.session.post(self.url + "/slack/events", data=body, headers=signed(body)) as response:
            assert response.status == 200, await response.text()
            return await response.text()

    async def command(self, text: str, *, user: str, reply_to: str) -> str:
        return await self.post(slash_body(text, user=user, response_url=self.slack.response_url(reply_to)))

    async def click(self, action: str, deployment_id: str, *, user: str, reply_to: str) -> None:
        """Click the button as the thread renders it for the deployment's state now (bot.messages.ButtonState)."""
        doc = await self.deployer.get(deployment_id)
        value = ButtonState.of(doc, with_revision=action == "promote").to_value()
        await self.post(button_body(action, value, user=user, response_url=self.slack.response_url(reply_to)))

    def replies(self, reply_to: str) -> list[str]:
        return [str(body.get("text")) for name, body in self.slack.responses if name == reply_to]

    async def settle(self) -> None:
        chatops = self.app[SLACK].chatops
        await chatops.drain(HANG_GUARD)
        assert not chatops._tasks, "Slack work still running"

    async def final(self, deployment_id: str) -> dict[str, Any]:
        async with asyncio.timeout(HANG_GUARD):
            while True:
                doc = await self.deployer.watch(deployment_id, after=0, timeout=0.2)
                if doc["status"] in ("Succeeded", "Failed", "Stopped"):
                    return doc

    async def deployed(self, app: str, env: str, revision: str = "rev-a") -> dict[str, Any]:
        """A deployment by someone else ("cli"), run to its end."""
        doc = await self.deployer.start(DeployRequest(app, env, revision=str(self.root / revision), actor="cli"))
        done = await self.final(doc["id"])
        assert done["status"] == "Succeeded", done
        return done

    async def log(self, kind: str, deployment_id: str | None = None) -> list[dict[str, Any]]:
        return [e for e in await self.deployer.store.read_log(deployment_id=deployment_id) if e["kind"] == kind]


@contextlib.asynccontextmanager
async def open_rig(root: Path, config: str, *, agents: bool = True) -> AsyncIterator[Rig]:
    """deploybot with Slack on, for ``config``; ``agents``: every host answers at once, else none ever answers (a
    deployment stays in progress)."""
    make_revision(root, "rev-a", "1")
    make_revision(root, "rev-b", "2")
    deployer = await assemble_deployer(
        parse_config(config, filename="test.yml", base_dir=str(root)), data_dir=root / "var"
    )
    hosts = list(deployer.config.hosts) if agents else []
    scripted = ScriptedAgents(deployer, hosts)
    async with FakeSlack() as slack:
        settings = Settings(
            data_dir=root / "var", slack_bot_token=BOT_TOKEN, slack_signing_secret=SECRET, slack_api_url=slack.api_url
        )
        app = create_app(settings, deployer=deployer)
        app[SLACK].notifier.min_edit_interval = 0.0  # no throttled edit left to wait for at the end
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            async with ClientSession() as session:
                yield Rig(slack, deployer, str(server.make_url("")).rstrip("/"), session, app, root)
        finally:
            await server.close()
            await scripted.close()
            await deployer.close()


# -- the cells ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cell:
    caller: str
    environment: str
    app: str
    env: str

    @property
    def slack_id(self) -> str:
        return CALLERS[self.caller][0]

    @property
    def user(self) -> str | None:
        return CALLERS[self.caller][1]

    @property
    def group(self) -> str:
        return f"{self.app}-{self.env}"

    @property
    def reply_to(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", f"{self.caller}-{self.environment}")

    def allowed(self, action: Action) -> bool:
        return self.user in ALLOWED[self.environment][action]

    def shown(self) -> str:
        return f"<@{self.slack_id}>" + (f" ({self.user})" if self.user else "")


def cells() -> list[Cell]:
    found = []
    for caller in CALLERS:
        for environment, (prefix, env) in ENVIRONMENTS.items():
            found.append(Cell(caller, environment, f"{prefix}-{key_of(caller)}", env))
    return found


def previous(cell: Cell) -> str:
    return {"staging": "dev", "production": "staging"}[cell.env]


Prepare = Callable[[Rig, Cell], Awaitable[str | None]]
Send = Callable[[Rig, Cell, str | None], Awaitable[None]]
Observe = Callable[[Rig, Cell, str | None], Awaitable[str]]
DONE, UNCHANGED = "done", "unchanged"


@dataclass(frozen=True, slots=True)
class Entry:
    """One way in (a command or a button), the Action it is, how to set up its cell, send it and see its effect:
    ``observe`` says DONE (it happened, by the cell's user), UNCHANGED, or what else it found."""

    action: Action
    send: Send
    observe: Observe
    prepare: Prepare | None = None
    approvals: bool = False  # the groups under test need an approval (a deployment to stop, approve or reject)
    agents: bool = True  # False: nothing ever finishes (a deployment to pause, resume or continue)


async def _nothing(rig: Rig, cell: Cell) -> str | None:
    return None


def _command(text: str) -> Send:
    async def send(rig: Rig, cell: Cell, deployment_id: str | None) -> None:
        words = text.format(app=cell.app, env=cell.env, id=deployment_id, previous=previous(cell))
        await rig.command(words, user=cell.slack_id, reply_to=cell.reply_to)

    return send


def _button(action: str) -> Send:
    async def send(rig: Rig, cell: Cell, deployment_id: str | None) -> None:
        assert deployment_id is not None
        await rig.click(action, deployment_id, user=cell.slack_id, reply_to=cell.reply_to)

    return send


async def _deployments_by(rig: Rig, app: str, env: str, actor: str | None) -> str:
    """DONE when the one deployment there, besides the ones the test made ("cli"), is by ``actor``."""
    docs = [d for d in await rig.deployer.history(app, env) if d["created_by"] != "cli"]
    if not docs:
        return UNCHANGED
    requested = {e["actor"] for d in docs for e in await rig.log("deployment.requested", d["id"])}
    if [d["created_by"] for d in docs] == [actor] and requested == {actor}:
        return DONE
    return f"deployments by {[d['created_by'] for d in docs]} (requested by {sorted(requested)})"


# deploy: a new deployment by the user
async def _observe_deploy(rig: Rig, cell: Cell, _: str | None) -> str:
    return await _deployments_by(rig, cell.app, cell.env, cell.user)


# promote: a deployment that succeeded in the environment before; a new one in the target, by the user
async def _prepare_promote(rig: Rig, cell: Cell) -> str | None:
    return str((await rig.deployed(cell.app, previous(cell)))["id"])


async def _observe_promote(rig: Rig, cell: Cell, _: str | None) -> str:
    found = await _deployments_by(rig, cell.app, cell.env, cell.user)
    if found == DONE:
        [doc] = [d for d in await rig.deployer.history(cell.app, cell.env) if d["created_by"] != "cli"]
        return DONE if doc["source"] == "promotion" else f"a {doc['source']} deployment"
    return found


# rollback: two successes; a rollback deployment asked for by the user
async def _prepare_rollback(rig: Rig, cell: Cell) -> str | None:
    await rig.deployed(cell.app, cell.env, "rev-a")
    return str((await rig.deployed(cell.app, cell.env, "rev-b"))["id"])


async def _observe_rollback(rig: Rig, cell: Cell, latest: str | None) -> str:
    docs = await rig.deployer.history(cell.app, cell.env)
    rollbacks = [d for d in docs if d["rollback"]["of"]]
    if len(docs) == 2 and not rollbacks:
        return UNCHANGED
    asked = [e["actor"] for e in await rig.log("rollback.requested", latest)]
    if len(docs) == 3 and [d["created_by"] for d in rollbacks] == [ROLLBACK_CREATOR] and asked == [cell.user]:
        return DONE
    return f"{len(docs)} deployments, rollbacks {[d['id'] for d in rollbacks]} asked by {asked}"


# lock, unlock
async def _lock_of(rig: Rig, cell: Cell) -> dict[str, Any] | None:
    wanted = (cell.app, cell.env)
    return next(
        (lock for lock in await rig.deployer.release.locks() if (lock["application"], lock["environment"]) == wanted),
        None,
    )


async def _observe_lock(rig: Rig, cell: Cell, _: str | None) -> str:
    lock = await _lock_of(rig, cell)
    if lock is None:
        return UNCHANGED
    return DONE if lock["owner"] == cell.user else f"locked by {lock['owner']}"


async def _prepare_unlock(rig: Rig, cell: Cell) -> str | None:
    await rig.deployer.release.lock(cell.app, cell.env, actor="cli", reason="db work")
    return None


async def _observe_unlock(rig: Rig, cell: Cell, _: str | None) -> str:
    lock = await _lock_of(rig, cell)
    if lock is not None:
        return UNCHANGED if lock["owner"] == "cli" else f"locked by {lock['owner']}"
    released = [e["actor"] for e in await rig.log("lock.released")]
    return DONE if cell.user in released else f"released by {released}"


# stop, approve, reject: a deployment waiting for approval
async def _prepare_waiting(rig: Rig, cell: Cell) -> str | None:
    doc = await rig.deployer.start(DeployRequest(cell.app, cell.env, actor="cli"))
    assert doc["status"] == "WaitingApproval", doc
    return str(doc["id"])


def _observe_decided(action: str, status: str, kind: str) -> Observe:
    """``kind``: the audit entry the engine writes for it, by the actor."""

    async def observe(rig: Rig, cell: Cell, deployment_id: str | None) -> str:
        assert deployment_id is not None
        doc = await rig.deployer.get(deployment_id)
        by = [e["actor"] for e in await rig.log(kind, deployment_id)]
        if doc["status"] == "WaitingApproval" and not by:
            return UNCHANGED
        if doc["status"] == status or (action == "approve" and doc["status"] != "WaitingApproval"):
            return DONE if by == [cell.user] else f"{action} by {by}"
        return f"{doc['status']}, {kind} by {by}"

    return observe


# pause, resume, continue: a deployment in progress (no agent answers)
async def _prepare_running(rig: Rig, cell: Cell) -> str | None:
    doc = await rig.deployer.start(DeployRequest(cell.app, cell.env, actor="cli"))

    async def running() -> bool:
        return (await rig.deployer.get(doc["id"]))["status"] in ACTIVE

    await eventually(running, f"{doc['id']} in progress")
    return str(doc["id"])


async def _prepare_paused(rig: Rig, cell: Cell) -> str | None:
    """A deployment in progress that someone paused (so it shows Resume)."""
    deployment_id = await _prepare_running(rig, cell)
    assert deployment_id is not None
    await rig.deployer.control(deployment_id, "pause", actor="cli")

    async def paused() -> bool:
        return bool((await rig.deployer.get(deployment_id))["paused"])

    await eventually(paused, f"{deployment_id} paused")
    return deployment_id


def _observe_control(action: str) -> Observe:
    async def observe(rig: Rig, cell: Cell, deployment_id: str | None) -> str:
        by = [e["actor"] for e in await rig.log(f"deployment.{action}", deployment_id)]
        if not by:
            return UNCHANGED
        return DONE if by == [cell.user] else f"{action} by {by}"

    return observe


ENTRIES: dict[str, Entry] = {
    "command deploy": Entry(Action.DEPLOY, _command("{app} to {env}"), _observe_deploy),
    "command promote": Entry(Action.DEPLOY, _command("promote {app} to {env}"), _observe_promote, _prepare_promote),
    "command rollback": Entry(
        Action.ROLLBACK, _command("rollback {app} in {env}"), _observe_rollback, _prepare_rollback
    ),
    "command lock": Entry(Action.LOCK, _command("lock {app} {env} db work"), _observe_lock),
    "command unlock": Entry(Action.LOCK, _command("unlock {app} {env}"), _observe_unlock, _prepare_unlock),
    "command stop": Entry(
        Action.CONTROL,
        _command("stop {id}"),
        _observe_decided("stop", "Stopped", "deployment.stop_requested"),
        _prepare_waiting,
        approvals=True,
    ),
    "command approve": Entry(
        Action.APPROVE,
        _command("approve {id}"),
        _observe_decided("approve", "Queued", "approval.granted"),
        _prepare_waiting,
        approvals=True,
    ),
    "command reject": Entry(
        Action.APPROVE,
        _command("reject {id} not today"),
        _observe_decided("reject", "Stopped", "approval.rejected"),
        _prepare_waiting,
        approvals=True,
    ),
    "button stop": Entry(
        Action.CONTROL,
        _button("stop"),
        _observe_decided("stop", "Stopped", "deployment.stop_requested"),
        _prepare_waiting,
        approvals=True,
    ),
    "button pause": Entry(Action.CONTROL, _button("pause"), _observe_control("pause"), _prepare_running, agents=False),
    "button resume": Entry(
        Action.CONTROL, _button("resume"), _observe_control("resume"), _prepare_paused, agents=False
    ),
    "button continue": Entry(
        Action.CONTROL, _button("continue"), _observe_control("continue"), _prepare_running, agents=False
    ),
    "button approve": Entry(
        Action.APPROVE,
        _button("approve"),
        _observe_decided("approve", "Queued", "approval.granted"),
        _prepare_waiting,
        approvals=True,
    ),
    "button reject": Entry(
        Action.APPROVE,
        _button("reject"),
        _observe_decided("reject", "Stopped", "approval.rejected"),
        _prepare_waiting,
        approvals=True,
    ),
    "button promote": Entry(Action.DEPLOY, _button("promote"), _observe_promote, _prepare_promote),
    "button rollback": Entry(Action.ROLLBACK, _button("rollback"), _observe_rollback, _prepare_rollback),
}
CELLS = cells()


@pytest.mark.parametrize("entry", ENTRIES.values(), ids=ENTRIES.keys())
async def test_every_caller_in_every_environment(tmp_path: Path, entry: Entry) -> None:
    """The 21 cells (7 callers by 3 environments) of one command or button, on one server."""
    async with open_rig(tmp_path, config_text(approvals=entry.approvals), agents=entry.agents) as rig:
        prepare = entry.prepare or _nothing
        targets = await asyncio.gather(*(prepare(rig, cell) for cell in CELLS))
        for cell, target in zip(CELLS, targets, strict=True):
            await entry.send(rig, cell, target)
        await rig.settle()
        wrong = []
        for cell, target in zip(CELLS, targets, strict=True):
            allowed = cell.allowed(entry.action)
            found = await entry.observe(rig, cell, target)
            replies = rig.replies(cell.reply_to)
            refusals = [r for r in replies if r.startswith((":no_entry:", ":warning:"))]
            if allowed:
                ok = found == DONE and refusals == []
            elif cell.user is None:
                said = f"ask an admin to add `slack: {cell.slack_id}` under users:"
                ok = found == UNCHANGED and len(refusals) == 1 and refusals[0].endswith(said)
                ok = ok and refusals[0].startswith(f":no_entry: <@{cell.slack_id}> may not ")
            else:
                rule = RULES[cell.environment][entry.action].format(group=cell.group)
                ok = found == UNCHANGED and len(refusals) == 1 and refusals[0].endswith(f"(rule: {rule})")
                ok = ok and refusals[0].startswith(f":no_entry: {cell.shown()} may not ")
            if not ok:
                wrong.append(f"{cell.caller} / {cell.environment}: allowed={allowed}, found {found}, said {replies}")
        assert wrong == []


# -- freeze: no group, admins only ----------------------------------------------------------------------------------


async def test_only_admins_freeze_and_lift_the_freeze(tmp_path: Path) -> None:
    """The 14 cells of ``/deploy freeze`` and ``/deploy unfreeze`` by 7 callers."""
    async with open_rig(tmp_path, config_text(approvals=False), agents=False) as rig:
        release = rig.deployer.release

        async def frozen_by() -> str | None:
            return next((lock["owner"] for lock in await release.locks() if lock["scope"] == "freeze"), None)

        wrong = []
        for caller, (slack_id, user) in CALLERS.items():
            for verb in ("freeze", "unfreeze"):
                if verb == "unfreeze":
                    await release.lock("*", "*", actor="root", reason="release week")
                reply_to = f"{verb}-{key_of(caller)}"
                await rig.command(
                    f"{verb} release week" if verb == "freeze" else verb, user=slack_id, reply_to=reply_to
                )
                await rig.settle()
                owner = await frozen_by()
                [said] = rig.replies(reply_to)
                if user == "root":
                    ok = owner == ("root" if verb == "freeze" else None)
                    ok = ok and said.startswith(":ice_cube:" if verb == "freeze" else ":sunny:")
                else:
                    ok = owner == (None if verb == "freeze" else "root")
                    why = "(rule: only admins may freeze deployments (server.admins))" if user else "under users:"
                    ok = ok and said.startswith(":no_entry:") and said.endswith(why)
                if not ok:
                    wrong.append(f"{caller} {verb}: frozen by {owner}, said {said!r}")
                if owner is not None:
                    await release.unlock("*", "*", actor="root")
        assert wrong == []
        help_text = await rig.command("help", user="U0NOBODY", reply_to="help")
        assert "`/deploy freeze [reason]`" in help_text and "`/deploy unfreeze`" in help_text


# -- who is shown ---------------------------------------------------------------------------------------------------

SHOWN_CONFIG = """
server: {data_dir: var}
users:
  rob: {slack: U0ROB}
  mark: {slack: U0MARK}
hosts: [{name: s1}, {name: p1}]
applications:
  web:
    revision: rev-a
    slack_channel: "#deploys"
    environments: [staging, production]
    deployment_groups:
      staging: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [s1]}}
      production: {targets: {hosts: [p1]}, deployers: [rob]}
"""


async def test_threads_show_people_as_mentions_and_a_rollback_as_whoever_asked(tmp_path: Path) -> None:
    async with open_rig(tmp_path, SHOWN_CONFIG) as rig:
        notifier = rig.app[SLACK].notifier
        await rig.deployed("web", "staging", "rev-b")
        await rig.command("web to staging", user="U0MARK", reply_to="deploy")  # mapped: acts as "mark"
        await rig.settle()
        [mine] = [d for d in await rig.deployer.history("web", "staging") if d["created_by"] == "mark"]
        await rig.final(mine["id"])

        await rig.click("rollback", mine["id"], user="U0ROB", reply_to="rollback")
        await rig.settle()
        rollback_id = (await rig.deployer.get(mine["id"]))["rollback"]["by"]
        assert rollback_id
        rollback = await rig.final(rollback_id)
        assert rollback["created_by"] == ROLLBACK_CREATOR  # the engine's creator, as CodeDeploy's ...
        assert [e["actor"] for e in await rig.log("rollback.requested")] == ["rob"]  # ... and who asked
        await rig.command("rollback web in staging", user="U0ROB", reply_to="again")  # the command: the same
        await rig.settle()
        [again] = [d for d in await rig.deployer.history("web", "staging") if d["rollback"]["of"] == rollback_id]
        await rig.final(again["id"])
        await rig.click("promote", mine["id"], user="U0MARK", reply_to="promote")  # production lists rob only
        await rig.settle()
        await notifier.idle(HANG_GUARD)

        def thread_of(deployment_id: str) -> tuple[list[str], str]:
            """The replies in a deployment's thread, and its parent message as last edited."""
            where = notifier.thread_of(deployment_id)
            assert where is not None
            posted = rig.slack.of("chat.postMessage")
            replies = [c.payload["text"] for c in posted if c.payload.get("thread_ts") == where[1]]
            edits = [c.payload for c in rig.slack.of("chat.update") if c.payload["ts"] == where[1]]
            assert edits, f"the parent message of {deployment_id} was never edited"
            return replies, texts(edits[-1]["blocks"])

        replies, parent = thread_of(mine["id"])
        assert "*Started by*\n<@U0MARK>" in parent  # a declared user with a Slack id: a mention
        assert f":rewind: Rollback started: `{rollback_id}` by <@U0ROB>" in replies
        assert f"<@U0ROB> (rob) clicked Rollback: rollback `{rollback_id}` started" in replies
        assert "<@U0MARK> (mark) clicked Promote: refused (rule: web-production.deployers: rob)" in parent
        assert rig.replies("promote") == [
            f":no_entry: <@U0MARK> (mark) may not promote `{mine['id']}` to production "
            "(rule: web-production.deployers: rob)"
        ]
        for rolled in (rollback_id, again["id"]):
            _, parent = thread_of(rolled)
            assert parent.startswith("Rollback: web → staging") and "*Started by*\n<@U0ROB>" in parent
        replies, _ = thread_of(rollback_id)
        assert f":rewind: Rollback started: `{again['id']}` by <@U0ROB>" in replies
