"""The agent protocol's JSON bodies as typed values (pure): commands in, results out (contracts: "Agent protocol").

On the wire (``/agent/v1``), one TypedDict per body:
  - ``CommandBody``: a command the server hands an agent (the ``command`` of a poll answer, or of a result answer
    with ``?next=``); the agent reads it with ``Command.from_json``, which checks it.
  - ``ResultBody``: what the agent POSTs to ``commands/<id>/result`` (``CommandResult.to_json`` makes it).
  - ``HeartbeatBody``: what the agent POSTs to ``heartbeat``.

Runs (capability ``"runs"``): an agent that names it in its heartbeats' ``capabilities`` and polls with ``runs=1``
is handed a host's consecutive events at once: the command (with the spec) carries ``then``, the ids and events of
the commands queued behind it up to the next server-side step (``agent_run``). It reports each result as it
finishes with ``?then=<next id>``; the answer ``{"stop": false}`` means the server has claimed that command for it,
``{"stop": true}`` that it must not run it (the deployment stopped, or the command is gone): then it polls. An
agent without the capability is handed one event at a time, as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

from engine.core.lifecycle import TRAFFIC_EVENTS
from engine.core.model import ROLLBACK_CREATOR, DeploymentType, EventStatus, LifecycleEvent, ScriptErrorCode

RESTART_MESSAGE = "Failed: Failing in-progress lifecycle event after an agent restart."
LOG_TAIL_BYTES = 4096
BASIC_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
"""The only variables of an agent's own environment that hooks get (and all a local agent gets of the server's):
what a script needs to find programs, a home, its locale, time zone and scratch space. Anything else there may be a
secret (the agent's token, cloud keys, the server's Slack and GitHub credentials)."""


ResultStatus = Literal["Succeeded", "Failed"]
"""A result's ``status`` on the wire."""
_EndStatus = Literal[EventStatus.SUCCEEDED, EventStatus.FAILED]
"""The same as an EventStatus."""


RUNS_CAPABILITY = "runs"
"""What an agent that runs a host's consecutive events back to back names in its heartbeats' ``capabilities``."""


def agent_run(events: Sequence[LifecycleEvent], start: int) -> tuple[LifecycleEvent, ...]:
    """The events an agent may run back to back from ``events[start]``: up to the next server-side step (a traffic
    event: BlockTraffic, AllowTraffic), which the server does itself between two runs. Never empty."""
    run: list[LifecycleEvent] = []
    for event in events[start:]:
        if run and event in TRAFFIC_EVENTS:
            break
        run.append(event)
        if event in TRAFFIC_EVENTS:
            break
    return tuple(run)


class RunStep(TypedDict):
    """A command queued behind another of the same deployment (its spec is the first command's)."""

    id: int
    event: str


class CommandBody(TypedDict):
    """A command, as the server sends it."""

    id: int
    deployment_id: str
    event: str
    """A LifecycleEvent: DownloadBundle, Install or a hook event."""
    spec: Mapping[str, Any]
    """The deployment's spec, the same for every command of a deployment: the JSON object ``DeploymentSpec`` reads
    (its field names; ``revision`` an object with ``sha256``, ``url``, ``size``, ``commit``, ``location``), plus
    whatever else the server keeps there, which the agent ignores (``DeploymentSpec.raw``)."""
    then: NotRequired[list[RunStep]]
    """Only to an agent that polled with ``runs=1``: the rest of the run, in order (see the module docstring)."""


class ResultBody(TypedDict):
    """The result of one command, as the agent reports it."""

    status: ResultStatus
    error_code: int
    """A ScriptErrorCode: 0 (succeeded) to 7 (cut short by an agent restart)."""
    message: str
    log_tail: str
    """The end of the event's script output, at most LOG_TAIL_BYTES of UTF-8."""
    started_at: float | None
    ended_at: float | None
    """Epoch seconds, on the agent's clock (this agent always sends both; the server accepts null from older
    agents, and a result it makes itself for a silent host has no start)."""


class HeartbeatBody(TypedDict):
    """An agent's heartbeat, every few seconds whatever it is doing."""

    tags: dict[str, str]
    version: str
    running_command: int | None
    """The command the agent has not yet seen accepted (running or being reported); the server hands out again a
    claimed command its agent does not name."""
    capabilities: NotRequired[list[str]]
    """What this agent can do beyond the first version of the protocol: ``RUNS_CAPABILITY``."""


