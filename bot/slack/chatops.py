"""ChatOps: what a ``/deploy`` command or a button click does — taken once, checked, one engine call, one answer.

The door (bot.slack.app) hands each request to ``take_command`` / ``take_click`` before it acknowledges: a request
that can change something is stored as an intent first (bot/slack/intents.py) — a retry or replay of one already
taken is answered with what came of it and never acts again — and then run from the stored row in a background
task (``run_intent``), which a restart repeats for whatever was left open (``resume``). Read-only commands (status,
where, history, plan, help) are answered without being stored. Answers go to the request's ``response_url`` (while
Slack takes them: 30 minutes); what happens to a deployment is shown on its thread by the SlackNotifier.

Who may: the caller's Slack id becomes a deploybot user (bot.policy.actor_from_slack; a Slack account no ``users``
entry claims is refused, told which line to add), and ``engine.may`` decides each command and button as the
``Action`` it is: deploy and promote (into the target) DEPLOY; stop, pause, resume, continue CONTROL; rollback
ROLLBACK; approve and reject APPROVE (the requester may always withdraw their own); lock and unlock LOCK; freeze and
unfreeze FREEZE. The mapped name is the actor of every engine call, so deployments and the audit log record it.

Is it still true: a button carries the state it was rendered for (bot.messages.ButtonState). Clicks on one
deployment group are serialized, and each is checked under that lock against what is true now
(bot/slack/clicks.py): a stale click — already rolled back, superseded, finished, another revision in the
environment — is answered ephemerally with what is true now (who did it, links to the thread and the page), not
acted on. So two clicks at once, by two people or one double click, act once; the thread says who did what, once.
Promote promotes exactly the revision its thread shows.

A run resumed after a crash does not act twice: the deployment the engine answered with is recorded in the intent
as soon as it returns, and a run that finds none looks for a deployment the first run may have started before the
crash (same group, same requester, created since the run began) before starting one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot import commands as cmd
from bot import logs
from bot.messages import ButtonState, deployment_line, history_text
from bot.slack.clicks import DONE_BY_LOG, Now, Stale, staleness
from bot.slack.grammar import Freeze, SlackCommand, Unfreeze, help_text, parse
from bot.slack.intents import Asked, Outcome, SlackIntents, click_key, command_key
from bot.slack.notifier import SlackNotifier
from bot.slack.replies import (
    Caller,
    Refusal,
    done_phrase,
    not_mapped,
    plan_text,
    refused,
    replay_text,
    shown_user,
    stale_text,
    where_text,
)
from engine import (
    OPEN_INTENT_STATES,
    ROLLBACK_CREATOR,
    Action,
    DeploymentService,
    DeployRequest,
    EngineConfig,
    EngineError,
    may,
)

log = logging.getLogger(__name__)

FREEZE_TARGET = "*"  # the release flow's lock of every application and environment
CHANGES_SOMETHING = (
    *(cmd.Deploy, cmd.Promote, cmd.Rollback, cmd.Control, cmd.Decide, cmd.Lock, cmd.Unlock),
    *(Freeze, Unfreeze),
)
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


class Reply(Protocol):
    async def __call__(self, text: str, *, in_channel: bool = False) -> None: ...


@dataclass(frozen=True, slots=True)
class CommandAsked:
    """A slash command as Slack sent it."""

    text: str
    user: str
    channel: str
    response_url: str
    trigger_id: str | None
    team_domain: str | None = None
    signed_at: str | None = None  # X-Slack-Request-Timestamp, with the body the key of a request without a trigger
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class ClickAsked:
    """A button click as Slack sent it."""

    action: str  # stop, rollback, ... (the action_id without its prefix)
    action_id: str
    value: str
    user: str
    channel: str
    message_ts: str
    action_ts: str
    response_url: str
    team_domain: str | None = None


def verb_of(command: SlackCommand) -> str:
    match command:
        case cmd.Control(action, _) | cmd.Decide(action, _):
            return action
    return type(command).__name__.casefold()


def scope_of(command: SlackCommand) -> str | None:
    match command:
        case cmd.Deploy(app, env, _, _) | cmd.Rollback(app, env) | cmd.Lock(app, env) | cmd.Unlock(app, env):
            return f"{app}/{env}"
        case cmd.Promote(app, target, _):
            return f"{app}/{target}"
        case cmd.Control(_, deployment_id) | cmd.Decide(_, deployment_id):
            return deployment_id
    return None


def response_url_reply(url: str | None) -> Reply:
    """Answer at a request's ``response_url`` (ephemeral unless ``in_channel``); logs rather than raises."""

    async def reply(text: str, *, in_channel: bool = False) -> None:
        if not url:
            return
        try:
            await AsyncWebhookClient(url, timeout=10).send(
                text=text, response_type="in_channel" if in_channel else "ephemeral", replace_original=False
            )
        except Exception as exc:
            log.warning("could not answer at the response_url: %s: %s", type(exc).__name__, exc)

    return reply


