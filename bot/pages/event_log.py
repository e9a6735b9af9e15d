"""The deployment page's event log in words (pure): each stored entry becomes time, actor and a sentence
("traffic 20% → new side", "rollback triggered (DEPLOYMENT_STOP_ON_ALARM)"), with the raw entry kept for a
<details> toggle.

The audit log holds what the deployment did as a whole; what each host did is in the per-target event records.
Their failures are what a reader looks for, so each failed host event joins the log as a ``host.event_failed``
line ("p2 AfterInstall failed (error 4): script exited 1"), in time order with the rest.

One function per kind says its sentence; a kind without one reads as the kind and its short fields, so a new kind
is never hidden.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HOST_EVENT_FAILED = "host.event_failed"
MAX_FIELD_CHARS = 80  # a field longer than this is cut in the sentence (the raw JSON keeps it whole)
MAX_FALLBACK_FIELDS = 4


@dataclass(frozen=True, slots=True)
class LogLine:
    at: float
    actor: str
    kind: str
    sentence: str
    raw: str  # the entry as stored, pretty JSON
    tone: str = ""  # "failed" for lines a reader should see first (the template colors them)


Data = Mapping[str, Any]


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_FIELD_CHARS else text[: MAX_FIELD_CHARS - 1] + "…"


def _requested(d: Data) -> str:
    revision = str(d.get("revision") or "")[:12]
    text = f"deployment requested: revision {revision} to {d.get('group', 'its group')}"
    return text + (f" (rollback of {d['rollback_of']})" if d.get("rollback_of") else "")


def _finished(d: Data) -> str:
    status = str(d.get("status", "")).lower() or "finished"
    return f"deployment {status}" + (f" ({d['error_code']})" if d.get("error_code") else "")


def _stop(d: Data) -> str:
    rollback = d.get("rollback")
    if rollback is None:
        return "stop requested"
    return "stop requested, with rollback" if rollback else "stop requested, without rollback"


def _shifted(d: Data) -> str:
    return f"traffic {d.get('percent')}% → new side"


def _verified(d: Data) -> str:
    seconds = d.get("seconds")
    took = f", {seconds:.1f}s" if isinstance(seconds, int | float) else ""
    return f"traffic at {d.get('wanted_percent')}% verified ({d.get('checks', '?')} checks{took})"


def _holding(d: Data) -> str:
    return f"traffic at {d.get('wanted_percent')}% not verified yet: {_short(d.get('reason', ''))}"


def _unverified(d: Data) -> str:
    return f"traffic at {d.get('wanted_percent')}% could not be verified: {_short(d.get('reason', ''))}"


def _rerouted(d: Data) -> str:
    ms = d.get("milliseconds")
    took = f" in {ms:.0f} ms" if isinstance(ms, int | float) else ""
    return f"traffic rerouted to the original fleet ({d.get('percent')}%){took}"


def _reroute_failed(d: Data) -> str:
    return f"rerouting traffic failed: {_short(d.get('error', ''))}"


def _rollback_triggered(d: Data) -> str:
    return f"automatic rollback triggered ({d.get('trigger', 'unknown trigger')})"


def _rollback_reason(word: str) -> Callable[[Data], str]:
    return lambda d: f"rollback {word}: {_short(d.get('reason', ''))}"


def _resumed(d: Data) -> str:
    return f"resumed after a server restart (was {d.get('status', '?')})"


def _winding_up(d: Data) -> str:
    cause = _short(d.get("after", "")) or "a server restart"
    return f"its end was cut short by {cause} ({d.get('status', '?')}): winding it up"


def _offline(d: Data) -> str:
    offline = d.get("offline") or []
    names = ", ".join(str(h) for h in offline) if isinstance(offline, list) else _short(offline)
    return f"hosts offline when it started: {names}"


def _hook_status(d: Data) -> str:
    return f"{d.get('function', 'hook')} reported {d.get('status')} for {d.get('event')}"


def _rejected(d: Data) -> str:
    return "approval rejected" + (f": {_short(d['reason'])}" if d.get("reason") else "")


def _host_failed(d: Data) -> str:
    code = f" (error {d['error_code']})" if d.get("error_code") is not None else ""
    message = f": {_short(d['message'])}" if d.get("message") else ""
    return f"{d.get('host')} {d.get('event')} failed{code}{message}"


SENTENCES: Mapping[str, Callable[[Data], str]] = {
    "deployment.requested": _requested,
    "deployment.finished": _finished,
    "deployment.stop_requested": _stop,
    "deployment.pause": lambda d: "paused",
    "deployment.resume": lambda d: "resumed",
    "deployment.continue": lambda d: "told to continue",
    "deployment.promote": lambda d: "promoted: the wait was cut short",
    "deployment.resumed": _resumed,
    "deployment.winding_up": _winding_up,
    "deployment.offline_hosts": _offline,
    "traffic.shifted": _shifted,
    "traffic.verified": _verified,
    "traffic.verify_holding": _holding,
    "traffic.unverified": _unverified,
    "traffic.rerouted": _rerouted,
    "traffic.reroute_failed": _reroute_failed,
    "rollback.triggered": _rollback_triggered,
    "rollback.requested": lambda d: "rollback requested",
    "rollback.skipped": _rollback_reason("skipped"),
    "rollback.rerouted": _rollback_reason("rerouted"),
    "alarms.ignored": lambda d: str(d.get("reason") or "alarms ignored"),
    "approval.granted": lambda d: "approved",
    "approval.satisfied": lambda d: "approvals satisfied",
    "approval.rejected": _rejected,
    "hook.status": _hook_status,
    "hook.status_repeated": lambda d: _hook_status(d) + " again (no change)",
    HOST_EVENT_FAILED: _host_failed,
}
FAILED_KINDS = frozenset({HOST_EVENT_FAILED, "traffic.reroute_failed", "traffic.unverified", "rollback.triggered"})


def sentence(kind: str, data: Data | None) -> str:
    """The entry in words; an unknown kind reads as ``kind: key=value, ...`` (its first few short fields)."""
    fields: Data = data or {}
    say = SENTENCES.get(kind)
    if say is not None:
        return say(fields)
    shown = [f"{key}={_short(value)}" for key, value in fields.items() if value not in (None, "", [], {})]
    extra = ", …" if len(shown) > MAX_FALLBACK_FIELDS else ""
    return f"{kind}: {', '.join(shown[:MAX_FALLBACK_FIELDS])}{extra}" if shown else kind


def _tone(kind: str, data: Data) -> str:
    if kind in FAILED_KINDS or (kind == "deployment.finished" and data.get("status") in ("Failed", "Stopped")):
        return "failed"
    return ""


def host_failures(targets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each failed host event as a log entry (``kind`` host.event_failed, at its end), from the target records."""
    entries: list[dict[str, Any]] = []
    for target in targets:
        for event in target.get("events", []):
            if event.get("status") != "Failed":
                continue
            at = event.get("ended_at") or event.get("started_at")
            if not isinstance(at, int | float):
                continue
            data = {
                "host": target["name"],
                "event": event["name"],
                "error_code": event.get("error_code"),
                "message": event.get("message") or "",
            }
            entries.append({"at": float(at), "actor": str(target["name"]), "kind": HOST_EVENT_FAILED, "data": data})
    return entries


def readable_log(log: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]] = ()) -> list[LogLine]:
    """The stored entries and the hosts' failures, in time order, each with its sentence and raw JSON."""
    entries = [*log, *host_failures(targets)]
    entries.sort(key=lambda e: float(e.get("at") or 0))
    lines: list[LogLine] = []
    for entry in entries:
        kind = str(entry.get("kind", ""))
        data = entry.get("data")
        fields: Data = data if isinstance(data, Mapping) else {}
        raw = json.dumps(dict(entry), indent=2, sort_keys=True, default=str)
        at = float(entry.get("at") or 0)
        lines.append(LogLine(at, str(entry.get("actor") or ""), kind, sentence(kind, fields), raw, _tone(kind, fields)))
    return lines
