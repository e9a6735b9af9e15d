"""CloudWatch alarms as checks of an ``AlarmSet`` (engine/adapters/alarms.py): a deployment stops when one is in ALARM.

``AlarmSet`` asks each of its checks concurrently, one per alarm name; the checks of one group share a
``CloudWatchAlarms`` poller, so a poll of all the group's alarms is one ``DescribeAlarms(AlarmNames=[...])`` call
(checks asked while a call is in flight join it). Only ``ALARM`` fires: ``OK`` and ``INSUFFICIENT_DATA`` do not, as
in CodeDeploy. An alarm name CloudWatch does not know, or a failed call, is "cannot tell" (AdapterError); whether that
stops the deployment is the group's ``ignore_poll_alarm_failure`` (the runner's business, reference §7.2).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from engine.adapters.aws.accounts import AwsClients, aws_error
from engine.core.errors import AdapterError

COMPONENT = "cloudwatch"
_MAX_NAMES = 100  # DescribeAlarms' limit per call; a group lists at most 10


@dataclass(frozen=True, slots=True)
class AlarmState:
    name: str
    state: str  # OK | ALARM | INSUFFICIENT_DATA
    reason: str = ""


class CloudWatchAlarms:
    """The states of a fixed set of alarms, read in one call per poll."""

    def __init__(self, clients: AwsClients, names: Sequence[str]) -> None:
        if len(names) > _MAX_NAMES:
            raise ValueError(f"at most {_MAX_NAMES} alarms per poll, got {len(names)}")
        self.clients = clients
        self.names = tuple(dict.fromkeys(names))
        self._in_flight: asyncio.Task[dict[str, AlarmState]] | None = None

    async def states(self) -> dict[str, AlarmState]:
        """Every alarm's state now; callers arriving while a call is in flight share its answer."""
        if self._in_flight is None or self._in_flight.done():
            self._in_flight = asyncio.ensure_future(self._describe())
        return await asyncio.shield(self._in_flight)

    async def _describe(self) -> dict[str, AlarmState]:
        client = await self.clients.get("cloudwatch")
        try:
            answer = await client.describe_alarms(
                AlarmNames=list(self.names), AlarmTypes=["MetricAlarm", "CompositeAlarm"], MaxRecords=_MAX_NAMES
            )
        except (ClientError, BotoCoreError) as exc:
            raise aws_error(COMPONENT, exc) from exc
        found: dict[str, AlarmState] = {}
        for alarm in (*answer.get("MetricAlarms", []), *answer.get("CompositeAlarms", [])):
            found[alarm["AlarmName"]] = _state(alarm)
        return found

    def check(self, name: str) -> CloudWatchAlarmCheck:
        """The ``AlarmCheck`` of one alarm, for ``AlarmSet``."""
        if name not in self.names:
            raise ValueError(f"{name!r} is not one of this poller's alarms")
        return CloudWatchAlarmCheck(self, name)


class CloudWatchAlarmCheck:
    """engine.adapters.alarms.AlarmCheck for one CloudWatch alarm."""

    def __init__(self, poller: CloudWatchAlarms, name: str) -> None:
        self.poller = poller
        self.name = name

    async def firing(self) -> tuple[str, ...]:
        """``("cloudwatch:NAME in ALARM: reason",)`` when in ALARM, () otherwise; AdapterError when unknown."""
        state = (await self.poller.states()).get(self.name)
        if state is None:
            raise AdapterError(COMPONENT, f"no alarm named {self.name!r}")
        if state.state != "ALARM":
            return ()
        return (f"cloudwatch:{self.name} in ALARM" + (f": {state.reason}" if state.reason else ""),)


def cloudwatch_checks(clients: AwsClients, names: Sequence[str]) -> dict[str, CloudWatchAlarmCheck]:
    """One check per alarm name, all sharing one poller (one DescribeAlarms per poll)."""
    if not names:
        return {}
    poller = CloudWatchAlarms(clients, names)
    return {name: poller.check(name) for name in poller.names}


def _state(alarm: Mapping[str, Any]) -> AlarmState:
    return AlarmState(str(alarm["AlarmName"]), str(alarm.get("StateValue", "")), str(alarm.get("StateReason", "")))
