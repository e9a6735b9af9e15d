"""The trigger outbox: deployment and agent-health events, stored once each, delivered at least once.

``TriggerOutbox`` is a Notifier. For every deployment document it is told about, it works out which trigger events
have happened (engine/core/triggers.py ``events_of``) and, for each trigger of the group listening to one, stores an
*intent* (the store's intents table is the outbox; no table of its own):

  - source ``trigger``, kind = the event name, scope = the deployment id (or ``agent@<last seen>`` for agent health);
  - key ``trigger:<deployment id>:<event>:<trigger name>[:<instance>]`` — for agent health
    ``trigger:agent@<last seen, epoch seconds>:<event>:<trigger name>:<host>``, and for the announcement in an
    application's Slack channel the trigger name is ``channel#<channel>``. ``add_intent`` inserts a key only once,
    so reading a document again, after a restart too, stores nothing twice: one delivery per event id;
  - payload: the trigger, its target (the webhook secret's environment variable *name*, never the secret), the
    CodeDeploy-shaped message as it was when the event happened, an SNS subject and a one-line chat text.

Storing is all ``deployment_changed`` does (one insert per new event; known keys are remembered in memory), so a
receiver that is down never slows a deployment. A worker on the engine Clock delivers what is due: it moves an entry
to ``running`` (``move_intent`` with ``only_from``, counting the attempt), hands it to the sender of its target kind
(``sns``, ``webhook``, ``slack``: adapters given by the composition root), then to ``done``, or back to ``waiting``
with ``not_before`` = now + backoff (5 s doubling to 15 min), or to ``failed`` when trying again cannot help or
the entry is a day old. An entry found ``running`` at start was cut short by a crash and is sent again (at least
once: a receiver deduplicates by the ``X-Deploybot-Delivery`` header or the message's ids). Deliveries of one
target are not ordered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from engine.core.config.model import DeploymentGroup, EngineConfig
from engine.core.intents import OPEN_INTENT_STATES, IntentState
from engine.core.triggers import (
    GIVE_UP_AFTER_SECONDS,
    SNS_TOPIC_ARN,
    DeliveryFailed,
    TargetKind,
    Trigger,
    TriggerEvent,
    TriggerTarget,
    agent_message,
    agent_subject,
    deployment_message,
    events_of,
    instance_message,
    listening,
    outbox_key,
    retry_delay,
    subject_line,
    summary_text,
)
from engine.ports import Clock, Store

log = logging.getLogger(__name__)

SOURCE = "trigger"
"""The intents' ``source`` of outbox entries."""
SEND_TIMEOUT_SECONDS = 30.0
"""The longest one delivery may take (event loop time) before it counts as failed and is retried."""
_REMEMBERED_KEYS = 20_000
_CATCH_UP = 50  # recent deployments read again at start, for events a crash kept from being stored


class TriggerSender(Protocol):
    """Delivers one outbox entry's payload (with its ``key``). Raises on failure: engine.core.triggers'
    DeliveryFailed, or any exception with a true ``permanent`` attribute when retrying cannot help (the Slack
    sender in bot/ has its own); anything else is tried again later."""

    async def send(self, delivery: Mapping[str, Any]) -> None: ...


