"""Notifications: milestones at once, per-host progress merged within the interval but never lost."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from conftest import FakeClock

from engine.runtime.notifications import Notifications


class Recorder:
    def __init__(self, groups: frozenset[str] | None = None) -> None:
        self.documents: list[dict[str, Any]] = []
        self.groups = groups  # the groups it follows; None: every group

    def follows(self, group: str) -> bool:
        return self.groups is None or group in self.groups

    async def deployment_changed(self, deployment: Mapping[str, Any]) -> None:
        self.documents.append(dict(deployment))


def setup(interval: float = 0.05) -> tuple[Notifications, Recorder, dict[str, int], FakeClock]:
    """Notifications on a FakeClock the test moves, throttling progress to one delivery per ``interval``."""
    recorder = Recorder()
    version = {"d-1": 0}

    async def fetch(deployment_id: str) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"id": deployment_id, "version": version[deployment_id]}

    clock = FakeClock()
    return Notifications([recorder], fetch, interval=interval, timer=clock), recorder, version, clock


async def test_a_deployment_no_notifier_follows_is_never_read() -> None:
    """Told its group, a change that concerns no notifier costs no read of the (large) document."""
    reads: list[str] = []
    groups = {"d-1": "blog-staging", "d-2": "shop-prod", "d-3": "shop-prod", "d-4": "blog-staging"}

    async def fetch(deployment_id: str) -> dict[str, Any]:
        reads.append(deployment_id)
        return {"id": deployment_id, "group": groups[deployment_id]}

    recorder = Recorder(groups=frozenset({"shop-prod"}))
    notifications = Notifications([recorder], fetch, interval=0, timer=FakeClock())
    await notifications.changed("d-1", "InProgress", group="blog-staging")
    assert reads == [] and recorder.documents == []
    await notifications.changed("d-2", "InProgress", group="shop-prod")
    await notifications.changed("d-3")  # group unknown (no runner): read, as any notifier may follow it
    await notifications.changed("d-4")  # read, and then of no concern to the notifier: not handed to it
    assert reads == ["d-2", "d-3", "d-4"] and [d["id"] for d in recorder.documents] == ["d-2", "d-3"]


async def test_milestone_changes_are_delivered_at_once_every_time() -> None:
    notifications, recorder, version, _ = setup(interval=60)
    for step, signature in enumerate(["InProgress", "web-1 done", "Succeeded"], start=1):
        version["d-1"] = step
        await notifications.changed("d-1", signature)
    assert [d["version"] for d in recorder.documents] == [1, 2, 3]


async def test_progress_in_a_burst_is_merged_and_the_latest_follows() -> None:
    notifications, recorder, version, clock = setup(interval=0.05)
    for step in range(1, 6):  # five moves from one lifecycle event to the next, same milestones
        version["d-1"] = step
        await notifications.changed("d-1", "InProgress")
    assert [d["version"] for d in recorder.documents] == [1]
    await clock.sleeping(1)  # the trailing delivery waits for the interval to end
    await clock.advance(0.05)
    assert [d["version"] for d in recorder.documents] == [1, 5]


async def test_a_milestone_after_merged_progress_makes_the_trailing_delivery_unneeded() -> None:
    notifications, recorder, version, clock = setup(interval=0.05)
    version["d-1"] = 1
    await notifications.changed("d-1", "InProgress")
    version["d-1"] = 2
    await notifications.changed("d-1", "InProgress")
    version["d-1"] = 3
    await notifications.changed("d-1", None)  # unknown to the runner (finished): always at once
    await clock.sleeping(1)
    await clock.advance(0.05)  # the trailing delivery wakes and finds the latest document already shown
    assert [d["version"] for d in recorder.documents] == [1, 3]


async def test_progress_after_a_milestone_inside_the_interval_is_still_delivered() -> None:
    notifications, recorder, version, clock = setup(interval=0.05)
    version["d-1"] = 1
    await notifications.changed("d-1", "A")
    version["d-1"] = 2
    await notifications.changed("d-1", "A")  # merged: a trailing delivery is armed
    version["d-1"] = 3
    await notifications.changed("d-1", "B")  # at once
    version["d-1"] = 4
    await notifications.changed("d-1", "B")  # merged again, while the first trailing delivery still waits
    await clock.sleeping(1)
    await clock.advance(0.05)
    await clock.advance(0.05)
    assert [d["version"] for d in recorder.documents][-1] == 4
    await notifications.close()


async def test_without_notifiers_nothing_is_read() -> None:
    async def fetch(deployment_id: str) -> dict[str, Any]:
        raise AssertionError("read without a notifier")

    await Notifications([], fetch).changed("d-1", "x")


async def test_progress_of_a_deployment_dear_to_read_is_spaced_by_what_a_delivery_costs() -> None:
    """A 1,000-host document takes ~10 ms to read: progress deliveries every 50 ms would take a fifth of the
    server, so they are spaced by COST_SHARE times what the last one took."""
    recorder = Recorder()
    clock = FakeClock()
    version = {"d-1": 0}

    async def dear_fetch(deployment_id: str) -> dict[str, Any]:
        await clock.advance(0.02)  # reading this document takes 20 ms
        return {"id": deployment_id, "version": version[deployment_id]}

    notifications = Notifications([recorder], dear_fetch, interval=0.05, timer=clock)
    version["d-1"] = 1
    await notifications.changed("d-1", "InProgress")
    for step in range(2, 6):
        version["d-1"] = step
        await notifications.changed("d-1", "InProgress")
    assert [d["version"] for d in recorder.documents] == [1]
    await clock.sleeping(1)
    await clock.advance(0.05)  # the plain interval is not enough: 20 ms x COST_SHARE from the last delivery
    assert [d["version"] for d in recorder.documents] == [1]
    await clock.advance(0.15)
    assert [d["version"] for d in recorder.documents] == [1, 5]
    version["d-1"] = 6
    await notifications.changed("d-1", "Failed on web-1")  # a milestone is never held back
    assert [d["version"] for d in recorder.documents] == [1, 5, 6]
