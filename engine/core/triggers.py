"""Triggers: which change of a deployment is which CodeDeploy trigger event, and the message each one carries (pure).

A deployment group lists triggers (config key ``triggers:``): a name, the events it listens to and one target (an
SNS topic, a signed webhook, a Slack channel). The engine reads every deployment document it is told about
(``events_of``) and stores one outbox entry per (deployment, event, trigger[, instance]); engine/runtime/triggers.py
delivers them. Events are *cumulative facts* about a document, not differences between two documents: a finished
deployment "has started", a succeeded host "has started" too. So a document that arrives merged with its
predecessor (engine/runtime/notifications.py) loses nothing, and reading one twice stores nothing twice.

The messages follow CodeDeploy's "JSON data formats for CodeDeploy triggers" (User Guide): the deployment-based
shape (``applicationName``, ``deploymentGroupName``, ``createTime``, ``completeTime``, ``deploymentOverview``,
``status``, ``errorInformation``) and the instance-based one (``instanceId``, ``lastUpdatedAt``, ``instanceStatus``,
``lifecycleEvents``). Times are epoch seconds as strings, as in those samples. deploybot adds two instance events of
its own, ``InstanceAgentOffline`` and ``InstanceAgentOnline`` (agent health): instance-shaped, without a deployment.

Webhook signatures (``sign_webhook`` / ``verify_webhook``): ``X-Deploybot-Signature: v1=<hex>`` where ``<hex>`` is
HMAC-SHA256, keyed with the shared secret, of ``<timestamp>.<body>`` (the ``X-Deploybot-Timestamp`` header, a dot,
and the raw request body bytes). A receiver recomputes it, compares in constant time, and refuses a timestamp
further than ``WEBHOOK_TOLERANCE_SECONDS`` from its own clock (a replay) — see docs/triggers.md.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class TriggerEvent(StrEnum):
    """CodeDeploy's trigger event names (``TriggerEventType`` without the prefix-free spelling) and deploybot's
    two agent-health events."""

    DEPLOYMENT_START = "DeploymentStart"
    DEPLOYMENT_SUCCESS = "DeploymentSuccess"
    DEPLOYMENT_FAILURE = "DeploymentFailure"
    DEPLOYMENT_STOP = "DeploymentStop"
    DEPLOYMENT_ROLLBACK = "DeploymentRollback"
    DEPLOYMENT_READY = "DeploymentReady"
    INSTANCE_START = "InstanceStart"
    INSTANCE_SUCCESS = "InstanceSuccess"
    INSTANCE_FAILURE = "InstanceFailure"
    INSTANCE_READY = "InstanceReady"
    INSTANCE_AGENT_OFFLINE = "InstanceAgentOffline"
    INSTANCE_AGENT_ONLINE = "InstanceAgentOnline"


DEPLOYMENT_EVENTS = frozenset(e for e in TriggerEvent if e.startswith("Deployment"))
INSTANCE_EVENTS = frozenset(
    {TriggerEvent.INSTANCE_START, TriggerEvent.INSTANCE_SUCCESS, TriggerEvent.INSTANCE_FAILURE}
    | {TriggerEvent.INSTANCE_READY}
)
AGENT_EVENTS = frozenset({TriggerEvent.INSTANCE_AGENT_OFFLINE, TriggerEvent.INSTANCE_AGENT_ONLINE})


class TargetKind(StrEnum):
    SNS = "sns"
    WEBHOOK = "webhook"
    SLACK = "slack"


@dataclass(frozen=True, slots=True)
class TriggerTarget:
    """Where a trigger's messages go: an SNS topic ARN, a webhook URL (with the *name* of the environment variable
    holding its secret, never the secret), or a Slack channel."""

    kind: TargetKind
    address: str  # topic ARN | URL | channel
    secret_env: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "address": self.address, "secret_env": self.secret_env}


@dataclass(frozen=True, slots=True)
class Trigger:
    name: str
    events: frozenset[TriggerEvent]
    target: TriggerTarget


SNS_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):[A-Za-z0-9_-]{1,256}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
TRIGGER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

# -- which document is which event ------------------------------------------------------------------------------

_NOT_STARTED = frozenset({"Created", "Queued", "WaitingApproval"})
_DEPLOYMENT_FINISH = {
    "Succeeded": TriggerEvent.DEPLOYMENT_SUCCESS,
    "Failed": TriggerEvent.DEPLOYMENT_FAILURE,
    "Stopped": TriggerEvent.DEPLOYMENT_STOP,
    "Ready": TriggerEvent.DEPLOYMENT_READY,
}


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One event that a document shows has happened; ``instance`` for instance events."""

    event: TriggerEvent
    instance: str | None = None


