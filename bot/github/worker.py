"""GitHub's intents worked on from the store: one worker per (application, environment), in arrival order.

Theory of operation. The webhook request only stores intents (bot/github/intents.py) and wakes the worker of their
scope; everything slow happens here, and everything that must survive a restart is in the store:

- A worker lists its scope's open intents, oldest first (``seq``). Among merges only the newest may go on: every
  older open merge is superseded (and its commit says so), so an older commit is never deployed over a newer one.
- It acts on the first intent that is due: pending or running (a restart left it there), or waiting with its
  ``not_before`` come, or waiting when a check event asked for a fresh look (``wake(recheck=True)``).
- Acting is one step of ``Steps.advance`` (bot/github/triggers.py), which answers where the intent goes next
  (``Next``: done, failed, waiting until a time); the worker writes that. Before a step starts a deployment it
  calls ``claim``: a merge that a newer one has overtaken is superseded there instead, and once claimed, the step
  is no longer cancelled. While a merge's step runs (waiting for GitHub, downloading), a newer merge of the scope
  cancels it and supersedes it at once.
- Nothing due: the worker parks until the earliest ``not_before`` on the engine's clock (``Clock.sleep``, so
  tests move time with a FakeClock) or until woken. No open intent left: it ends, and the next intent of its scope
  starts a new one. On start, ``resume`` wakes a worker for every scope with open intents.

Only the worker moves an open intent; the webhook request moves failed ones back to pending (a redelivery, a
green re-run), or supersedes them when a newer merge arrives. Every move names the states it may come from. The one
exception is a step noting its own progress on its running intent (running → running: a pull-request comment's
reply made, its head commit read; bot/github/comments.py), which ``claim`` keeps.

``StepsByKind`` gives each kind its steps: merges and GitHub deployments bot/github/triggers.py, comments
bot/github/comments.py. A comment shares the scope worker of the environment it names, so it is taken in line with
that environment's merges; it is never superseded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from bot import logs
from bot.github.intents import SOURCE, Failure, Kind, Next
from engine import OPEN_INTENT_STATES, DeploymentRecords, IntentState

log = logging.getLogger(__name__)

Row = dict[str, Any]
Claim = Callable[[str], Awaitable[None]]
"""Called by a step right before it starts a deployment of the revision (sha256): records that it is starting, or
raises SupersededBy when a newer merge of the scope came first."""

_OPEN = tuple(str(state) for state in OPEN_INTENT_STATES)


class Clock(Protocol):
    """The engine's clock, as far as the workers use it (``deployer.clock``)."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SupersededBy(Exception):
    """A newer merge of the same scope overtook this one before it started."""

    def __init__(self, newer: Row) -> None:
        super().__init__(newer["key"])
        self.newer = newer


class Steps(Protocol):
    async def advance(self, intent: Row, claim: Claim) -> Next:
        """One step of the work on ``intent`` (running now): where it goes next."""

    async def superseded(self, intent: Row, newer: Row) -> None:
        """Say on GitHub that ``intent`` will not be deployed because of ``newer``."""


class StepsByKind:
    """The steps of each kind of intent: ``by_kind`` for the kinds named there, ``default`` for the rest."""

    def __init__(self, default: Steps, by_kind: dict[str, Steps]) -> None:
        self.default, self.by_kind = default, by_kind

    def _of(self, intent: Row) -> Steps:
        return self.by_kind.get(str(intent["kind"]), self.default)

    async def advance(self, intent: Row, claim: Claim) -> Next:
        return await self._of(intent).advance(intent, claim)

    async def superseded(self, intent: Row, newer: Row) -> None:
        await self._of(intent).superseded(intent, newer)


