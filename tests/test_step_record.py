"""What a deployment's steps write (engine/core/step_record.py) and the document read back from it
(engine/core/document.py): the machine's state holds the current stage's events, ``target_events`` the rest.

A ``Persisted`` stands for the two writes of a step (the deployment's ``state`` and the upserted ``target_events``
rows), as the runner makes them; the stores' upsert is tested in test_store.py.
"""

from __future__ import annotations

import json
from typing import Any

from test_machine import ALL, ONE, blue_green, in_place

from engine.core.document import deployment_json
from engine.core.events import (
    EventFailed,
    EventSucceeded,
    RunEvent,
    ShiftTraffic,
    Started,
    StartTimer,
    StopRequested,
    TimerElapsed,
    TrafficShifted,
)
from engine.core.machine import DeploymentMachine, DeploymentState
from engine.core.model import LifecycleEvent as E
from engine.core.snapshot import state_from_json, state_to_json
from engine.core.step_record import StepRecord


class Persisted:
    """One deployment as the runner persists it: each step's rows upserted, its snapshot replaced."""

    def __init__(self, machine: DeploymentMachine, record: StepRecord | None = None) -> None:
        self.machine = machine
        self.record = record or StepRecord()
        self.table: dict[tuple[str, str], dict[str, Any]] = {}
        self.state: dict[str, Any] = {}
        self.written: list[list[dict[str, Any]]] = []  # the rows of each step

    def step(self, now: float, *events: Any) -> list[Any]:
        commands = [command for event in events for command in self.machine.send(event)]
        rows = self.record.take_details() + self.record.rows(self.machine.state, now)
        self.state = json.loads(self.record.snapshot(self.machine.stages, self.machine.state, {}, {}))
        for row in rows:
            key = (row["target"], row["event"])
            self.table[key] = {"target": row["target"], "event": row["event"], "seq": 0, **self.table.get(key, {})}
            self.table[key].update(row)
        self.written.append(rows)
        return commands

    def result(self, target: str, event: E, *, ok: bool = True, **details: Any) -> None:
        status = "Succeeded" if ok else "Failed"
        self.record.take_result(target, str(event), {"status": status, **details})

    def document(self) -> dict[str, Any]:
        row = {"id": "d-1", "application": "app", "environment": "prod", "group_name": "app-prod",
               "status": str(self.machine.state.status), "revision_sha256": "a" * 64, "state": self.state}  # fmt: skip
        return deployment_json(row, list(self.table.values()))


def events_of(document: dict[str, Any], target: str) -> list[tuple[str, str, Any]]:
    (found,) = [t for t in document["targets"] if t["name"] == target]
    return [(e["name"], e["status"], e["started_at"]) for e in found["events"]]


def test_no_row_is_written_for_an_event_queued_or_started_yet_the_document_shows_each_with_its_start() -> None:
    deployment = Persisted(DeploymentMachine(in_place(2, ONE)))
    commands = deployment.step(10.0, Started())
    assert deployment.written == [[]]  # 2 hosts x 7 events queued or started: nothing but the state
    (run,) = [c for c in commands if isinstance(c, RunEvent)]
    assert deployment.state["machine"]["targets"][run.target]["started"] == {str(run.event): 10.0}

    document = deployment.document()
    assert [t["name"] for t in document["targets"]] == ["web-1", "web-2"]
    assert events_of(document, run.target)[0] == (str(run.event), "InProgress", 10.0)
    assert {status for _, status, _ in events_of(document, run.target)[1:]} == {"Pending"}
    assert {status for _, status, _ in events_of(document, "web-2")} == {"Pending"}


def test_targets_at_the_same_place_share_their_text_yet_each_keeps_its_own_start() -> None:
    """The snapshot encodes a target's progress once per place (events, statuses, position) for all the targets
    there: what each target reads back must still be its own, start included, after any number of steps."""
    deployment = Persisted(DeploymentMachine(in_place(3, ALL)))
    deployment.step(10.0, Started())
    deployment.result("web-1", E.APPLICATION_STOP)
    deployment.step(11.0, EventSucceeded("web-1", E.APPLICATION_STOP))
    deployment.result("web-2", E.APPLICATION_STOP)
    deployment.step(12.0, EventSucceeded("web-2", E.APPLICATION_STOP))
    targets = deployment.state["machine"]["targets"]
    whole = state_to_json(deployment.machine.state)["targets"]
    assert {name: {k: v for k, v in t.items() if k != "started"} for name, t in targets.items()} == whole
    assert targets["web-1"]["started"] == {"DownloadBundle": 11.0}
    assert targets["web-2"]["started"] == {"DownloadBundle": 12.0}  # the same place as web-1, its own start
    assert targets["web-3"]["started"] == {"ApplicationStop": 10.0}
    assert targets["web-1"]["statuses"] == targets["web-2"]["statuses"] != targets["web-3"]["statuses"]


def test_a_result_is_the_one_row_of_its_event_with_its_place_and_start() -> None:
    deployment = Persisted(DeploymentMachine(in_place(1, ONE)))
    deployment.step(10.0, Started())
    deployment.result("web-1", E.APPLICATION_STOP, ended_at=11.0, message="stopped")  # the agent gave no start
    deployment.step(11.5, EventSucceeded("web-1", E.APPLICATION_STOP))
    (row,) = deployment.written[-1]
    assert (row["event"], row["status"], row["seq"], row["started_at"]) == ("ApplicationStop", "Succeeded", 0, 10.0)
    events = events_of(deployment.document(), "web-1")
    assert events[:2] == [("ApplicationStop", "Succeeded", 10.0), ("DownloadBundle", "InProgress", 11.5)]


