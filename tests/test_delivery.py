"""Delivery numbers (engine/core/delivery.py, pure): a history built here, the four numbers checked by hand."""

from __future__ import annotations

import pytest

from bot.pages.render import rate_text, seconds_text
from engine.core.delivery import (
    DAY,
    DeploymentSummary,
    delivery_numbers,
    deployment_summary,
    restore_times,
    revision_committed_at,
)

NOW = 1_800_000_000.0


def dep(
    id: str,
    status: str,
    days_ago: float,
    *,
    env: str = "production",
    app: str = "app",
    rollback_of: str | None = None,
    rolled_back_by: str | None = None,
    lead: float | None = None,
    after: float = 0.0,
) -> DeploymentSummary:
    ended = NOW - days_ago * DAY + after
    return DeploymentSummary(
        id,
        app,
        env,
        status,
        ended,
        rollback_of=rollback_of,
        rolled_back_by=rolled_back_by,
        committed_at=ended - lead if lead is not None else None,
    )


HISTORY = [
    dep("d1", "Succeeded", 100),  # before both windows
    dep("d2", "Succeeded", 80, lead=3600),
    dep("d3", "Failed", 60),  # an outage ...
    dep("d4", "Succeeded", 60, rollback_of="d3", after=600),  # ... restored by its rollback 10 minutes later
    dep("d5", "Succeeded", 20, lead=7200),
    dep("d6", "Succeeded", 10),  # no commit time: no lead time sample
    dep("d7", "Succeeded", 5, rolled_back_by="d8"),  # succeeded, then rolled back by hand: a failed change
    dep("d8", "Succeeded", 5, rollback_of="d7", after=1800),
    dep("d9", "Stopped", 2),  # stopped without rollback: a change, not a failure
    dep("s1", "Succeeded", 1, env="staging", lead=60),  # another environment
    dep("o1", "Failed", 1, app="other"),  # another application
    DeploymentSummary("d10", "app", "production", "InProgress", None),  # still running: not counted
]


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        (
            30,
            {
                "deployments": 4,  # d5 d6 d7 d9
                "successful": 3,  # d5 d6 d7
                "failed": 1,  # d7
                "per_day": 3 / 30,
                "change_failure_rate": 0.25,
                "restores": 1,
                "time_to_restore_seconds": 1800.0,
                "lead_times": 1,
                "lead_time_seconds": 7200.0,
            },
        ),
        (
            90,
            {
                "deployments": 6,  # d2 d3 d5 d6 d7 d9
                "successful": 4,  # d2 d5 d6 d7
                "failed": 2,  # d3 d7
                "per_day": 4 / 90,
                "change_failure_rate": 2 / 6,
                "restores": 2,
                "time_to_restore_seconds": 1200.0,  # median of 600 and 1800
                "lead_times": 2,
                "lead_time_seconds": 5400.0,  # median of 3600 and 7200
            },
        ),
        (
            1,
            {
                "deployments": 0,
                "successful": 0,
                "failed": 0,
                "per_day": 0.0,
                "change_failure_rate": None,
                "restores": 0,
                "time_to_restore_seconds": None,
                "lead_times": 0,
                "lead_time_seconds": None,
            },
        ),
    ],
)
def test_numbers_over_a_window(days: int, expected: dict[str, object]) -> None:
    numbers = delivery_numbers(HISTORY, application="app", environment="production", days=days, now=NOW)
    got = {key: getattr(numbers, key) for key in expected}
    assert got == pytest.approx(expected)
    assert numbers.per_week == pytest.approx(numbers.per_day * 7)