class ScopeWorker:
    def __init__(
        self,
        scope: str,
        *,
        store: DeploymentRecords,
        clock: Clock,
        steps: Steps,
        retry_seconds: float,
        changed: Callable[[], None],
        finished: Callable[[ScopeWorker], None],
    ) -> None:
        self.scope = scope
        self.store, self.clock, self.steps = store, clock, steps
        self.retry_seconds = retry_seconds
        self.busy = True
        self.task: asyncio.Task[None] | None = None
        self._changed, self._finished = changed, finished
        self._woken = asyncio.Event()  # the main loop's: look at the store again
        self._poke = asyncio.Event()  # a running merge step's: has a newer merge come?
        self._recheck = False
        self._rechecks: set[str] = set()

    def wake(self, *, recheck: bool = False) -> None:
        self._recheck = self._recheck or recheck
        self._woken.set()
        self._poke.set()
        self._busy(True)

    def _busy(self, busy: bool) -> None:
        if self.busy != busy:
            self.busy = busy
            self._changed()

    async def run(self) -> None:
        try:
            while await self._round():
                pass
        finally:
            self._busy(False)

    async def _round(self) -> bool:
        """Act on one due intent, or park until one is due; False when the scope has nothing open."""
        self._woken.clear()
        recheck, self._recheck = self._recheck, False
        try:
            rows = await self.store.list_intents(source=SOURCE, scope=self.scope, states=_OPEN)
            if not rows:
                if self._woken.is_set():
                    return True
                self._finished(self)  # at once, before any await: the next wake starts a new worker
                return False
            rows = await self._supersede_older_merges(rows)
            waiting = [r for r in rows if r["state"] == IntentState.WAITING]
            if recheck:
                self._rechecks |= {r["key"] for r in waiting}
            now = self.clock.now()
            due = next((r for r in rows if self._due(r, now)), None)
            if due is not None:
                self._rechecks.discard(due["key"])
                await self._act(due)
                return True
            self._rechecks.clear()
            times = [float(r["not_before"]) for r in waiting if r["not_before"] is not None]
            await self._park(min(times) - now if times else None)
        except asyncio.CancelledError:
            raise
        except Exception:  # the store or a bug: log it and look again later, never die with work left
            log.exception("GitHub intents of %s: a round failed; trying again in %g s", self.scope, self.retry_seconds)
            await self._park(self.retry_seconds)
        return True

    def _due(self, row: Row, now: float) -> bool:
        if row["state"] != IntentState.WAITING:
            return True
        return row["key"] in self._rechecks or row["not_before"] is None or float(row["not_before"]) <= now

    async def _park(self, delay: float | None) -> None:
        if self._woken.is_set():
            return
        alarm = asyncio.ensure_future(self._wake_after(delay)) if delay is not None else None
        self._busy(False)
        try:
            await self._woken.wait()
        finally:
            if alarm is not None:
                alarm.cancel()
                await asyncio.wait({alarm})  # not suppress(CancelledError): it would swallow our own cancellation too

    async def _wake_after(self, delay: float) -> None:
        await self.clock.sleep(max(delay, 0.0))
        self.wake()

    # -- acting

    async def _act(self, row: Row) -> None:
        with logs.bind(actor=row.get("actor")):  # the log lines of this step name who asked (the GitHub login)
            await self._act_on(row)

    async def _act_on(self, row: Row) -> None:
        running = await self.store.move_intent(row["key"], IntentState.RUNNING, at=self.clock.now(), only_from=_OPEN)
        if running is None:
            return
        claimed = False

        async def claim(sha256: str) -> None:
            nonlocal claimed
            if running["kind"] == Kind.MERGE and (newer := await self._newer_merge(running)) is not None:
                raise SupersededBy(newer)
            claimed = True
            latest = await self.store.get_intent(running["key"])  # a step may have noted progress (a reply id)
            outcome = {
                **((latest or running)["outcome"] or {}),
                "phase": "starting",
                "sha256": sha256,
                "asked_at": self.clock.now(),
            }
            await self.store.move_intent(
                running["key"], IntentState.RUNNING, at=self.clock.now(), only_from=_OPEN, outcome=outcome
            )

        step = asyncio.ensure_future(self.steps.advance(running, claim))
        try:
            while not step.done():
                self._poke.clear()
                poke = asyncio.ensure_future(self._poke.wait())
                await asyncio.wait({step, poke}, return_when=asyncio.FIRST_COMPLETED)
                poke.cancel()
                if step.done() or running["kind"] != Kind.MERGE or claimed:
                    continue
                newer = await self._newer_merge(running)
                if newer is not None and not claimed and not step.done():
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await step
                    await self._supersede(running, newer)
                    return
            following = step.result()
        except asyncio.CancelledError:
            step.cancel()
            raise
        except SupersededBy as exc:
            await self._supersede(running, exc.newer)
            return
        except Exception as exc:
            log.exception("GitHub intent %s failed", running["key"])
            following = Next.failed(Failure.ERROR, f"deploybot failed: {type(exc).__name__}: {exc}")
        await self.store.move_intent(
            running["key"],
            following.state,
            at=self.clock.now(),
            only_from=_OPEN,
            outcome=following.outcome,
            not_before=following.not_before,
            attempt=following.attempt,
        )

    async def _newer_merge(self, row: Row) -> Row | None:
        merges = await self.store.list_intents(source=SOURCE, kind=Kind.MERGE, scope=self.scope, states=_OPEN)
        newer = [m for m in merges if int(m["seq"]) > int(row["seq"])]
        return newer[-1] if newer else None

    async def _supersede_older_merges(self, rows: list[Row]) -> list[Row]:
        """Every open merge but the newest is superseded, except one that claimed its start before a restart: its
        deployment may exist, so it goes on (first, being older) and the newer one queues behind it."""
        merges = [r for r in rows if r["kind"] == Kind.MERGE]
        if len(merges) < 2:
            return rows
        newest = merges[-1]
        gone = {r["key"] for r in merges[:-1] if (r["outcome"] or {}).get("phase") != "starting"}
        for older in merges[:-1]:
            if older["key"] in gone:
                await self._supersede(older, newest)
        return [r for r in rows if r["key"] not in gone]

    async def _supersede(self, row: Row, newer: Row) -> None:
        outcome = {"by": newer["payload"].get("sha"), "by_key": newer["key"]}
        moved = await self.store.move_intent(
            row["key"], IntentState.SUPERSEDED, at=self.clock.now(), only_from=_OPEN, outcome=outcome
        )
        if moved is not None:
            log.info("GitHub: %s superseded by %s", row["key"], newer["key"])
            await self.steps.superseded(moved, newer)