async def _silent(text: str, *, in_channel: bool = False) -> None:
    log.info("Slack answer not sent (the response_url has expired; the thread speaks): %s", text)


class ChatOps:
    def __init__(self, deployer: DeploymentService, notifier: SlackNotifier) -> None:
        self.deployer, self.notifier = deployer, notifier
        self.intents = SlackIntents(deployer.store, deployer.clock)
        self._tasks: set[asyncio.Task[None]] = set()
        self._group_locks: dict[str, asyncio.Lock] = {}

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

    # -- taking requests (before the door acknowledges) ------------------------------------------------------

    async def take_command(self, command: SlackCommand, asked: CommandAsked) -> str | None:
        """Take a parsed command: None when it is new (acknowledge it; the work follows), else the answer to a retry
        or replay of one already taken."""
        if not isinstance(command, CHANGES_SOMETHING):
            self.spawn(self.run_command(command, user=asked.user, reply=response_url_reply(asked.response_url)))
            return None
        key = command_key(asked.trigger_id, signed_at=asked.signed_at, body=asked.body)
        payload = {
            "via": "command",
            "text": asked.text,
            "user": asked.user,
            "channel": asked.channel,
            "response_url": asked.response_url,
            "team_domain": asked.team_domain,
        }
        row, added = await self.intents.take(Asked(key, verb_of(command), scope_of(command), asked.user, payload))
        if not added:
            log.info("Slack: %s was taken already (%s); not acted on again", key, row["state"])
            return await self._replay_answer(row)
        self.spawn(self.run_intent(row))
        return None

    async def take_click(self, asked: ClickAsked) -> None:
        """Take a click; a retry or replay of the same click (same action_ts) is not acted on again."""
        key = click_key(asked.user, asked.action_id, asked.action_ts, asked.message_ts)
        shown = ButtonState.from_value(asked.value)
        payload = {
            "via": "button",
            "action": asked.action,
            "value": asked.value,
            "user": asked.user,
            "channel": asked.channel,
            "message_ts": asked.message_ts,
            "response_url": asked.response_url,
            "team_domain": asked.team_domain,
        }
        scope = shown.deployment_id if shown else None
        row, added = await self.intents.take(Asked(key, asked.action, scope, asked.user, payload))
        if added:
            self.spawn(self.run_intent(row))
        else:
            log.info("Slack: click %s was taken already (%s)", key, row["state"])

    async def _replay_answer(self, row: Mapping[str, Any]) -> str:
        outcome = row.get("outcome") or {}
        doc = None
        if outcome.get("deployment_id") and row["state"] not in OPEN_INTENT_STATES:
            try:
                doc = await self.deployer.get(str(outcome["deployment_id"]))
            except EngineError:
                doc = None
        return replay_text(f"`/deploy {row['payload'].get('text', '')}`", str(row["state"]), outcome, doc)

    async def resume(self) -> int:
        """At start: run again every Slack intent a previous server took and did not finish. How many."""
        rows = await self.intents.open()
        for row in rows:
            self.spawn(self.run_intent(row, resumed=True))
        if rows:
            log.info("Slack: resuming %d request(s) taken before the restart", len(rows))
        return len(rows)

    # -- running an intent -----------------------------------------------------------------------------------

    async def run_intent(self, row: Mapping[str, Any], *, resumed: bool = False) -> None:
        """Act on a stored intent once: claim it (pending → running), act, record the outcome, answer; the log lines
        of all it does name who asked (``actor``, their Slack user id)."""
        with logs.bind(actor=row.get("actor")):
            await self._run_intent(row, resumed=resumed)

    async def _run_intent(self, row: Mapping[str, Any], *, resumed: bool) -> None:
        key = str(row["key"])
        was_running = row["state"] == "running"
        if not was_running:
            claimed = await self.intents.claim(key)
            if claimed is None:
                return  # another run has it
            row = claimed
        elif not resumed:
            return
        payload = row["payload"]
        reply = response_url_reply(payload.get("response_url")) if self.intents.answerable(row) else _silent
        try:
            if payload.get("via") == "button":
                outcome = await self._run_click(row, was_running)
            else:
                outcome = await self._run_command_intent(row, was_running)
        except EngineError as exc:
            outcome = Outcome(f":warning: {exc}", failed=True)
        except Exception:
            log.exception("Slack request %s failed", key)
            outcome = Outcome(":warning: deploybot hit an internal error; see the server log", failed=True)
        await self.intents.finish(key, outcome)
        if outcome.text:
            await reply(outcome.text, in_channel=outcome.in_channel)

    async def _run_command_intent(self, row: Mapping[str, Any], was_running: bool) -> Outcome:
        payload = row["payload"]
        try:
            command = parse(str(payload["text"]), catalog_of(self.deployer))
        except cmd.ParseError as exc:
            return Outcome(str(exc), failed=True)
        caller = self.caller(str(payload["user"]))
        if was_running:
            adopted = await self._adopt(row, command, caller)
            if adopted is not None:
                return await self._started(adopted, str(payload["channel"]))
        run = _Run(str(row["key"]), str(payload["channel"]), payload.get("team_domain"), via_button=False)
        return await self._run(command, caller, run)

    # -- slash commands --------------------------------------------------------------------------------------

    async def run_command(self, command: SlackCommand, *, user: str, reply: Reply, channel: str = "") -> None:
        """Run a command that is not stored (the read-only ones) and answer it. ``user``: the Slack user id."""
        try:
            outcome = await self._run(command, self.caller(user), _Run(None, channel, None, via_button=False))
        except EngineError as exc:
            outcome = Outcome(f":warning: {exc}")
        if outcome.text:
            await reply(outcome.text, in_channel=outcome.in_channel)

    async def _run(self, command: SlackCommand, caller: Caller, run: _Run) -> Outcome:
        deployer = self.deployer
        actor = caller.user or caller.slack_id  # the read-only commands answer anyone; the rest need ``user``
        match command:
            case cmd.Deploy(app, env, ref, config):
                if refusal := self.refusal(caller, Action.DEPLOY, f"deploy {app} to {env}", app, env):
                    return Outcome(refusal.text)
                request = DeployRequest(
                    app,
                    env,
                    revision=f"git:{ref}" if ref else None,
                    config_name=config,
                    actor=actor,
                    description="requested in Slack",
                )
                doc = await deployer.start(request)
                await run.started(self, doc)
                return await self._started(doc, run.channel)
            case cmd.Promote(app, target, source):
                if refusal := self.refusal(caller, Action.DEPLOY, f"promote {app} to {target}", app, target):
                    return Outcome(refusal.text)
                source = source or _previous_environment(deployer, app, target)
                doc = await deployer.release.promote(app, source, target, actor=actor)
                await run.started(self, doc)
                return await self._started(doc, run.channel)
            case cmd.Rollback(app, env):
                if refusal := self.refusal(caller, Action.ROLLBACK, f"roll back {app} in {env}", app, env):
                    return Outcome(refusal.text)
                doc = await self._rollback(app, env, caller, run)
                return await self._started(doc, run.channel)
            case cmd.Control(action, deployment_id) | cmd.Decide(action, deployment_id):
                reason = command.reason if isinstance(command, cmd.Decide) else ""
                return await self._click(action, ButtonState(deployment_id), caller, run, reason)
            case cmd.Status(app, deployment_id):
                return Outcome(await self._status(app, deployment_id))
            case cmd.Where(app):
                return Outcome(where_text(await deployer.release.where(app)))
            case cmd.History(app, env):
                return Outcome(history_text(await deployer.history(app, env, limit=10)))
            case cmd.Lock(app, env, reason):
                if refusal := self.refusal(caller, Action.LOCK, f"lock {app}/{env}", app, env):
                    return Outcome(refusal.text)
                await deployer.release.lock(app, env, actor=actor, reason=reason)
                text = f":lock: {caller.shown} locked {app}/{env}" + (f": {reason}" if reason else "")
                return Outcome(text, in_channel=True)
            case cmd.Unlock(app, env):
                if refusal := self.refusal(caller, Action.LOCK, f"unlock {app}/{env}", app, env):
                    return Outcome(refusal.text)
                released = bool((await deployer.release.unlock(app, env, actor=actor))["released"])
                text = f":unlock: {caller.shown} unlocked {app}/{env}" if released else f"{app}/{env} was not locked"
                return Outcome(text, in_channel=released)
            case Freeze(reason):
                if refusal := self.refusal(caller, Action.FREEZE, "freeze deployments"):
                    return Outcome(refusal.text)
                await deployer.release.lock(FREEZE_TARGET, FREEZE_TARGET, actor=actor, reason=reason)
                text = f":ice_cube: {caller.shown} froze every environment" + (f": {reason}" if reason else "")
                return Outcome(text, in_channel=True)
            case Unfreeze():
                if refusal := self.refusal(caller, Action.FREEZE, "lift the freeze"):
                    return Outcome(refusal.text)
                released = bool((await deployer.release.unlock(FREEZE_TARGET, FREEZE_TARGET, actor=actor))["released"])
                text = f":sunny: {caller.shown} lifted the freeze" if released else "nothing was frozen"
                return Outcome(text, in_channel=released)
            case cmd.Plan(app, env):
                return Outcome(plan_text(await deployer.plan(DeployRequest(app, env, actor=actor))))
            case cmd.Help():
                return Outcome(help_text())
        return Outcome(None)

    async def _rollback(self, application: str, environment: str, caller: Caller, run: _Run) -> dict[str, Any]:
        """Roll the group back as ``caller``; the notifier shows them (not the rollback's ``codeDeployRollback``
        creator) as whoever asked for it."""
        assert caller.user is not None  # checked by ``refusal`` first
        self.notifier.expect_rollback(application, environment, caller.user)
        try:
            result = await self.deployer.rollback(application, environment, actor=caller.user)
            # Told before anything else can run: the notifier may hear of the rollback at any await from here on.
            self.notifier.rollback_requested(result, caller.user)
        finally:
            self.notifier.forget_rollback(application, environment)
        await run.started(self, result)
        return result

    async def _started(self, doc: Mapping[str, Any], channel: str) -> Outcome:
        """Say what started; the notifier hears of it now, so a deployment that waits (for approval, in the queue)
        gets its thread at once."""
        if channel:
            await self.notifier.hint_channel(doc["id"], channel)
        self.notifier.know(doc)
        waiting = (doc.get("waiting_for") or {}).get("message")
        text = f"`{doc['id']}`: {doc['application']} → {doc['environment']} is {doc['status']}"
        return Outcome(
            text + (f" ({waiting})" if waiting else "") + "; follow it in its thread.", deployment_id=doc["id"]
        )

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

    async def _adopt(self, row: Mapping[str, Any], command: SlackCommand, caller: Caller) -> dict[str, Any] | None:
        """A run resumed after a crash: the deployment the first run started, if it got that far (recorded in the
        outcome, or found in the group: created since the run began, by the same person or as their rollback)."""
        outcome = row.get("outcome") or {}
        if outcome.get("deployment_id"):
            return await self.deployer.get(str(outcome["deployment_id"]))
        since = float(row["updated_at"])
        match command:
            case cmd.Deploy(app, env, _, _):
                return await self._created_since(app, env, since, lambda r: r["created_by"] == caller.user)
            case cmd.Promote(app, target, _):
                return await self._created_since(
                    app,
                    target,
                    since,
                    lambda r: r["created_by"] == caller.user and bool((r.get("request") or {}).get("from")),
                )
            case cmd.Rollback(app, env):
                return await self._created_since(
                    app, env, since, lambda r: r["created_by"] == ROLLBACK_CREATOR and bool(r.get("rollback_of"))
                )
        return None

    async def _created_since(
        self, application: str, environment: str, since: float, matches: Any
    ) -> dict[str, Any] | None:
        app = self.config.application(application)
        env = app.environment(environment)
        rows = await self.deployer.store.list_deployments(application=app.name, environment=env, limit=20)
        found = next((r for r in rows if float(r["created_at"]) >= since and matches(r)), None)
        return await self.deployer.get(str(found["id"])) if found is not None else None

    # -- buttons (and the stop/pause/approve/... commands) ---------------------------------------------------

    async def _run_click(self, row: Mapping[str, Any], was_running: bool) -> Outcome:
        payload = row["payload"]
        shown = ButtonState.from_value(str(payload.get("value") or ""))
        action = str(payload.get("action") or "")
        if shown is None or action not in _CLICK_ACTION:
            return Outcome(":warning: this button cannot be read; use the newest message of its thread", failed=True)
        run = _Run(str(row["key"]), str(payload.get("channel") or ""), payload.get("team_domain"), via_button=True)
        run.resumed_since = float(row["updated_at"]) if was_running else None
        return await self._click(action, shown, self.caller(str(payload["user"])), run, "")

    async def _click(self, action: str, shown: ButtonState, caller: Caller, run: _Run, reason: str) -> Outcome:
        """A button (or its command): serialized per deployment group, checked against what it showed and who may,
        done, and shown on the parent message with who did it and what happened."""
        label = action.capitalize()
        how = f"clicked {label}" if run.via_button else f"asked to {action}"
        doc = await self.deployer.get(shown.deployment_id)
        async with self._group_locks.setdefault(str(doc["group"]), asyncio.Lock()):
            doc = await self.deployer.get(shown.deployment_id)
            if action == "promote" and run.resumed_since is not None:
                promoted = await self._promoted_since(doc, shown, run.resumed_since, caller)
                if promoted is not None:
                    await run.started(self, promoted)
                    text = f"promoted to {promoted['environment']} as `{promoted['id']}`"
                    return Outcome(None if run.via_button else text, deployment_id=promoted["id"])
            now = await self._now(action, doc)
            stale = staleness(action, shown, now)
            if stale is not None:
                return Outcome(await self._stale_answer(action, shown, stale, doc, run))
            app, env = doc["application"], doc["environment"]
            target = env
            if action == "promote":
                target = _next_environment(self.deployer, app, env) or env
            what = f"promote `{doc['id']}` to {target}" if action == "promote" else f"{action} `{doc['id']}`"
            refusal = self.refusal(caller, _CLICK_ACTION[action], what, app, target)
            if refusal and action == "reject" and caller.user is not None and doc.get("created_by") == caller.user:
                refusal = None  # withdrawing one's own request
            if refusal:
                await self.notifier.note(doc, f"{caller.shown} {how}: refused ({refusal.reason})", reply=False)
                return Outcome(refusal.text)
            assert caller.user is not None  # an unmapped caller is always refused
            try:
                text, latest = await self._act(action, doc, shown, caller, run, reason)
            except EngineError as exc:
                await self.notifier.note(doc, f"{caller.shown} {how}: {exc}", reply=False)
                return Outcome(f":warning: {exc}", failed=True)
            await self.notifier.note(latest, f"{caller.shown} {how}: {text}")
            return Outcome(None if run.via_button else f"`{doc['id']}`: {text}", deployment_id=str(doc["id"]))

    async def _now(self, action: str, doc: Mapping[str, Any]) -> Now:
        """What is true now for a click on ``doc``: the group's newest deployment that ran, and for Promote what
        runs in the deployment's environment."""
        rows = await self.deployer.store.list_deployments(group_name=str(doc["group"]), limit=20)
        newest = next((r for r in rows if r.get("started_at") is not None), None)
        source_revision = source_deployment = None
        if action == "promote":
            where = await self.deployer.release.where(str(doc["application"]))
            env = next((e for e in where["environments"] if e["environment"] == doc["environment"]), None)
            if env is not None and env.get("revision"):
                source_revision, source_deployment = env["revision"]["sha256"], env.get("deployment_id")
        return Now(doc, newest["id"] if newest else None, source_revision, source_deployment)

    async def _stale_answer(
        self, action: str, shown: ButtonState, stale: Stale, doc: Mapping[str, Any], run: _Run
    ) -> str:
        """What is true now, who made it so (the audit log), and where to see it."""
        pointed = doc
        if stale.point_at != doc["id"]:
            try:
                pointed = await self.deployer.get(stale.point_at)
            except EngineError:
                pointed = doc
        done = None
        kinds = DONE_BY_LOG.get(stale.change, ())
        if kinds:
            entries = [e for e in await self.deployer.event_log(str(doc["id"])) if e["kind"] in kinds]
            if entries:
                last = entries[-1]
                done = done_phrase(str(last["kind"]), shown_user(self.config, str(last["actor"])))
        links = []
        await self.notifier.opened(str(pointed["id"]))  # e.g. a rollback created a moment ago by another click
        permalink = self.notifier.permalink(str(pointed["id"]), run.team_domain)
        if permalink:
            links.append(f"<{permalink}|thread of `{pointed['id']}`>")
        page = self.notifier.page_url(str(pointed["id"]))
        if page:
            links.append(f"<{page}|deployment page>")
        log.info("Slack: stale %s on %s (%s): not acted on", action, doc["id"], stale.change)
        return stale_text(action, shown, stale, doc, pointed, done=done, links=tuple(links))

    async def _promoted_since(
        self, doc: Mapping[str, Any], shown: ButtonState, since: float, caller: Caller
    ) -> dict[str, Any] | None:
        target = _next_environment(self.deployer, doc["application"], doc["environment"])
        if target is None:
            return None

        def same(row: Mapping[str, Any]) -> bool:
            return row["created_by"] == caller.user and row["revision_sha256"] == shown.sha256

        return await self._created_since(doc["application"], target, since, same)

    async def _act(
        self, action: str, doc: Mapping[str, Any], shown: ButtonState, caller: Caller, run: _Run, reason: str
    ) -> tuple[str, dict[str, Any]]:
        deployer, deployment_id = self.deployer, doc["id"]
        actor = caller.user
        assert actor is not None  # an unmapped caller is always refused before this
        if action == "rollback":
            result = await self._rollback(doc["application"], doc["environment"], caller, run)
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
        promoted = await deployer.release.promote(
            doc["application"], doc["environment"], target, actor=actor, revision=shown.sha256
        )
        await run.started(self, promoted)
        if run.channel:
            await self.notifier.hint_channel(promoted["id"], run.channel)
        self.notifier.know(promoted)
        return f"promoted `{str(shown.sha256 or '')[:12]}` to {target} as `{promoted['id']}`", dict(doc)


@dataclass(slots=True)
class _Run:
    """One run of a request: its intent's key (None: not stored), where it came from, and whether it is a run
    resumed after a crash (``resumed_since``: when the first run began)."""

    key: str | None
    channel: str
    team_domain: str | None
    via_button: bool
    resumed_since: float | None = None

    async def started(self, chatops: ChatOps, doc: Mapping[str, Any]) -> None:
        if self.key is not None:
            await chatops.intents.started(self.key, str(doc["id"]))


class _NoNextEnvironment(EngineError):
    def __init__(self, environment: str) -> None:
        super().__init__(f"{environment} is the last environment: there is nothing to promote to")


def catalog_of(deployer: DeploymentService) -> dict[str, list[str]]:
    return {app["name"]: [env["name"] for env in app["environments"]] for app in deployer.applications()}


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
