"""Intents: what a person or a system asked deploybot to do, stored before it is acknowledged.

Every door that can change something (a Slack command or click, a GitHub delivery, an API call with an
``Idempotency-Key``) turns the request into an intent keyed by what identifies it at that door — Slack's
``trigger_id`` or a click's ``action_ts``, GitHub's delivery id or (merge, environment, commit), the API caller's
key — so a retry, a replay or a redelivery finds the same intent instead of acting again, and a restart finds the
work that was asked for and not yet done. The door drives the work from the stored state; this module only names
the states and which of them are still open.
"""

from __future__ import annotations

from enum import StrEnum


class IntentState(StrEnum):
    PENDING = "pending"  # asked for, not yet acted on
    WAITING = "waiting"  # held back by something outside (required checks, Slack being down); looked at again
    RUNNING = "running"  # being acted on now (a restart finds it here and acts again, idempotently)
    DONE = "done"  # acted on; ``outcome`` says what happened
    FAILED = "failed"  # could not be done; ``outcome`` says why (a redelivery may try again)
    SUPERSEDED = "superseded"  # a newer intent of the same scope made it moot (an older merge)


OPEN_INTENT_STATES = frozenset({IntentState.PENDING, IntentState.WAITING, IntentState.RUNNING})