class IntentWorkers:
    """The scope workers of one server: started on demand, resumed at start, cancelled at stop."""

    def __init__(self, store: DeploymentRecords, clock: Clock, steps: Steps, *, retry_seconds: float) -> None:
        self.store, self.clock, self.steps = store, clock, steps
        self.retry_seconds = retry_seconds
        self._workers: dict[str, ScopeWorker] = {}
        self._change = asyncio.Event()

    def wake(self, scope: str, *, recheck: bool = False) -> None:
        """Look at ``scope``'s open intents now (``recheck``: including those waiting for a later look)."""
        worker = self._workers.get(scope)
        if worker is None:
            worker = ScopeWorker(
                scope,
                store=self.store,
                clock=self.clock,
                steps=self.steps,
                retry_seconds=self.retry_seconds,
                changed=self._change.set,
                finished=self._finished,
            )
            self._workers[scope] = worker
            worker.task = asyncio.ensure_future(worker.run())
        worker.wake(recheck=recheck)

    def _finished(self, worker: ScopeWorker) -> None:
        if self._workers.get(worker.scope) is worker:
            del self._workers[worker.scope]
        self._change.set()

    async def resume(self) -> int:
        """Wake a worker for every scope with open GitHub intents (a restart); how many scopes."""
        rows = await self.store.list_intents(source=SOURCE, states=_OPEN)
        scopes = list(dict.fromkeys(str(r["scope"]) for r in rows if r["scope"]))
        for scope in scopes:
            self.wake(scope, recheck=True)
        return len(scopes)

    async def idle(self) -> None:
        """Until every worker is parked (waiting for its clock or a wake-up) or ended (tests, shutdown)."""
        while any(worker.busy for worker in self._workers.values()):
            self._change.clear()
            await self._change.wait()

    async def close(self) -> None:
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            if worker.task is not None:
                worker.task.cancel()
        await asyncio.gather(*(w.task for w in workers if w.task is not None), return_exceptions=True)
