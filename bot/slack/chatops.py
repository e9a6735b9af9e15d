"""ChatOps: what a parsed ``/deploy`` command or a button click does — policy check, one engine call, a reply.

It runs after the acknowledgement, in a background task (engine calls may take seconds), and knows nothing of
bolt: replies go through a ``Reply`` callable (bolt's ``respond``, i.e. the request's ``response_url``), and what
happens to a deployment is shown on its thread by the SlackNotifier. Every refusal says why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

from slack_sdk.web.async_client import AsyncWebClient

from bot import commands as cmd
from bot.messages import ACTIVE, deployment_line, history_text, who
from bot.policy import Permission, SlackPolicy
from bot.slack.notifier import SlackNotifier
from bot.slack.replies import plan_text, where_text
from engine import FINAL_STATUSES, DeploymentService, DeployRequest, EngineError

log = logging.getLogger(__name__)

MEMBERSHIP_TTL_SECONDS = 60.0


class Reply(Protocol):
    async def __call__(self, text: str, *, in_channel: bool = False) -> None: ...


class GroupMembership:
    """Which of the given Slack user groups a user is in (``usergroups.users.list``, cached for a minute)."""

    def __init__(self, client: AsyncWebClient, ttl: float = MEMBERSHIP_TTL_SECONDS) -> None:
        self.client, self.ttl = client, ttl
        self._members: dict[str, tuple[float, frozenset[str]]] = {}

    async def groups_of(self, user: str, groups: tuple[str, ...]) -> frozenset[str]:
        found = set()
        for group in groups:
            cached = self._members.get(group)
            if cached is None or time.monotonic() - cached[0] > self.ttl:
                try:
                    answer = await self.client.usergroups_users_list(usergroup=group)
                    cached = (time.monotonic(), frozenset(answer.get("users") or ()))
                except Exception as exc:  # cannot tell: not a member (the refusal names the group)
                    log.warning("cannot list members of Slack user group %s: %s", group, exc)
                    cached = (time.monotonic() - self.ttl, frozenset())
                self._members[group] = cached
            if user in cached[1]:
                found.add(group)
        return frozenset(found)


# (status the deployment must be in, what the click says when it is not)
_CLICK_NEEDS: dict[str, tuple[frozenset[str], str]] = {
    "stop": (ACTIVE | {"Queued", "WaitingApproval"}, "nothing to stop"),
    "pause": (ACTIVE, "nothing to pause"),
    "resume": (ACTIVE, "nothing to resume"),
    "continue": (ACTIVE, "nothing to continue"),
    "approve": (frozenset({"WaitingApproval"}), "it is not waiting for approval"),
    "reject": (frozenset({"WaitingApproval"}), "it is not waiting for approval"),
    "promote": (frozenset({"Succeeded"}), "only a deployment that succeeded can be promoted"),
    "rollback": (ACTIVE | FINAL_STATUSES, "nothing to roll back yet"),
}
_PERMISSION = {"approve": Permission.APPROVE, "reject": Permission.APPROVE, "rollback": Permission.ROLLBACK}


class ChatOps:
    def __init__(
        self, deployer: DeploymentService, notifier: SlackNotifier, policy: SlackPolicy, membership: GroupMembership
    ) -> None:
        self.deployer, self.notifier, self.policy, self.membership = deployer, notifier, policy, membership
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Awaitable[None]) -> None:
        """Run after the ack; keep a reference so the task is not collected, and log what it raises."""

        async def guarded() -> None:
            try:
                await work
            except Exception:
                log.exception("Slack work failed")

        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.drain(1.0)

    async def allowed(self, permission: Permission, application: str, environment: str, user: str) -> str | None:
        """None when ``user`` may; else the reason, in words."""
        groups = self.policy.groups_to_check(permission, application, environment)
        member_of = await self.membership.groups_of(user, groups) if groups else frozenset()
        decision = self.policy.decide(permission, application, environment, user, member_of)
        return None if decision.allowed else decision.reason

    # -- slash commands --------------------------------------------------------------------------------------

    async def run_command(self, command: cmd.Command, *, user: str, channel: str, reply: Reply) -> None:
        try:
            await self._run(command, user, channel, reply)
        except EngineError as exc:
            await reply(f":warning: {exc}")

    async def _run(self, command: cmd.Command, user: str, channel: str, reply: Reply) -> None:
        deployer = self.deployer
        match command:
            case cmd.Deploy(app, env, ref, config):
                if refusal := await self.allowed(Permission.DEPLOY, app, env, user):
                    return await reply(f":no_entry: You may not deploy {app} to {env}: {refusal}")
                request = DeployRequest(
                    app,
                    env,
                    revision=f"git:{ref}" if ref else None,
                    config_name=config,
                    actor=user,
                    description="requested in Slack",
                )
                await self._started(await deployer.start(request), channel, reply)
            case cmd.Promote(app, target, source):
                if refusal := await self.allowed(Permission.DEPLOY, app, target, user):
                    return await reply(f":no_entry: You may not promote {app} to {target}: {refusal}")
                source = source or _previous_environment(deployer, app, target)
                doc = await deployer.release.promote(app, source, target, actor=user)
                await self._started(doc, channel, reply)
            case cmd.Rollback(app, env):
                if refusal := await self.allowed(Permission.ROLLBACK, app, env, user):
                    return await reply(f":no_entry: You may not roll back {app} in {env}: {refusal}")
                await self._started(await deployer.rollback(app, env, actor=user), channel, reply)
            case cmd.Control(action, deployment_id) | cmd.Decide(action, deployment_id):
                reason = command.reason if isinstance(command, cmd.Decide) else ""
                await self.click(action, deployment_id, user=user, reply=reply, reason=reason)
            case cmd.Status(app, deployment_id):
                await reply(await self._status(app, deployment_id))
            case cmd.Where(app):
                await reply(where_text(await deployer.release.where(app)))
            case cmd.History(app, env):
                await reply(history_text(await deployer.history(app, env, limit=10)))
            case cmd.Lock(app, env, reason):
                if refusal := await self.allowed(Permission.DEPLOY, app, env, user):
                    return await reply(f":no_entry: You may not lock {app}/{env}: {refusal}")
                await deployer.release.lock(app, env, actor=user, reason=reason)
                text = f":lock: {who(user)} locked {app}/{env}" + (f": {reason}" if reason else "")
                await reply(text, in_channel=True)
            case cmd.Unlock(app, env):
                if refusal := await self.allowed(Permission.DEPLOY, app, env, user):
                    return await reply(f":no_entry: You may not unlock {app}/{env}: {refusal}")
                released = bool((await deployer.release.unlock(app, env, actor=user))["released"])
                text = f":unlock: {who(user)} unlocked {app}/{env}" if released else f"{app}/{env} was not locked"
                await reply(text, in_channel=released)
            case cmd.Plan(app, env):
                await reply(plan_text(await deployer.plan(DeployRequest(app, env, actor=user))))
            case cmd.Help():
                await reply(cmd.help_text())

    async def _started(self, doc: Mapping[str, Any], channel: str, reply: Reply) -> None:
        await self.notifier.hint_channel(doc["id"], channel)
        waiting = (doc.get("waiting_for") or {}).get("message")
        text = f"`{doc['id']}`: {doc['application']} → {doc['environment']} is {doc['status']}"
        await reply(text + (f" ({waiting})" if waiting else "") + "; follow it in its thread.")

    async def _status(self, app: str | None, deployment_id: str | None) -> str:
        if deployment_id:
            return deployment_line(await self.deployer.get(deployment_id))
        apps = [app] if app else [a["name"] for a in self.deployer.applications()]
        lines = []
        for name in apps:
            latest: dict[str, dict[str, Any]] = {}
            for doc in await self.deployer.history(name, limit=20):
                latest.setdefault(doc["environment"], doc)
            lines += [deployment_line(d) for d in latest.values()] or [f"{name}: nothing deployed yet"]
        return "\n".join(lines) or "no applications configured"

    # -- buttons (and the stop/pause/approve/... commands) ---------------------------------------------------

    async def click(self, action: str, deployment_id: str, *, user: str, reply: Reply, reason: str = "") -> None:
        """A button (or its command): checked against the deployment's state and the environment's policy, done,
        and shown on the parent message with who clicked and what happened."""
        label = action.capitalize()
        try:
            doc = await self.deployer.get(deployment_id)
        except EngineError as exc:
            return await reply(f":warning: {exc}")
        needs, otherwise = _CLICK_NEEDS[action]
        if doc["status"] not in needs:
            text = f"{who(user)} clicked {label}: `{deployment_id}` is already {doc['status']}, {otherwise}"
            await self.notifier.note(doc, text, reply=False)
            return await reply(f"`{deployment_id}` is {doc['status']}: {otherwise}.")
        app, env = doc["application"], doc["environment"]
        permission = _PERMISSION.get(action, Permission.DEPLOY)
        target = env
        if action == "promote":
            target = _next_environment(self.deployer, app, env) or env
        refusal = await self.allowed(permission, app, target, user)
        if refusal and action == "reject" and doc.get("created_by") == user:
            refusal = None  # withdrawing one's own request
        if refusal:
            await self.notifier.note(doc, f"{who(user)} clicked {label}: refused ({refusal})", reply=False)
            return await reply(f":no_entry: You may not {action} `{deployment_id}`: {refusal}")
        try:
            text, latest = await self._act(action, doc, user, reason)
        except EngineError as exc:
            await self.notifier.note(doc, f"{who(user)} clicked {label}: {exc}", reply=False)
            return await reply(f":warning: {exc}")
        await self.notifier.note(latest, f"{who(user)} clicked {label}: {text}")

    async def _act(self, action: str, doc: Mapping[str, Any], user: str, reason: str) -> tuple[str, dict[str, Any]]:
        deployer, deployment_id = self.deployer, doc["id"]
        if action == "rollback":
            result = await deployer.rollback(doc["application"], doc["environment"], actor=user)
            if result["id"] == deployment_id:
                return f"stopped, {result['status']}; rolling back", result
            return f"rollback `{result['id']}` started", await deployer.get(deployment_id)
        if action == "stop":
            result = await deployer.stop(deployment_id, actor=user)
            return f"now {result['status']}", result
        if action in ("pause", "resume", "continue"):
            result = await deployer.control(deployment_id, action, actor=user)
            return {"pause": "paused", "resume": "resumed", "continue": "continuing"}[action], result
        if action == "approve":
            result = await deployer.release.approve(deployment_id, actor=user)
            return f"approved; now {result['status']}", result
        if action == "reject":
            result = await deployer.release.reject(deployment_id, actor=user, reason=reason)
            return "rejected" + (f": {reason}" if reason else ""), result
        target = _next_environment(deployer, doc["application"], doc["environment"])
        if target is None:
            raise _NoNextEnvironment(doc["environment"])
        promoted = await deployer.release.promote(doc["application"], doc["environment"], target, actor=user)
        return f"promoted to {target} as `{promoted['id']}`", dict(doc)


class _NoNextEnvironment(EngineError):
    def __init__(self, environment: str) -> None:
        super().__init__(f"{environment} is the last environment: there is nothing to promote to")


def _environments(deployer: DeploymentService, application: str) -> list[str]:
    wanted = application.casefold()
    for app in deployer.applications():
        if app["name"].casefold() == wanted:
            return [e["name"] for e in app["environments"]]
    return []


def _next_environment(deployer: DeploymentService, application: str, environment: str) -> str | None:
    envs = _environments(deployer, application)
    index = next((i for i, e in enumerate(envs) if e.casefold() == environment.casefold()), None)
    return envs[index + 1] if index is not None and index + 1 < len(envs) else None


def _previous_environment(deployer: DeploymentService, application: str, environment: str) -> str:
    envs = _environments(deployer, application)
    index = next((i for i, e in enumerate(envs) if e.casefold() == environment.casefold()), 0)
    return envs[index - 1] if index > 0 else environment
