"""HAProxy in front of every deployment group whose load balancer is ``haproxy``, built from the config.

``start_haproxy`` renders one frontend/backend per such group (a server per host), starts HAProxy and returns the
router the engine drives traffic through — only through the runtime API, never by reloading. Blue/green pools
start with no weight on any server; the Deployer puts the live side back on at start-up (``restore_traffic``).

HAProxy is the load balancer in front of production traffic, so it outlives a server that dies without stopping
it (kill -9): the restarted server adopts the running HAProxy when its configuration is unchanged — drained hosts
stay drained and weights stay where the resumed deployment left them — and replaces it otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.adapters.alarms import AlarmCheck, AlarmSet, HAProxyStatsAlarm, HttpProbeAlarm
from engine.adapters.haproxy.process import (
    HAProxyGroup,
    HAProxyProcess,
    HAProxyServer,
    health_verdict_seconds,
    render_config,
)
from engine.adapters.haproxy.runtime import GroupPool, HAProxyRouter, HAProxyRuntime, haproxy_name
from engine.core.config.model import DeploymentGroup, EngineConfig
from engine.core.errors import AdapterError
from engine.core.model import DeploymentType
from engine.ports import Clock, TrafficRouter

if TYPE_CHECKING:
    from engine.adapters.aws.accounts import AwsClients

log = logging.getLogger(__name__)


def haproxy_groups(config: EngineConfig) -> list[DeploymentGroup]:
    return [g for g in config.groups() if g.load_balancer is not None and g.load_balancer.type == "haproxy"]


def backend_name(group: DeploymentGroup) -> str:
    return haproxy_name(group.group_id())


def render_groups(config: EngineConfig) -> list[HAProxyGroup]:
    """One HAProxy group per load-balanced deployment group; raises AdapterError for a host without a port."""
    rendered = []
    for group in haproxy_groups(config):
        assert group.load_balancer is not None and group.load_balancer.port is not None
        servers = []
        for host in config.targets(group):
            if host.port is None:
                raise AdapterError("haproxy", f"host {host.name} of group {group.name} needs a `port` for HAProxy")
            address = "127.0.0.1" if host.local else host.name
            weight = 0 if group.deployment_type is DeploymentType.BLUE_GREEN else 100
            servers.append(HAProxyServer(haproxy_name(host.name), address, host.port, weight))
        rendered.append(
            HAProxyGroup(backend_name(group), group.load_balancer.port, group.load_balancer.health_check, servers)
        )
    return rendered


class AdoptedHAProxy:
    """A HAProxy started by an earlier server process: not our child, so stopped by pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    async def stop(self, *, grace: float = 5.0) -> None:
        await _stop_pid(self.pid, grace)


@dataclass
class HAProxyStack:
    process: HAProxyProcess | AdoptedHAProxy
    runtime: HAProxyRuntime
    router: HAProxyRouter

    def routers(self) -> dict[str, TrafficRouter]:
        return dict.fromkeys(self.router.groups, self.router)

    async def stop(self) -> None:
        await self.process.stop()


async def start_haproxy(
    config: EngineConfig, *, run_dir: Path, clock: Clock, check_interval_ms: int = 500
) -> HAProxyStack | None:
    """Start HAProxy for the config's load-balanced groups; None when no group has one."""
    groups = haproxy_groups(config)
    if not groups:
        return None
    process = HAProxyProcess(render_groups(config), run_dir=run_dir, check_interval_ms=check_interval_ms)
    runtime = process.runtime()
    pid_file = run_dir / "haproxy.pid"
    handle: HAProxyProcess | AdoptedHAProxy | None = None
    stale = _running_haproxy(pid_file)
    if stale is not None:
        wanted = render_config(process.groups, socket_path=process.socket_path, check_interval_ms=check_interval_ms)
        same = process.config_path.exists() and process.config_path.read_text() == wanted
        if same and await _answers(runtime):
            handle = AdoptedHAProxy(stale)
            log.info("adopted HAProxy pid %d left running by a previous server", stale)
        else:
            log.info("replacing HAProxy pid %d (configuration changed)", stale)
            await _stop_pid(stale, 5.0)
    if handle is None:
        await process.start()
        pid_file.write_text(str(process.pid))
        pid_file.chmod(0o600)
        handle = process
    pools = {
        group.name: GroupPool.of_hosts(
            backend_name(group),
            [host.name for host in config.targets(group)],
            deregistration_delay=group.load_balancer.deregistration_delay if group.load_balancer else 5.0,
        )
        for group in groups
    }
    # A restarted host gets as long to be seen UP as HAProxy takes to call a serving one DOWN, then it has failed.
    router = HAProxyRouter(runtime, pools, clock=clock, allow_timeout=health_verdict_seconds(check_interval_ms))
    log.info("HAProxy (pid %s) in front of %s", handle.pid, ", ".join(g.name for g in groups))
    return HAProxyStack(handle, runtime, router)


def _running_haproxy(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return pid if b"haproxy" in cmdline and state != "Z" else None


async def _answers(runtime: HAProxyRuntime) -> bool:
    try:
        await runtime.info()
    except AdapterError:
        return False
    return True


async def _stop_pid(pid: int, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(int(grace / 0.05)):
        if not Path(f"/proc/{pid}").exists():
            return
        await asyncio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def build_alarms(
    group: DeploymentGroup,
    targets: Sequence[str],
    *,
    runtime: HAProxyRuntime | None = None,
    clock: Clock,
    aws: AwsClients | None = None,
) -> AlarmSet | None:
    """The group's alarms for one deployment: HAProxy statistics of ``targets`` (the hosts getting the new
    revision), HTTP probes, and CloudWatch alarms through ``aws`` (the group's account; all of them read in one
    DescribeAlarms per poll). An alarm whose source is not configured has no check, so AlarmSet reports it
    unreadable."""
    if not group.alarms.enabled or not group.alarms.alarms:
        return None
    checks: dict[str, AlarmCheck] = {}
    cloudwatch_names: list[str] = []
    for alarm in group.alarms.alarms:
        name = str(alarm["name"])
        kind = alarm.get("type", "cloudwatch")
        if kind == "haproxy" and runtime is not None:
            checks[name] = HAProxyStatsAlarm(
                runtime,
                backend_name(group),
                [haproxy_name(t) for t in targets],
                max_5xx_rate=float(_number(alarm, "max_5xx_percent", 5.0)) / 100,
                max_response_ms=_optional(alarm, "max_response_ms"),
                window_seconds=float(_number(alarm, "window_seconds", 60.0)),
                min_requests=int(_number(alarm, "min_requests", 20)),
                clock=clock,
                name=name,
            )
        elif kind == "http":
            checks[name] = HttpProbeAlarm(
                str(alarm["url"]), expect_status=int(_number(alarm, "expect_status", 200)), name=name
            )
        elif kind == "cloudwatch" and aws is not None:
            cloudwatch_names.append(name)
    if cloudwatch_names and aws is not None:
        from engine.adapters.aws.cloudwatch import cloudwatch_checks  # aioboto3 only for groups that use AWS

        checks.update(cloudwatch_checks(aws, cloudwatch_names))
    return AlarmSet(checks)


def _number(alarm: Mapping[str, object], key: str, default: float) -> float:
    value = alarm.get(key)
    return float(value) if isinstance(value, int | float) else default


def _optional(alarm: Mapping[str, object], key: str) -> float | None:
    value = alarm.get(key)
    return float(value) if isinstance(value, int | float) else None