def events_of(document: Mapping[str, Any]) -> list[Occurrence]:
    """Every trigger event the deployment ``document`` shows has happened so far (see the module docstring)."""
    status = str(document.get("status"))
    out: list[Occurrence] = []
    if document.get("started_at") is not None and status not in _NOT_STARTED:
        out.append(Occurrence(TriggerEvent.DEPLOYMENT_START))
    if status in _DEPLOYMENT_FINISH:
        out.append(Occurrence(_DEPLOYMENT_FINISH[status]))
    if (document.get("rollback") or {}).get("by"):
        out.append(Occurrence(TriggerEvent.DEPLOYMENT_ROLLBACK))
    for target in document.get("targets") or ():
        name, target_status = str(target["name"]), str(target.get("status"))
        if any(e.get("status") not in ("Pending", "Skipped") for e in target.get("events") or ()):
            out.append(Occurrence(TriggerEvent.INSTANCE_START, name))
        if target_status == "Succeeded":
            out.append(Occurrence(TriggerEvent.INSTANCE_SUCCESS, name))
            if status == "Ready":  # blue/green: the replacement is ready and waits for the reroute
                out.append(Occurrence(TriggerEvent.INSTANCE_READY, name))
        elif target_status == "Failed":
            out.append(Occurrence(TriggerEvent.INSTANCE_FAILURE, name))
    return out


def listening(triggers: Iterable[Trigger], event: TriggerEvent) -> list[Trigger]:
    return [t for t in triggers if event in t.events]


# -- the outbox key ------------------------------------------------------------------------------------------------


def outbox_key(subject: str, event: TriggerEvent, trigger: str, instance: str | None = None) -> str:
    """``trigger:<deployment id>:<event>:<trigger name>[:<instance>]``: one stored delivery per event and target.
    For agent health the subject is ``agent@<epoch seconds the agent was last heard from>`` (one per silence)."""
    key = f"trigger:{subject}:{event}:{trigger}"
    return f"{key}:{instance}" if instance is not None else key


def agent_subject(last_seen: float) -> str:
    return f"agent@{last_seen:.3f}"


# -- messages (CodeDeploy's shape) ---------------------------------------------------------------------------------


def _epoch(value: Any) -> str:
    return "" if value is None else f"{float(value):.3f}"


def deployment_overview(document: Mapping[str, Any]) -> dict[str, str]:
    counts = dict.fromkeys(("Failed", "InProgress", "Pending", "Skipped", "Succeeded"), 0)
    for target in document.get("targets") or ():
        status = str(target.get("status"))
        key = status if status in counts else ("Succeeded" if status == "Ready" else "InProgress")
        counts[key] += 1
    return {key: str(value) for key, value in counts.items()}


def deployment_message(document: Mapping[str, Any], trigger: str, *, region: str, account_id: str) -> dict[str, Any]:
    """The deployment-based trigger message."""
    message: dict[str, Any] = {
        "region": region,
        "accountId": account_id,
        "eventTriggerName": trigger,
        "applicationName": document["application"],
        "deploymentId": document["id"],
        "deploymentGroupName": document["group"],
        "createTime": _epoch(document.get("created_at")),
        "completeTime": _epoch(document.get("ended_at")),
        "deploymentOverview": deployment_overview(document),
        "status": document["status"],
    }
    error = document.get("error")
    if error:
        message["errorInformation"] = {"ErrorCode": error.get("code") or "", "ErrorMessage": error.get("message")}
    return message


def instance_message(
    document: Mapping[str, Any], instance: str, trigger: str, *, region: str, account_id: str
) -> dict[str, Any]:
    """The instance-based trigger message for ``instance`` of the deployment."""
    empty: Mapping[str, Any] = {"events": []}
    target: Mapping[str, Any] = next((t for t in document.get("targets") or () if t["name"] == instance), empty)
    events = target.get("events") or []
    times = [e.get(k) for e in events for k in ("started_at", "ended_at") if e.get(k) is not None]
    return {
        "region": region,
        "accountId": account_id,
        "eventTriggerName": trigger,
        "deploymentId": document["id"],
        "instanceId": instance,
        "lastUpdatedAt": _epoch(max(times) if times else document.get("created_at")),
        "instanceStatus": target.get("status") or "Unknown",
        "lifecycleEvents": [
            {
                "LifecycleEvent": e["name"],
                "LifecycleEventStatus": e["status"],
                "StartTime": _epoch(e.get("started_at")),
                "EndTime": _epoch(e.get("ended_at")),
            }
            for e in events
        ],
    }


