"""ChatOps: what a parsed ``/deploy`` command or a button click does — permission check, one engine call, a reply.

It runs after the acknowledgement, in a background task (engine calls may take seconds), and knows nothing of
bolt: replies go through a ``Reply`` callable (bolt's ``respond``, i.e. the request's ``response_url``), and what
happens to a deployment is shown on its thread by the SlackNotifier. Every refusal says why.

Who may: the caller's Slack id becomes a deploybot user (bot.policy.actor_from_slack; a Slack account no ``users``
entry claims is refused, told which line to add), and ``engine.may`` decides each command and button as the
``Action`` it is: deploy and promote (into the target) DEPLOY; stop, pause, resume, continue CONTROL; rollback
ROLLBACK; approve and reject APPROVE (the requester may always withdraw their own); lock and unlock LOCK; freeze and
unfreeze FREEZE. The mapped name is the actor of every engine call, so deployments and the audit log record it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

from bot import commands as cmd
from bot.messages import ACTIVE, deployment_line, history_text
from bot.slack.grammar import Freeze, SlackCommand, Unfreeze, help_text
from bot.slack.notifier import SlackNotifier
from bot.slack.replies import Caller, Refusal, not_mapped, plan_text, refused, where_text
from engine import FINAL_STATUSES, Action, DeploymentService, DeployRequest, EngineConfig, EngineError, may

log = logging.getLogger(__name__)

FREEZE_TARGET = "*"  # the release flow's lock of every application and environment


class Reply(Protocol):
    async def __call__(self, text: str, *, in_channel: bool = False) -> None: ...


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
_CLICK_ACTION = {
    "stop": Action.CONTROL,
    "pause": Action.CONTROL,
    "resume": Action.CONTROL,
    "continue": Action.CONTROL,
    "approve": Action.APPROVE,
    "reject": Action.APPROVE,
    "promote": Action.DEPLOY,
    "rollback": Action.ROLLBACK,
}


class ChatOps:
    def __init__(self, deployer: DeploymentService, notifier: SlackNotifier) -> None:
        self.deployer, self.notifier = deployer, notifier
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> EngineConfig:
        return self.deployer.config

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

    def caller(self, slack_id: str) -> Caller:
        return Caller.of(self.config, slack_id)

    def refusal(
        self, caller: Caller, action: Action, what: str, application: str | None = None, environment: str = ""
    ) -> Refusal | None:
        """None when ``caller`` may do ``action`` (to the group of ``application`` in ``environment``; none for a
        freeze); else the refusal, in words: who, what, and the rule that decided."""
        if caller.user is None:
            log.info("Slack: %s is not mapped to a deploybot user; refused: %s", caller.slack_id, what)
            return not_mapped(caller, what)
        group = self.config.group(application, environment) if application is not None else None
        decision = may(self.config, caller.user, action, group)
        if decision.allowed:
            return None
        log.info("Slack: %s (%s) may not %s: %s", caller.user, caller.slack_id, what, decision.rule)
        return refused(caller, what, decision)

    # -- slash commands --------------------------------------------------------------------------------------

    async def run_command(self, command: SlackCommand, *, user: str, channel: str, reply: Reply) -> None:
        """``user``: the Slack user id of whoever typed the command."""
        try:
            await self._run(command, self.caller(user), channel, reply)
        except EngineError as exc:
            await reply(f":warning: {exc}")

    async def _run(self, command: SlackCommand, caller: Caller, channel: str, reply: Reply) -> None:
        deployer = self.deployer
        actor = caller.user or caller.slack_id  # the read-only commands answer anyone; the rest need ``user``
        match command:
            case cmd.Deploy(app, env, ref, config):
                if refusal := self.refusal(caller, Action.DEPLOY, f"deploy {app} to {env}", app, env):
                    return await reply(refusal.text)
                request = DeployRequest(
                    app,
                    env,
                    revision=f"git:{ref}" if ref else None,
                    config_name=config,
                    actor=actor,
                    description="requested in Slack",
                )
                await self._started(await deployer.start(request), channel, reply)
            case cmd.Promote(app, target, source):
                if refusal := self.refusal(caller, Action.DEPLOY, f"promote {app} to {target}", app, target):
                    return await reply(refusal.text)
                source = source or _previous_environment(deployer, app, target)
                doc = await deployer.release.promote(app, source, target, actor=actor)
                await self._started(doc, channel, reply)
            case cmd.Rollback(app, env):
                if refusal := self.refusal(caller, Action.ROLLBACK, f"roll back {app} in {env}", app, env):
                    return await reply(refusal.text)
                await self._started(await self._rollback(app, env, caller), channel, reply)
            case cmd.Control(action, deployment_id) | cmd.Decide(action, deployment_id):
                reason = command.reason if isinstance(command, cmd.Decide) else ""
                await self._click(action, deployment_id, caller, reply, reason)
            case cmd.Status(app, deployment_id):
                await reply(await self._status(app, deployment_id))
            case cmd.Where(app):
                await reply(where_text(await deployer.release.where(app)))
            case cmd.History(app, env):
                await reply(history_text(await deployer.history(app, env, limit=10)))
            case cmd.Lock(app, env, reason):
                if refusal := self.refusal(caller, Action.LOCK, f"lock {app}/{env}", app, env):
                    return await reply(refusal.text)
                await deployer.release.lock(app, env, actor=actor, reason=reason)
                text = f":lock: {caller.shown} locked {app}/{env}" + (f": {reason}" if reason else "")
                await reply(text, in_channel=True)
            case cmd.Unlock(app, env):
                if refusal := self.refusal(caller, Action.LOCK, f"unlock {app}/{env}", app, env):
                    return await reply(refusal.text)
                released = bool((await deployer.release.unlock(app, env, actor=actor))["released"])
                text = f":unlock: {caller.shown} unlocked {app}/{env}" if released else f"{app}/{env} was not locked"
                await reply(text, in_channel=released)
            case Freeze(reason):
                if refusal := self.refusal(caller, Action.FREEZE, "freeze deployments"):
                    return await reply(refusal.text)
                await deployer.release.lock(FREEZE_TARGET, FREEZE_TARGET, actor=actor, reason=reason)
                text = f":ice_cube: {caller.shown} froze every environment" + (f": {reason}" if reason else "")
                await reply(text, in_channel=True)
            case Unfreeze():
                if refusal := self.refusal(caller, Action.FREEZE, "lift the freeze"):
                    return await reply(refusal.text)
                released = bool((await deployer.release.unlock(FREEZE_TARGET, FREEZE_TARGET, actor=actor))["released"])
                text = f":sunny: {caller.shown} lifted the freeze" if released else "nothing was frozen"
                await reply(text, in_channel=released)
            case cmd.Plan(app, env):
                await reply(plan_text(await deployer.plan(DeployRequest(app, env, actor=actor))))
            case cmd.Help():
                await reply(help_text())

    async def _rollback(self, application: str, environment: str, caller: Caller) -> dict[str, Any]:
        """Roll the group back as ``caller``; the notifier shows them (not the rollback's ``codeDeployRollback``
        creator) as whoever asked for it."""
        assert caller.user is not None  # checked by ``refusal`` first
        self.notifier.expect_rollback(application, environment, caller.user)
        try:
            result = await self.deployer.rollback(application, environment, actor=caller.user)
        finally:
            self.notifier.forget_rollback(application, environment)
        self.notifier.rollback_requested(result, caller.user)
        return result

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
        """A button (or its command) clicked by Slack user ``user``: checked against the deployment's state and who
        may, done, and shown on the parent message with who clicked and what happened."""
        try:
            await self._click(action, deployment_id, self.caller(user), reply, reason)
        except EngineError as exc:
            await reply(f":warning: {exc}")

    async def _click(self, action: str, deployment_id: str, caller: Caller, reply: Reply, reason: str) -> None:
        label = action.capitalize()
        try:
            doc = await self.deployer.get(deployment_id)
        except EngineError as exc:
            return await reply(f":warning: {exc}")
        needs, otherwise = _CLICK_NEEDS[action]
        if doc["status"] not in needs:
            text = f"{caller.shown} clicked {label}: `{deployment_id}` is already {doc['status']}, {otherwise}"
            await self.notifier.note(doc, text, reply=False)
            return await reply(f"`{deployment_id}` is {doc['status']}: {otherwise}.")
        app, env = doc["application"], doc["environment"]
        target = env
        if action == "promote":
            target = _next_environment(self.deployer, app, env) or env
        what = f"promote `{deployment_id}` to {target}" if action == "promote" else f"{action} `{deployment_id}`"
        refusal = self.refusal(caller, _CLICK_ACTION[action], what, app, target)
        if refusal and action == "reject" and caller.user is not None and doc.get("created_by") == caller.user:
            refusal = None  # withdrawing one's own request
        if refusal:
            await self.notifier.note(doc, f"{caller.shown} clicked {label}: refused ({refusal.reason})", reply=False)
            return await reply(refusal.text)
        assert caller.user is not None  # an unmapped caller is always refused
        try:
            text, latest = await self._act(action, doc, caller, reason)
        except EngineError as exc:
            await self.notifier.note(doc, f"{caller.shown} clicked {label}: {exc}", reply=False)
            return await reply(f":warning: {exc}")
        await self.notifier.note(latest, f"{caller.shown} clicked {label}: {text}")

    async def _act(
        self, action: str, doc: Mapping[str, Any], caller: Caller, reason: str
    ) -> tuple[str, dict[str, Any]]:
        deployer, deployment_id = self.deployer, doc["id"]
        actor = caller.user
        assert actor is not None  # an unmapped caller is always refused before this
        if action == "rollback":
            result = await self._rollback(doc["application"], doc["environment"], caller)
            if result["id"] == deployment_id:
                return f"stopped, {result['status']}; rolling back", result
            return f"rollback `{result['id']}` started", await deployer.get(deployment_id)
        if action == "stop":
            result = await deployer.stop(deployment_id, actor=actor)
            return f"now {result['status']}", result
        if action in ("pause", "resume", "continue"):
            result = await deployer.control(deployment_id, action, actor=actor)
            return {"pause": "paused", "resume": "resumed", "continue": "continuing"}[action], result
        if action == "approve":
            result = await deployer.release.approve(deployment_id, actor=actor)
            return f"approved; now {result['status']}", result
        if action == "reject":
            result = await deployer.release.reject(deployment_id, actor=actor, reason=reason)
            return "rejected" + (f": {reason}" if reason else ""), result
        target = _next_environment(deployer, doc["application"], doc["environment"])
        if target is None:
            raise _NoNextEnvironment(doc["environment"])
        promoted = await deployer.release.promote(doc["application"], doc["environment"], target, actor=actor)
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
