"""``GET /metrics`` after a real deployment: Prometheus text parsed back with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_pages import Site, open_site
from test_stats_cli import serve_history

from bot.pages.metrics import EngineCollector, Snapshot

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async for s in open_site(tmp_path):
        yield s


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_metrics_after_a_failed_deployment(site: Site) -> None:
    await site.finished(await site.deploy())
    await site.client.post("/slack/events", data=b"{}")
    response = await site.client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    samples = parse(await response.text())
    assert value(samples, "deploybot_deployments", status="Failed") == 1
    assert value(samples, "deploybot_hosts", agent="online") == 4  # p1..p4 poll; s1, s2 never seen
    assert value(samples, "deploybot_hosts", agent="never seen") == 2
    assert value(samples, "deploybot_queue_length") == 0
    # OneAtATime: p1 ran every event, p2 failed at AfterInstall
    assert value(samples, "deploybot_lifecycle_event_seconds_count", event="AfterInstall", status="Failed") == 1
    assert value(samples, "deploybot_lifecycle_event_seconds_count", event="Install", status="Succeeded") == 2
    assert value(samples, "deploybot_http_request_seconds_count", route="/slack/events") == 1
    assert value(samples, "deploybot_http_request_seconds_count", route="/metrics") is None


async def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    """Two apps in one process (as in the test suite) each start from zero."""
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        async for site in open_site(tmp_path / name):
            await site.client.post("/slack/events", data=b"{}")
            samples = parse(await (await site.client.get("/metrics")).text())
            assert value(samples, "deploybot_http_request_seconds_count", route="/slack/events") == 1


def test_collector_reports_traffic_weight_per_group() -> None:
    registry = CollectorRegistry()
    snapshot = Snapshot(traffic={"app-production": 40, "app-staging": 100}, queue_length=3)
    registry.register(EngineCollector(snapshot))
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "deploybot_traffic_weight_percent", group="app-production") == 40
    assert value(samples, "deploybot_traffic_weight_percent", group="app-staging") == 100
    assert value(samples, "deploybot_queue_length") == 3


async def test_metrics_carry_delivery_numbers_per_application_environment_and_window(tmp_path: Path) -> None:
    """The history of tests/test_stats_cli.py: the same numbers as ``deploybot stats``, as gauges."""
    async for url, _ in serve_history(tmp_path):
        async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
            assert response.status == 200
            samples = parse(await response.text())
        production = {"application": "app", "environment": "production"}
        assert value(samples, "deploybot_change_failure_rate", **production, window="30d") == 0.25
        assert value(samples, "deploybot_change_failure_rate", **production, window="90d") == 2 / 6
        assert value(samples, "deploybot_deployments_per_day", **production, window="30d") == 0.1
        assert value(samples, "deploybot_time_to_restore_seconds", **production, window="90d") == 1200
        assert value(samples, "deploybot_lead_time_seconds", **production, window="30d") == 7200
        staging = {"application": "app", "environment": "staging", "window": "30d"}
        assert value(samples, "deploybot_change_failure_rate", **staging) == 0
        # unknown numbers are left out, not reported as 0 (which would read as perfect)
        assert value(samples, "deploybot_lead_time_seconds", **staging) is None
        assert value(samples, "deploybot_time_to_restore_seconds", **staging) is None
