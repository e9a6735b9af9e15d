"""What a deployment's steps have written of it, so that each step writes only what changed (pure).

A runner persists after every step (engine/runtime/runner.py, rule 2): the machine's state as JSON, and a row per
(target, lifecycle event) that the state alone does not keep. The state holds the targets of the current stage with
each event's status; ``target_events`` holds what it lacks: results with their details (times, code, message, log
tail), the statuses the machine gave without a result (Skipped, Unknown), and, once a stage is left, whatever its
targets' events still said (Pending, InProgress), since the next stage's state no longer names them. An event
marked in progress keeps its start in the snapshot, beside its target (``"started"``). So a step writes rows for
results and for the few events the machine ended itself, not one per event queued or started: the document
(engine/core/document.py) reads the current stage from the state and the rest from the rows.

This record keeps, per target, what was last written and what was last converted, and works out the rest from there:

  - the results taken since the last write (their details go with the next one) and which results were taken
    (a result's own row carries its details: the status change it causes is not written again as a bare row);
  - when each event was marked in progress (the start of a result whose agent did not say when it started, and the
    ``"started"`` of its target in the snapshot);
  - each target's events and statuses as last seen, seeded from the persisted state on resume (``written``);
  - each target's JSON text as last encoded, with the progress object and signature it came from. This is a second
    per-target record on purpose: the state is also converted alone (timers, a green fleet's name), without rows
    being written, so the two cannot share one "last seen".

The snapshot itself is JSON text joined from those parts (``snapshot``): encoding the whole state of 1,000 hosts
again took about 5 ms a step, joining the parts about 0.3 ms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.core.machine import DeploymentState, TargetProgress
from engine.core.model import EventStatus, LifecycleEvent
from engine.core.snapshot import EncodedJson, encode, encode_state, stages_to_json, target_to_json
from engine.core.stages import Stage

Row = dict[str, Any]

_PLACES_PER_STAGE = len(LifecycleEvent)
"""A row's ``seq`` is its event's place in the deployment: its stage's index, then its position in that stage. The
document lists a target's events in that order; a position alone would interleave a green host's two stages."""


def _place(stage_index: int, position: int) -> int:
    return max(stage_index, 0) * _PLACES_PER_STAGE + position


class StepRecord:
    """See the module docstring. One per runner; it never reads a clock (times are handed in)."""

    def __init__(self) -> None:
        self._details: list[Row] = []  # results taken since the last write, saved with the next step
        self._taken: set[tuple[str, str]] = set()  # (target, event) whose result was taken
        self._started_at: dict[tuple[str, str], float] = {}  # (target, event) in progress -> when marked so
        self._written: dict[str, tuple[EventStatus, ...]] = {}  # per target: its statuses as last seen
        self._events: dict[str, list[LifecycleEvent]] = {}  # per target: its events, in order (their positions)
        self._stage_index = 0  # the stage of the targets in ``_events`` (a stage left, until the next one's rows)
        self._targets: dict[str, TargetProgress] | None = None  # the state's targets as last seen (a stage's)
        self._stages_json: tuple[tuple[Stage, ...], str] | None = None
        self._targets_json: dict[str, tuple[TargetProgress, tuple[Any, ...], str]] = {}
        self._bodies: dict[tuple[Any, ...], str] = {}  # a target's JSON but its name and start, by its place

    # -- results

    def take_result(self, target: str, event: str, details: Mapping[str, Any]) -> tuple[bool, float | None]:
        """Keep a result's details for the next write; (whether it is the first result of the event, when the
        event was marked in progress here)."""
        row = {"target": target, "event": event, **details}
        events = self._events.get(target)
        if events is not None and event in events:
            # no row of the event may be there to give its place
            row["seq"] = _place(self._stage_index, events.index(LifecycleEvent(event)))
        key = (target, event)
        marked_at = self._started_at.pop(key, None)
        if "started_at" not in row and marked_at is not None:
            row["started_at"] = marked_at  # the agent did not say: when it was marked in progress here
        self._details.append(row)
        first = key not in self._taken
        self._taken.add(key)
        return first, marked_at

    def has_taken(self, target: str, event: str) -> bool:
        return (target, event) in self._taken

    @property
    def has_details(self) -> bool:
        return bool(self._details)

    def take_details(self) -> list[Row]:
        """The results' details to write now (given once)."""
        details, self._details = self._details, []
        return details

    # -- rows and JSON

    def seed(self, state: DeploymentState, targets_json: Mapping[str, Any] | None = None) -> None:
        """A resumed deployment: its state as persisted is written already; ``targets_json``, the persisted
        machine's ``targets``, gives back when its events in progress started."""
        self._targets = state.targets
        self._stage_index = state.stage_index
        for target, progress in state.targets.items():
            self._written[target] = _statuses(progress)
            self._events[target] = progress.events
            started = ((targets_json or {}).get(target) or {}).get("started") or {}
            for event, at in started.items():
                if isinstance(at, int | float):
                    self._started_at[(target, event)] = float(at)

    def rows(self, state: DeploymentState, now: float) -> list[Row]:
        """The rows to write for what the machine changed since the last write: the statuses it gave without a
        result (Skipped, Unknown; results come with their details), and the events of targets whose stage was
        left still Pending or InProgress. An event marked in progress gets ``now`` as its start, kept for the
        snapshot."""
        rows: list[Row] = []
        if state.targets is not self._targets:  # a new stage: the targets it replaced are no longer in the state
            rows += self._left(state.targets)
            self._targets = state.targets
            self._stage_index = state.stage_index
        for target, progress in state.targets.items():
            statuses = _statuses(progress)
            before = self._written.get(target)
            if before == statuses:
                continue  # most targets of a step: nothing to write
            self._written[target] = statuses
            self._events[target] = progress.events
            for position, (event, status) in enumerate(zip(progress.events, statuses, strict=True)):
                if before is not None and before[position] is status:
                    continue  # unchanged
                key = (target, str(event))
                if key in self._taken:
                    continue  # written with its details as a result
                if status is EventStatus.IN_PROGRESS:
                    self._started_at[key] = now
                if status in _KEPT_IN_STATE:
                    continue
                place = _place(state.stage_index, position)
                rows.append({"target": target, "event": str(event), "status": str(status), "seq": place})
        return rows

    def _left(self, targets: Mapping[str, TargetProgress]) -> list[Row]:
        """Rows for the targets of a stage just left (no longer in ``targets``, or there with other events): their
        events the state said were Pending or InProgress, which only the state had recorded."""
        rows: list[Row] = []
        for target in list(self._written):
            progress = targets.get(target)
            if progress is not None and progress.events == self._events[target]:
                continue
            statuses, events = self._written.pop(target), self._events.pop(target)
            for position, (event, status) in enumerate(zip(events, statuses, strict=True)):
                key = (target, str(event))
                if status not in _KEPT_IN_STATE or key in self._taken:
                    continue
                place = _place(self._stage_index, position)
                row: Row = {"target": target, "event": str(event), "status": str(status), "seq": place}
                if key in self._started_at:
                    row["started_at"] = self._started_at[key]
                rows.append(row)
        return rows

    def snapshot(
        self, stages: tuple[Stage, ...], state: DeploymentState, timers: Mapping[str, Any], spec: Mapping[str, Any]
    ) -> EncodedJson:
        """The runner's snapshot ``{"stages", "machine", "timers", "spec"}`` as JSON text: the stages encoded again
        only for another value (a green fleet replacing its hosts), each target only when its progress changed."""
        if self._stages_json is None or self._stages_json[0] is not stages:
            self._stages_json = (stages, encode(stages_to_json(stages)))
        encoded: dict[str, tuple[TargetProgress, tuple[Any, ...], str]] = {}
        for name, progress in state.targets.items():
            signature = (progress.status, progress.position, *progress.statuses.values())
            known = self._targets_json.get(name)
            if known is None or known[0] is not progress or known[1] != signature:
                known = (progress, signature, self._target_text(name, progress))
            encoded[name] = known
        self._targets_json = encoded  # targets of an earlier stage are forgotten
        machine = encode_state(state, "{" + ",".join(known[2] for known in encoded.values()) + "}")
        return EncodedJson(
            f'{{"stages":{self._stages_json[1]},"machine":{machine},"timers":{encode(timers)},"spec":{encode(spec)}}}'
        )

    def _target_text(self, name: str, progress: TargetProgress) -> str:
        """``"name":`` and ``target_to_json``, with ``"started"`` (event -> when it was marked in progress) while one
        is, as JSON text. Targets at the same place share all but their name and start, so that part is encoded
        once per place (a handful per stage) rather than once per target: 1,000 hosts' snapshot took ~11 ms."""
        place = (tuple(progress.events), progress.status, progress.position, tuple(progress.statuses.items()))
        body = self._bodies.get(place)
        if body is None:
            if len(self._bodies) >= _MAX_PLACES:  # bounded whatever the fleet does (a stage has a few dozen)
                self._bodies.clear()
            body = self._bodies[place] = encode(target_to_json(progress))[:-1]  # open: "started" may follow
        started = [
            f"{encode(str(event))}:{at!r}"  # repr is JSON's own text for a number (a finite float, an int)
            for event, status in progress.statuses.items()
            if status is EventStatus.IN_PROGRESS and (at := self._started_at.get((name, str(event)))) is not None
        ]
        if started:
            return f'{encode(name)}:{body},"started":{{{",".join(started)}}}}}'
        return f"{encode(name)}:{body}}}"


_MAX_PLACES = 4096

_KEPT_IN_STATE = (EventStatus.PENDING, EventStatus.IN_PROGRESS)
"""The statuses the snapshot records for the current stage's targets: written as rows only once a stage is left."""


def _statuses(progress: TargetProgress) -> tuple[EventStatus, ...]:
    return tuple(map(progress.statuses.__getitem__, progress.events))