class MalformedCommand(ValueError):
    """A command body the agent cannot read; ``command_id`` is set when the id itself was readable."""

    def __init__(self, reason: str, command_id: int | None = None) -> None:
        self.reason = reason
        self.command_id = command_id
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class RevisionRef:
    sha256: str
    url: str
    size: int = 0
    commit: str | None = None


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    deployment_id: str
    application_name: str
    deployment_group_name: str
    deployment_group_id: str
    deployment_type: str = DeploymentType.IN_PLACE
    creator: str = "user"
    revision: RevisionRef | None = None
    file_exists_behavior: str = "DISALLOW"
    ignore_application_stop_failures: bool = False
    appspec_filename: str = "appspec.yml"
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def blue_green_rollback(self) -> bool:
        return self.creator == ROLLBACK_CREATOR and self.deployment_type == DeploymentType.BLUE_GREEN

    @property
    def short_deployment_id(self) -> str:
        """``DEPLOYMENT_ID`` for scripts: the part after ``deployment/`` when the id is an ARN (§5)."""
        return self.deployment_id.rsplit("deployment/", 1)[-1]


@dataclass(frozen=True, slots=True)
class Command:
    id: int
    deployment_id: str
    event: str
    spec: DeploymentSpec
    then: tuple[tuple[int, str], ...] = ()
    """(id, event) of the commands queued behind this one, to run after it once the server says go on."""

    def following(self) -> Command | None:
        """The next command of the run (the same deployment and spec), or None at its end."""
        if not self.then:
            return None
        (command_id, event), *rest = self.then
        return Command(command_id, self.deployment_id, event, self.spec, tuple(rest))

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Command:
        raw_id = body.get("id")
        command_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
        if command_id is None:
            raise MalformedCommand(f"command without an integer id: {raw_id!r}")
        try:
            spec = body["spec"]
            revision = spec.get("revision")
            return cls(
                id=command_id,
                deployment_id=str(body["deployment_id"]),
                event=str(body["event"]),
                spec=DeploymentSpec(
                    deployment_id=str(spec["deployment_id"]),
                    application_name=str(spec["application_name"]),
                    deployment_group_name=str(spec["deployment_group_name"]),
                    deployment_group_id=str(spec["deployment_group_id"]),
                    deployment_type=str(spec.get("deployment_type") or DeploymentType.IN_PLACE),
                    creator=str(spec.get("creator") or "user"),
                    revision=None
                    if not revision
                    else RevisionRef(
                        sha256=str(revision["sha256"]),
                        url=str(revision["url"]),
                        size=int(revision.get("size") or 0),
                        commit=str(revision["commit"]) if revision.get("commit") else None,
                    ),
                    file_exists_behavior=str(spec.get("file_exists_behavior") or "DISALLOW").upper(),
                    ignore_application_stop_failures=bool(spec.get("ignore_application_stop_failures", False)),
                    appspec_filename=str(spec.get("appspec_filename") or "appspec.yml"),
                    raw=dict(spec),
                ),
                then=tuple((_run_step_id(step), str(step["event"])) for step in body.get("then") or ()),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedCommand(f"malformed command {command_id}: missing or invalid {exc}", command_id) from exc


def _run_step_id(step: Mapping[str, Any]) -> int:
    command_id = step["id"]
    if not isinstance(command_id, int) or isinstance(command_id, bool):
        raise ValueError(f"a run step without an integer id: {command_id!r}")
    return command_id


@dataclass(frozen=True, slots=True)
class CommandResult:
    status: _EndStatus
    error_code: ScriptErrorCode
    message: str
    log_tail: str
    started_at: float
    ended_at: float

    @classmethod
    def of(
        cls, code: ScriptErrorCode, message: str, log_tail: str, started_at: float, ended_at: float
    ) -> CommandResult:
        status: _EndStatus = EventStatus.SUCCEEDED if code is ScriptErrorCode.SUCCEEDED else EventStatus.FAILED
        return cls(status, code, message, log_tail, started_at, ended_at)

    def to_json(self) -> ResultBody:
        tail = self.log_tail.encode()[-LOG_TAIL_BYTES:].decode("utf-8", errors="ignore")
        return {
            "status": "Succeeded" if self.status is EventStatus.SUCCEEDED else "Failed",
            "error_code": int(self.error_code),
            "message": self.message,
            "log_tail": tail,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }
