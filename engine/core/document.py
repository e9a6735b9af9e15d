"""The deployment JSON document (DESIGN §3.1) built from store rows (pure).

One shape for the CLI, the API, chat and pages, so every front says the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def deployment_json(
    row: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    *,
    revision: Mapping[str, Any] | None = None,
    version: int = 0,
    queue_position: int | None = None,
) -> dict[str, Any]:
    state = row.get("state") or {}
    machine = state.get("machine") or {}
    order = _target_order(state)
    stored: dict[str, list[Mapping[str, Any]]] = {}
    for event in sorted(events, key=lambda e: (order.get(e["target"], len(order)), e.get("seq") or 0)):
        stored.setdefault(event["target"], []).append(event)
    current: Mapping[str, Any] = machine.get("targets") or {}
    names = sorted(dict.fromkeys([*stored, *current]), key=lambda name: order.get(name, len(order)))
    targets = {name: _target_events(stored.get(name, []), current.get(name)) for name in names}
    error = None
    if row.get("error_code") or row.get("error_message"):
        error = {"code": row.get("error_code"), "message": row.get("error_message") or ""}
    has_traffic = any(stage.get("kind") == "traffic" for stage in state.get("stages", []))
    return {
        "id": row["id"],
        "application": row["application"],
        "environment": row["environment"],
        "group": row["group_name"],
        "status": row["status"],
        "revision": {
            "sha256": row["revision_sha256"],
            "source": (revision or {}).get("source"),
            "commit": (revision or {}).get("commit"),
        },
        "config": row.get("config_name"),
        "deployment_type": row.get("deployment_type"),
        "created_by": row.get("created_by"),
        "description": row.get("description") or "",
        "created_at": row.get("created_at"),
        "started_at": row.get("started_at"),
        "ended_at": row.get("ended_at"),
        "error": error,
        "rollback": {"of": row.get("rollback_of"), "by": row.get("rolled_back_by")},
        "version": version,
        "queue_position": queue_position,
        "paused": bool(machine.get("paused")),
        "targets": [{"name": name, "status": _target_status(evs), "events": evs} for name, evs in targets.items()],
        "traffic": {"percent": machine.get("traffic_percent", 0)} if has_traffic else None,
    }


def _target_events(stored: Sequence[Mapping[str, Any]], current: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One target's events: its stored rows; and while its stage runs (``current``, the target in the machine's
    state), every event of that stage after the rows of its earlier ones, each with the state's status unless a row
    holds its result (a result recorded after the deployment ended included), and the start the state keeps of an
    event in progress (engine/core/step_record.py)."""
    if current is None:
        return [_event_json(row) for row in stored]
    names: Sequence[str] = current["events"]
    started: Mapping[str, Any] = current.get("started") or {}
    rows = {row["event"]: row for row in stored}
    events = [_event_json(row) for row in stored if row["event"] not in names]
    for name in names:
        row = rows.get(name) or {"event": name}
        if row.get("ended_at") is None:
            row = {**row, "status": current["statuses"][name], "started_at": row.get("started_at") or started.get(name)}
        events.append(_event_json(row))
    return events


def _event_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": row["event"],
        "status": row["status"],
        "started_at": row.get("started_at"),
        "ended_at": row.get("ended_at"),
        "error_code": row.get("error_code"),
        "message": row.get("message") or "",
        "log_tail": row.get("log_tail") or "",
    }


def _target_order(state: Mapping[str, Any]) -> dict[str, int]:
    order: dict[str, int] = {}
    for stage in state.get("stages", []):
        for target in stage.get("targets", []):
            order.setdefault(target, len(order))
    return order


def _target_status(events: Sequence[Mapping[str, Any]]) -> str:
    statuses = [e["status"] for e in events]
    for status in ("Failed", "InProgress", "Unknown"):
        if status in statuses:
            return status
    if statuses and all(s == "Succeeded" for s in statuses):
        return "Succeeded"
    if statuses and all(s in ("Skipped", "Pending") for s in statuses):
        return "Skipped" if "Skipped" in statuses else "Pending"
    if "Pending" in statuses:
        return "InProgress"
    return "Succeeded"
