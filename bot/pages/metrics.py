"""``GET /metrics`` in Prometheus text format, from a private CollectorRegistry per app (tests never collide).

Engine state (deployments by status, hosts by agent state, queue, traffic, each application and environment's
delivery numbers over 30 and 90 days) is async to read while collectors are sync, so the scrape handler refreshes a
snapshot first and the collector yields it. Event durations come from a
Notifier that sees every finished event once; request latency of the chat/webhook fronts from a middleware.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bot.pages.stats import environment_numbers
from engine import DeliveryNumbers, DeploymentService

TIMED_ROUTES = ("/slack/events", "/github/webhook")
EVENT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


@dataclass(slots=True)
class Snapshot:
    """The engine's state as of the last scrape."""

    deployments: Counter[str] = field(default_factory=Counter)
    hosts: Counter[str] = field(default_factory=Counter)
    queue_length: int = 0
    traffic: dict[str, int] = field(default_factory=dict)
    last_seen: dict[str, float] = field(default_factory=dict)  # host -> epoch seconds its agent was last heard from
    delivery: list[DeliveryNumbers] = field(default_factory=list)


# The delivery gauges: (name, help, the number); a number that is unknown (no deployment, no commit time) is left out
# rather than reported as 0, which would read as "perfect".
_DELIVERY_GAUGES: tuple[tuple[str, str, Any], ...] = (
    ("deploybot_deployments_per_day", "Successful deployments per day over the window", lambda n: n.per_day),
    (
        "deploybot_change_failure_rate",
        "Share of finished deployments that failed or were rolled back, over the window",
        lambda n: n.change_failure_rate,
    ),
    (
        "deploybot_time_to_restore_seconds",
        "Median time from a failed deployment to the next successful one, over the window",
        lambda n: n.time_to_restore_seconds,
    ),
    (
        "deploybot_lead_time_seconds",
        "Median time from commit to successful deployment (GitHub revisions with a commit time), over the window",
        lambda n: n.lead_time_seconds,
    ),
)


class EngineCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self.snapshot
        by_status = GaugeMetricFamily("deploybot_deployments", "Deployments in the store by status", labels=["status"])
        for status, count in sorted(s.deployments.items()):
            by_status.add_metric([status], count)
        yield by_status
        hosts = GaugeMetricFamily("deploybot_hosts", "Configured hosts by agent state", labels=["agent"])
        for state, count in sorted(s.hosts.items()):
            hosts.add_metric([state], count)
        yield hosts
        yield GaugeMetricFamily("deploybot_queue_length", "Deployments waiting in the queue", value=s.queue_length)
        traffic = GaugeMetricFamily(
            "deploybot_traffic_weight_percent", "Traffic on the new side, by group", labels=["group"]
        )
        for group, percent in sorted(s.traffic.items()):
            traffic.add_metric([group], percent)
        yield traffic
        seen = GaugeMetricFamily(
            "deploybot_agent_last_seen_timestamp_seconds",
            "When each host's agent was last heard from (epoch seconds; alert on time() minus this)",
            labels=["host"],
        )
        for host, at in sorted(s.last_seen.items()):
            seen.add_metric([host], at)
        yield seen
        for name, text, number in _DELIVERY_GAUGES:
            gauge = GaugeMetricFamily(name, text, labels=["application", "environment", "window"])
            for n in s.delivery:
                value = number(n)
                if value is not None:
                    gauge.add_metric([n.application, n.environment, f"{n.days}d"], float(value))
            yield gauge


class EventDurations:
    """An EventListener: observes each lifecycle event's duration once, as its result is recorded."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            "deploybot_lifecycle_event_seconds",
            "Duration of lifecycle events on hosts",
            ["event", "status"],
            registry=registry,
            buckets=EVENT_BUCKETS,
        )

    def event_finished(self, event: str, status: str, seconds: float) -> None:
        self.histogram.labels(event, status).observe(seconds)


@dataclass(slots=True)
class Metrics:
    registry: CollectorRegistry
    snapshot: Snapshot
    durations: EventDurations
    requests: Histogram
    deployer: DeploymentService


def create_metrics(deployer: DeploymentService) -> Metrics:
    registry = CollectorRegistry(auto_describe=False)
    snapshot = Snapshot()
    registry.register(EngineCollector(snapshot))
    requests = Histogram(
        "deploybot_http_request_seconds", "Latency of front-end HTTP requests", ["route"], registry=registry
    )
    return Metrics(registry, snapshot, EventDurations(registry), requests, deployer)


async def refresh(snapshot: Snapshot, deployer: DeploymentService) -> None:
    """Re-read the engine state (at scrape time; a scrape every 15 s costs a few small queries)."""
    deployments = Counter(row["status"] for row in await deployer.store.list_deployments(limit=None))
    traffic: dict[str, int] = {}
    for app in deployer.applications():
        for env in app["environments"]:
            latest = await deployer.history(app["name"], env["name"], limit=1)
            if latest and latest[0].get("traffic") is not None:
                traffic[env["group"]] = latest[0]["traffic"]["percent"]
    snapshot.deployments = deployments
    snapshot.traffic = traffic
    hosts = await deployer.hosts()
    snapshot.hosts = Counter(h["agent"] for h in hosts)
    snapshot.last_seen = {h["name"]: float(h["last_seen"]) for h in hosts if h.get("last_seen") is not None}
    snapshot.queue_length = len(await deployer.release.queue())
    now = deployer.clock.now()
    snapshot.delivery = [
        numbers
        for app in deployer.applications()
        for numbers in await environment_numbers(
            deployer, str(app["name"]), [str(e["name"]) for e in app["environments"]], now=now
        )
    ]


def timing_middleware(metrics: Metrics) -> Any:
    @web.middleware
    async def timed(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path not in TIMED_ROUTES:
            return await handler(request)
        started = time.perf_counter()
        try:
            return await handler(request)
        finally:
            metrics.requests.labels(request.path).observe(time.perf_counter() - started)

    return timed


METRICS = web.AppKey("pages_metrics", Metrics)


async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    await refresh(metrics.snapshot, metrics.deployer)
    response = web.Response(body=generate_latest(metrics.registry))
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response
