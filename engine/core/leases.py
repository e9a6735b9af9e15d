"""Who drives a deployment group when several replicas share one store: one lease per group, with a fencing token.

Theory of operation. A replica may drive a group's deployments only while it holds the group's lease: a row
``(group, owner, generation, expires_at)``. Taking a free or expired lease starts a new *tenure* and bumps the
generation (so generations only grow, and no two tenures share one); the holder renews it every third of the lease
time, keeping its generation; a replica that finds its renewal refused, or that could not renew before the lease ran
out by its own clock, has lost it. Every write the owner makes for the group carries ``(group, owner, generation)``
and the store refuses it (``LeaseLost``) unless the row still says exactly that, checked in the write's own
transaction: a replica paused past its lease (SIGSTOP, a long GC, a VM frozen) and then resumed cannot write over
its successor, whatever it believes.

Expiry is judged by one clock for everyone: the database's on PostgreSQL, the caller's on SQLite (one server). The
rules here are pure; engine/store/lease_records.py holds the statements, engine/runtime/ownership.py the keeper.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.errors import EngineError

DEFAULT_LEASE_SECONDS = 10.0
RENEWALS_PER_LEASE = 3
"""Renewals (and takeover scans) per lease time: a holder misses two in a row before anyone may take its lease."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lease: the fencing token every fenced write carries, and when it runs out (the store's clock)."""

    group: str
    owner: str
    generation: int
    expires_at: float


class LeaseLost(EngineError):
    """A fenced write was refused: ``owner`` no longer holds generation ``generation`` of ``group``'s lease (another
    replica took it over, or it was released). Nothing of the write was stored."""

    def __init__(self, group: str, owner: str, generation: int) -> None:
        self.group, self.owner, self.generation = group, owner, generation
        super().__init__(f"{owner} no longer holds the lease of {group} (generation {generation}); nothing was written")


def is_expired(expires_at: float, now: float) -> bool:
    """A lease whose time is up is free for anyone (its holder too, as a new tenure)."""
    return now >= expires_at


def may_take(holder: str | None, expires_at: float | None, replica: str, now: float) -> bool:
    """Whether ``replica`` may take the lease: nobody holds it, it has expired, or ``replica`` holds it already."""
    return holder is None or expires_at is None or holder == replica or is_expired(expires_at, now)


def next_generation(generation: int | None) -> int:
    """The generation of a new tenure: every take bumps it, so a generation names one tenure of one replica."""
    return 1 if generation is None else generation + 1


def renew_interval(lease_seconds: float) -> float:
    """How often a holder renews (and every replica looks for groups to take over)."""
    return lease_seconds / RENEWALS_PER_LEASE


def lapsed(renewed_at: float, lease_seconds: float, now: float) -> bool:
    """Whether a holder must consider its lease lost by its own (monotonic) clock: its last successful renewal began
    ``lease_seconds`` ago or more, so another replica may hold it now. Measured from when the renewal was *sent*,
    which is no later than the store stamped it."""
    return now - renewed_at >= lease_seconds


# -- what replicas tell each other through the store (PostgreSQL NOTIFY; nothing on SQLite: one server)

COMMANDS_QUEUED = "deploybot_commands_queued"
"""Each payload is a host that got a Pending command: wakes its long poll on whichever replica holds it."""
RESULTS_RECORDED = "deploybot_results"
"""Each payload is a deployment one of whose commands has finished (an agent's result, stored by any replica): its
owner feeds the stored result to its runner."""
GROUP_WORK = "deploybot_groups"
"""Each payload is a deployment group with work for its owner (a deployment queued by a replica that does not own
it): the owner, or whoever takes the free lease, starts it."""
DEPLOYMENT_CONTROL = "deploybot_control"
"""Each payload is a JSON object ``{"deployment", "action", "actor", "rollback"?}``: a stop (``action`` "stop") or a
control action (pause, resume, continue, promote) asked of a replica that does not drive the deployment, for the one
that does."""