def agent_message(
    host: str, event: TriggerEvent, trigger: str, *, last_seen: float, region: str, account_id: str
) -> dict[str, Any]:
    """deploybot's instance-shaped agent-health message (no deployment)."""
    return {
        "region": region,
        "accountId": account_id,
        "eventTriggerName": trigger,
        "instanceId": host,
        "lastUpdatedAt": _epoch(last_seen),
        "instanceStatus": "AgentOffline" if event is TriggerEvent.INSTANCE_AGENT_OFFLINE else "AgentOnline",
        "lifecycleEvents": [],
    }


def subject_line(event: TriggerEvent, message: Mapping[str, Any]) -> str:
    """An SNS subject (at most 100 characters) like CodeDeploy's: what happened, to which deployment."""
    what = message.get("deploymentId") or message.get("instanceId") or ""
    where = message.get("applicationName") or message.get("instanceId") or ""
    return f"{event}: deploybot {what} in {message.get('region')} to {where}"[:100]


def summary_text(event: TriggerEvent, message: Mapping[str, Any]) -> str:
    """One line for a chat channel."""
    if event is TriggerEvent.INSTANCE_AGENT_OFFLINE:
        return f":red_circle: The agent on `{message['instanceId']}` has gone silent (offline)."
    if event is TriggerEvent.INSTANCE_AGENT_ONLINE:
        return f":large_green_circle: The agent on `{message['instanceId']}` is back online."
    if "instanceId" in message:
        return f"{event}: `{message['instanceId']}` in {message['deploymentId']} ({message['instanceStatus']})"
    return (
        f"{event}: {message['applicationName']} / {message['deploymentGroupName']} {message['deploymentId']}"
        f" ({message['status']})"
    )


# -- retry -----------------------------------------------------------------------------------------------------------

RETRY_FIRST_SECONDS = 5.0
RETRY_LONGEST_SECONDS = 15 * 60.0
GIVE_UP_AFTER_SECONDS = 24 * 60 * 60.0


def retry_delay(attempts: int) -> float:
    """The wait after ``attempts`` failed tries: 5 s, 10 s, 20 s, ... at most 15 minutes."""
    return float(min(RETRY_FIRST_SECONDS * 2 ** max(attempts - 1, 0), RETRY_LONGEST_SECONDS))


class DeliveryFailed(Exception):
    """A delivery did not go through. ``permanent``: trying again cannot help (a 4xx, an unknown topic)."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


# -- webhook signatures ----------------------------------------------------------------------------------------------

SIGNATURE_HEADER = "X-Deploybot-Signature"
TIMESTAMP_HEADER = "X-Deploybot-Timestamp"
EVENT_HEADER = "X-Deploybot-Event"
DELIVERY_HEADER = "X-Deploybot-Delivery"
WEBHOOK_TOLERANCE_SECONDS = 300.0


def sign_webhook(secret: bytes, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify_webhook(
    secret: bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float = WEBHOOK_TOLERANCE_SECONDS,
) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent (a replay is refused)."""
    timestamp, signature = headers.get(TIMESTAMP_HEADER, ""), headers.get(SIGNATURE_HEADER, "")
    try:
        sent = float(timestamp)
    except ValueError:
        return False
    if abs(now - sent) > tolerance:
        return False
    return hmac.compare_digest(sign_webhook(secret, timestamp, body), signature)


# -- agent health ----------------------------------------------------------------------------------------------------


def agent_offline(last_seen: float | None, now: float, offline_after: float) -> bool:
    """A host whose agent was heard from, but not for ``offline_after`` seconds. (Never heard from: not offline,
    "never seen" — there is no silence to announce.)"""
    return last_seen is not None and now - last_seen >= offline_after


def offline_hosts(
    targets: Sequence[str], last_seen: Mapping[str, float | None], now: float, offline_after: float
) -> list[str]:
    """The targets whose agents are offline or were never seen: a deployment there cannot reach them."""
    return [t for t in targets if last_seen.get(t) is None or agent_offline(last_seen.get(t), now, offline_after)]
