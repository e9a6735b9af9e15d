"""Slack requests as durable intents (engine/core/intents.py): stored before Slack is answered, acted on once.

A ``/deploy`` command that changes something and every button click become a row of the store's intents table
before the door acknowledges them; the work is then driven from that row (ChatOps.run_intent), so a retry or a
replay finds it instead of acting again, and a restart finds what was taken and not yet done.

Keys (source ``slack``), and why they identify one request:

- ``slack:command:<trigger_id>`` — Slack gives every invocation of a slash command its own ``trigger_id``. A retry
  (``X-Slack-Retry-Num``) or a replay of the same signed request (valid for 5 minutes) carries the same one and is
  answered with what came of the first; the same words typed again get a new one and are a new request (lock →
  unlock → lock locks again). A request without one is keyed ``slack:command:body:<sha256 of its signed timestamp
  and body>``, which a replay repeats too.
- ``slack:click:<user>:<action_id>:<action_ts>:<message ts>`` — one click: a double click has two ``action_ts`` and
  so two intents; that only one of them acts is the click's state check under the group's lock (bot/slack/clicks.py).

Columns: ``kind`` is the verb (deploy, promote, rollback, stop, pause, resume, continue, approve, reject, lock,
unlock, freeze, unfreeze); ``scope`` is ``APP/ENV`` for a command naming a group, the deployment id for a click or
a command naming one, None for a freeze; ``actor`` the Slack user id. ``payload`` holds all a later run needs:
``via`` (``command``/``button``), ``text`` (the command as typed) or ``action`` and ``value`` (the button's state),
``user``, ``channel``, ``response_url`` (answers go there for 30 minutes; after that the thread speaks) and
``team_domain`` (for links to threads). ``outcome``: ``deployment_id`` as soon as the engine returned one (a run
resumed after a crash checks it before acting), then ``text`` (the answer) and ``in_channel``.

States: ``pending`` (taken, acknowledged) → ``running`` (claimed by one run, compare-and-set) → ``done`` or
``failed``. At start the server runs every open Slack intent again, once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from engine import OPEN_INTENT_STATES, DeploymentRecords, IntentState

SOURCE = "slack"
RESPONSE_URL_LIFETIME = 30 * 60.0  # seconds Slack accepts answers at a request's response_url


class Clock(Protocol):
    def now(self) -> float: ...


def command_key(trigger_id: str | None, *, signed_at: str | None = None, body: bytes | str = b"") -> str:
    if trigger_id:
        return f"slack:command:{trigger_id}"
    raw = body.encode() if isinstance(body, str) else body
    digest = hashlib.sha256(f"{signed_at or ''}:".encode() + raw).hexdigest()
    return f"slack:command:body:{digest}"


def click_key(user: str, action_id: str, action_ts: str, message_ts: str) -> str:
    return f"slack:click:{user}:{action_id}:{action_ts}:{message_ts}"


@dataclass(frozen=True, slots=True)
class Asked:
    """One request as the door took it: what to store."""

    key: str
    kind: str
    scope: str | None
    user: str
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a run of an intent came to: the answer, and the deployment it started or acted on."""

    text: str | None
    in_channel: bool = False
    deployment_id: str | None = None
    failed: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "in_channel": self.in_channel}
        if self.deployment_id:
            out["deployment_id"] = self.deployment_id
        return out


class SlackIntents:
    """The Slack door's intents in the store (``DeploymentService.store``), timed by the engine's clock."""

    def __init__(self, store: DeploymentRecords, clock: Clock) -> None:
        self.store, self.clock = store, clock

    async def take(self, asked: Asked) -> tuple[dict[str, Any], bool]:
        """The stored intent and whether this call took it (False: a retry or replay of one already taken)."""
        return await self.store.add_intent(
            asked.key,
            source=SOURCE,
            kind=asked.kind,
            payload=dict(asked.payload),
            at=self.clock.now(),
            scope=asked.scope,
            actor=asked.user,
        )

    async def claim(self, key: str) -> dict[str, Any] | None:
        """pending → running, for exactly one caller; None when someone else claimed it first."""
        return await self.store.move_intent(
            key, IntentState.RUNNING, at=self.clock.now(), only_from=(IntentState.PENDING,), attempt=True
        )

    async def started(self, key: str, deployment_id: str) -> None:
        """Record at once which deployment the engine answered with, so a resumed run does not start another."""
        await self.store.move_intent(
            key,
            IntentState.RUNNING,
            at=self.clock.now(),
            only_from=(IntentState.RUNNING,),
            outcome={"deployment_id": deployment_id},
        )

    async def finish(self, key: str, outcome: Outcome) -> None:
        state = IntentState.FAILED if outcome.failed else IntentState.DONE
        await self.store.move_intent(key, state, at=self.clock.now(), outcome=outcome.as_dict())

    async def open(self) -> list[dict[str, Any]]:
        """Slack intents taken and not finished, oldest first (what a restart resumes)."""
        return await self.store.list_intents(source=SOURCE, states=tuple(OPEN_INTENT_STATES))

    def answerable(self, row: Mapping[str, Any]) -> bool:
        """Whether the request's response_url still takes answers."""
        return self.clock.now() - float(row["created_at"]) < RESPONSE_URL_LIFETIME