def test_other_environments_and_applications_are_their_own() -> None:
    staging = delivery_numbers(HISTORY, application="app", environment="staging", days=30, now=NOW)
    assert (staging.deployments, staging.successful, staging.lead_time_seconds) == (1, 1, 60.0)
    other = delivery_numbers(HISTORY, application="other", environment="production", days=30, now=NOW)
    assert (other.deployments, other.failed, other.change_failure_rate) == (1, 1, 1.0)
    assert other.time_to_restore_seconds is None  # never restored: no sample yet


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ([], []),
        ([dep("a", "Succeeded", 3)], []),
        # two failures in a row are one outage, from the first
        ([dep("a", "Failed", 3), dep("b", "Failed", 2), dep("c", "Succeeded", 1)], [(NOW - 3 * DAY, 2 * DAY)]),
        # a success that was rolled back does not restore; its rollback does
        (
            [dep("a", "Failed", 3), dep("b", "Succeeded", 2, rolled_back_by="c"), dep("c", "Succeeded", 1)],
            [(NOW - 3 * DAY, 2 * DAY)],
        ),
        # order comes from the end times, not the list
        ([dep("c", "Succeeded", 1), dep("a", "Failed", 2)], [(NOW - 2 * DAY, DAY)]),
        # a stop without rollback neither starts nor ends an outage
        ([dep("a", "Failed", 3), dep("b", "Stopped", 2), dep("c", "Succeeded", 1)], [(NOW - 3 * DAY, 2 * DAY)]),
    ],
)
def test_restore_times(history: list[DeploymentSummary], expected: list[tuple[float, float]]) -> None:
    assert restore_times(history) == expected


def test_lead_time_is_never_negative() -> None:
    early = DeploymentSummary("a", "app", "production", "Succeeded", NOW - DAY, committed_at=NOW)  # clock skew
    numbers = delivery_numbers([early], application="app", environment="production", days=30, now=NOW)
    assert numbers.lead_time_seconds == 0.0


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        (None, None),
        ({"s3": {"bucket": "b"}}, None),
        ({"github": {"repository": "acme/app", "commit": "abc"}}, None),
        ({"github": {"repository": "acme/app", "commit": "abc", "committed_at": 1700000000}}, 1700000000.0),
        ({"github": {"committed_at": "2026-01-01T00:00:00Z"}}, None),  # only epoch seconds are a time
        ({"github": {"committed_at": True}}, None),
    ],
)
def test_commit_time_from_a_revision_location(location: dict | None, expected: float | None) -> None:
    assert revision_committed_at(location) == expected


def test_summary_from_a_row_and_from_the_deployment_json() -> None:
    row = {"id": "d", "application": "a", "environment": "e", "status": "Failed", "ended_at": 5, "rollback_of": None}
    assert deployment_summary({**row, "rolled_back_by": "r"}) == DeploymentSummary(
        "d", "a", "e", "Failed", 5.0, None, "r"
    )
    document = {**row, "rollback": {"of": "x", "by": None}}
    assert deployment_summary(document, committed=1.0) == DeploymentSummary(
        "d", "a", "e", "Failed", 5.0, "x", None, 1.0
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "n/a"), (0, "0s"), (45.4, "45s"), (600, "10m"), (5400, "1.5h"), (3 * DAY, "3.0d")],
)
def test_seconds_text(seconds: float | None, text: str) -> None:
    assert seconds_text(seconds) == text


def test_rate_text() -> None:
    assert (rate_text(None), rate_text(0.0), rate_text(1 / 3)) == ("n/a", "0%", "33%")


def test_as_json_carries_every_number() -> None:
    numbers = delivery_numbers(HISTORY, application="app", environment="production", days=90, now=NOW)
    assert numbers.as_json() == {
        "application": "app",
        "environment": "production",
        "days": 90,
        "deployments": 6,
        "successful": 4,
        "failed": 2,
        "deployments_per_day": round(4 / 90, 4),
        "deployments_per_week": round(4 / 90 * 7, 4),
        "change_failure_rate": 0.3333,
        "restores": 2,
        "time_to_restore_seconds": 1200.0,
        "lead_times": 2,
        "lead_time_seconds": 5400.0,
    }