def test_the_machines_own_statuses_are_written_and_a_late_result_outranks_the_state() -> None:
    deployment = Persisted(DeploymentMachine(in_place(2, ALL)))
    deployment.step(10.0, Started())
    deployment.step(11.0, StopRequested(rollback=False, actor="alice"))
    document = deployment.document()
    assert deployment.machine.state.status.is_final
    first = {event: status for event, status, _ in events_of(document, "web-1")}
    assert first["ApplicationStop"] == "Unknown" and first["DownloadBundle"] == "Skipped"
    assert {(r["event"], r["status"]) for r in deployment.written[-1] if r["target"] == "web-1"} >= {
        ("ApplicationStop", "Unknown"),
        ("DownloadBundle", "Skipped"),
    }

    deployment.result("web-1", E.APPLICATION_STOP, started_at=10.2, ended_at=11.4)  # the agent's, after the end
    deployment.step(11.5)
    events = events_of(deployment.document(), "web-1")
    assert events[0] == ("ApplicationStop", "Succeeded", 10.2)


def test_a_target_in_two_stages_lists_its_earlier_stages_events_first_and_each_once() -> None:
    """Blue/green: green-1 installs in the first stage and comes back, with other events, once traffic is allowed;
    the original hosts' stages come later. Driven to the end, every event of every stage is listed once."""
    deployment = Persisted(DeploymentMachine(blue_green()))
    install = [str(e) for e in deployment.machine.stages[0].events]
    pending = deployment.step(1.0, Started())
    now, seen_later_stage = 1.0, False
    while not deployment.machine.state.status.is_final:
        now += 1.0
        replies: list[Any] = []
        for command in pending:
            if isinstance(command, RunEvent):
                deployment.result(command.target, command.event, started_at=now - 0.5, ended_at=now)
                replies.append(EventSucceeded(command.target, command.event))
            elif isinstance(command, ShiftTraffic):
                replies.append(TrafficShifted(command.percent))
            elif isinstance(command, StartTimer):
                replies.append(TimerElapsed(command.name))
        assert replies, pending
        pending = deployment.step(now, *replies)
        current = deployment.machine.state.targets.get("green-1")
        if current is not None and [str(e) for e in current.events] != install:
            seen_later_stage = True
            green = events_of(deployment.document(), "green-1")
            later = [str(e) for e in current.events]
            assert [name for name, _, _ in green] == install + later  # the earlier stage's first, from rows
    assert seen_later_stage and str(deployment.machine.state.status) == "Succeeded"
    document = deployment.document()
    assert [t["name"] for t in document["targets"]] == ["green-1", "green-2", "blue-1", "blue-2"]
    # Finished, the document reads rows alone: still the install stage's events first, then traffic's.
    assert [name for name, _, _ in events_of(document, "green-1")] == install + later
    for target in document["targets"]:
        names = [e["name"] for e in target["events"]]
        assert len(names) == len(set(names)) and {e["status"] for e in target["events"]} == {"Succeeded"}, target


def test_the_events_of_a_stage_left_in_progress_or_pending_are_written_with_their_place() -> None:
    record = StepRecord()
    machine = DeploymentMachine(in_place(2, ALL))
    machine.send(Started())
    record.rows(machine.state, 5.0)
    machine.send(EventFailed("web-1", E.APPLICATION_STOP, 1, "boom"))
    record.take_result("web-1", "ApplicationStop", {"status": "Failed", "ended_at": 6.0})
    record.take_details()
    record.rows(machine.state, 6.0)
    rows = record.rows(DeploymentState(targets={}), 7.0)  # the next stage has none of these targets
    left = {(r["target"], r["event"]): r for r in rows}
    assert ("web-1", "ApplicationStop") not in left  # its result was its row
    assert left[("web-2", "ApplicationStop")]["status"] == "InProgress"
    assert left[("web-2", "ApplicationStop")]["started_at"] == 5.0
    assert left[("web-2", "ValidateService")] == {
        "target": "web-2", "event": "ValidateService", "status": "Pending", "seq": 6,
    }  # fmt: skip


def test_a_resumed_deployment_keeps_the_start_of_its_event_in_progress() -> None:
    deployment = Persisted(DeploymentMachine(in_place(1, ONE)))
    deployment.step(10.0, Started())
    persisted = deployment.state["machine"]

    resumed = StepRecord()
    machine = DeploymentMachine(deployment.machine.stages, state=state_from_json(persisted))
    resumed.seed(machine.state, persisted["targets"])
    assert resumed.rows(machine.state, 20.0) == []  # as persisted: written already
    again = json.loads(resumed.snapshot(machine.stages, machine.state, {}, {}))
    assert again["machine"]["targets"]["web-1"]["started"] == {"ApplicationStop": 10.0}
    _, marked_at = resumed.take_result("web-1", "ApplicationStop", {"status": "Succeeded"})
    assert marked_at == 10.0