class TriggerOutbox:
    def __init__(
        self,
        config: EngineConfig,
        store: Store,
        clock: Clock,
        senders: Mapping[str, TriggerSender],
        *,
        fetch: Callable[[str], Awaitable[Mapping[str, Any]]] | None = None,
        target_names: Callable[[DeploymentGroup], Sequence[str]] | None = None,
        concurrency: int = 8,
    ) -> None:
        self.config = config
        # A group's hosts as deployments see them (Blueprint.target_names: the config's, plus on-premises instances
        # the CodeDeploy API registered whose tags match); the config's alone without it.
        self._target_names = target_names or (lambda group: [h.name for h in config.targets(group)])
        self.store = store
        self.clock = clock
        self.senders = senders  # by target kind; the composition root may add one later (kept by reference)
        self._fetch = fetch
        # Keys known to be in the outbox already (saves an insert per document), the oldest forgotten first: a
        # forgotten key costs one INSERT OR IGNORE that stores nothing.
        self._stored: OrderedDict[str, None] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    # -- storing -------------------------------------------------------------------------------------------------

    def _group(self, name: str) -> DeploymentGroup | None:
        return next((g for g in self.config.groups() if g.name == name), None)

    def _where(self, group: DeploymentGroup, target: TriggerTarget) -> tuple[str, str]:
        """(region, account id) for the message: the topic's own, else the group's AWS account region."""
        if target.kind is TargetKind.SNS and (match := SNS_TOPIC_ARN.match(target.address)):
            return match["region"], match["account"]
        account = self.config.aws_account(str(group.extra.get("aws_account", "default")))
        return account.region or "local", ""

    def follows(self, group: str) -> bool:
        """Only groups with triggers: a server without any never reads a deployment's document for them."""
        found = self._group(group)
        return found is not None and bool(found.triggers)

    async def deployment_changed(self, document: Mapping[str, Any]) -> None:
        """Store an outbox entry for every new (event, trigger) the document shows. Never raises."""
        group = self._group(str(document.get("group")))
        if group is None or not group.triggers:
            return
        try:
            for occurrence in events_of(document):
                for trigger in listening(group.triggers, occurrence.event):
                    region, account = self._where(group, trigger.target)
                    if occurrence.instance is None:
                        message = deployment_message(document, trigger.name, region=region, account_id=account)
                    else:
                        message = instance_message(
                            document, occurrence.instance, trigger.name, region=region, account_id=account
                        )
                    key = outbox_key(str(document["id"]), occurrence.event, trigger.name, occurrence.instance)
                    await self._store(key, str(document["id"]), group, trigger, occurrence.event, message)
        except Exception:  # a notifier must never break a deployment; catch_up stores it at the next start
            log.exception("could not store the triggers of deployment %s", document.get("id"))

    async def agent_changed(self, host: str, event: TriggerEvent, last_seen: float) -> None:
        """Store the agent-health entries of one silence (``last_seen``: when the agent was last heard from):
        each application deploying to ``host`` is told in its Slack channel, and the triggers of its groups
        listening to ``event`` are sent."""
        subject = agent_subject(last_seen)
        for application in self.config.applications.values():
            groups = [g for g in application.groups.values() if host in self._target_names(g)]
            if not groups:
                continue
            if application.slack_channel and str(TargetKind.SLACK) in self.senders:  # Slack is configured
                channel = TriggerTarget(TargetKind.SLACK, application.slack_channel)
                trigger = Trigger(f"channel#{application.slack_channel}", frozenset({event}), channel)
                await self._agent_entry(subject, host, event, last_seen, groups[0], trigger)
            for group in groups:
                for trigger in listening(group.triggers, event):
                    await self._agent_entry(subject, host, event, last_seen, group, trigger)

    async def _agent_entry(
        self, subject: str, host: str, event: TriggerEvent, last_seen: float, group: DeploymentGroup, trigger: Trigger
    ) -> None:
        region, account = self._where(group, trigger.target)
        message = agent_message(host, event, trigger.name, last_seen=last_seen, region=region, account_id=account)
        await self._store(outbox_key(subject, event, trigger.name, host), subject, group, trigger, event, message)

    async def _store(
        self,
        key: str,
        scope: str,
        group: DeploymentGroup,
        trigger: Trigger,
        event: TriggerEvent,
        message: Mapping[str, Any],
    ) -> None:
        if key in self._stored:
            return
        payload = {
            "event": str(event),
            "trigger": trigger.name,
            "group": group.name,
            "aws_account": str(group.extra.get("aws_account", "default")),
            "target": trigger.target.as_json(),
            "message": dict(message),
            "subject": subject_line(event, message),
            "text": summary_text(event, message),
        }
        _, added = await self.store.add_intent(
            key, source=SOURCE, kind=str(event), scope=scope, payload=payload, at=self.clock.now()
        )
        self._stored[key] = None
        while len(self._stored) > _REMEMBERED_KEYS:
            self._stored.popitem(last=False)
        if added:
            self._wake.set()

    async def catch_up(self) -> None:
        """Read recent deployments of groups with triggers again: an event whose entry a crash kept from being
        stored is stored now (known ones are not stored twice)."""
        if self._fetch is None:
            return
        for group in self.config.groups():
            if not group.triggers:
                continue
            for row in await self.store.list_deployments(group_name=group.name, limit=_CATCH_UP):
                with contextlib.suppress(Exception):
                    await self.deployment_changed(await self._fetch(str(row["id"])))

    # -- delivering ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.ensure_future(self._work())

    async def close(self) -> None:
        tasks = [t for t in (self._worker, *self._inflight.values()) if t is not None]
        self._worker = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _work(self) -> None:
        await self.catch_up()
        while True:
            self._wake.clear()
            try:
                due_at = await self.deliver_due()
            except Exception:  # the store failed this round: try again in a while
                log.exception("trigger outbox round failed")
                due_at = self.clock.now() + retry_delay(1)
            await self._until(None if due_at is None else max(0.0, due_at - self.clock.now()))

    async def _until(self, seconds: float | None) -> None:
        """Until ``seconds`` pass on the engine Clock or something new is stored or finished, whichever is first."""
        woken = asyncio.ensure_future(self._wake.wait())
        waits: set[asyncio.Future[Any]] = {woken}
        if seconds is not None:
            waits.add(asyncio.ensure_future(self.clock.sleep(seconds)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            # asyncio.wait, not ``await wait`` under suppress(CancelledError): that would also swallow a cancellation
            # of this task landing meanwhile (the server closing), and the worker would go on waiting for ever.
            await asyncio.wait(waits)

    async def deliver_due(self) -> float | None:
        """Start delivering every entry that is due and not being delivered; the earliest ``not_before`` of the
        rest (None: nothing waits)."""
        now = self.clock.now()
        soonest: float | None = None
        for row in await self.store.list_intents(source=SOURCE, states=OPEN_INTENT_STATES):
            key = str(row["key"])
            if key in self._inflight:
                continue
            not_before = row.get("not_before")
            if not_before is not None and not_before > now:
                soonest = not_before if soonest is None else min(soonest, not_before)
                continue
            self._inflight[key] = asyncio.ensure_future(self._attempt(row))
        return soonest

    async def _attempt(self, row: Mapping[str, Any]) -> None:
        key = str(row["key"])
        try:
            async with self._slots:
                await self._deliver(row)
        except Exception:
            log.exception("trigger delivery %s failed unexpectedly", key)
        finally:
            self._inflight.pop(key, None)
            self._wake.set()

    async def _deliver(self, row: Mapping[str, Any]) -> None:
        key, payload = str(row["key"]), row["payload"]
        moved = await self.store.move_intent(
            key, IntentState.RUNNING, at=self.clock.now(), only_from=OPEN_INTENT_STATES, attempt=True
        )
        if moved is None:
            return
        attempts = int(moved.get("attempts") or 1)
        sender = self.senders.get(str(payload["target"]["kind"]))
        try:
            if sender is None:
                kind = payload["target"]["kind"]
                raise DeliveryFailed(f"no sender for {kind} targets is configured", permanent=True)
            async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
                await sender.send({**payload, "key": key})
        except Exception as exc:  # whatever a sender raises is a failed attempt; ``permanent`` says if it is final
            reason = str(getattr(exc, "reason", "") or f"{type(exc).__name__}: {exc}")
            permanent = bool(getattr(exc, "permanent", False))
            now = self.clock.now()
            outcome = {"reason": reason, "attempts": attempts}
            if permanent or now - float(row["created_at"]) >= GIVE_UP_AFTER_SECONDS:
                log.warning("trigger %s not delivered, giving up: %s", key, reason)
                await self.store.move_intent(key, IntentState.FAILED, at=now, outcome=outcome)
            else:
                log.info("trigger %s not delivered (try %d): %s", key, attempts, reason)
                retry_at = now + retry_delay(attempts)
                await self.store.move_intent(key, IntentState.WAITING, at=now, outcome=outcome, not_before=retry_at)
            return
        await self.store.move_intent(
            key, IntentState.DONE, at=self.clock.now(), outcome={"attempts": attempts}, not_before=None
        )

    async def pending(self) -> list[Mapping[str, Any]]:
        """Entries not delivered yet (for tests and operators)."""
        return list(await self.store.list_intents(source=SOURCE, states=OPEN_INTENT_STATES))
