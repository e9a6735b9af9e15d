"""Weights follow health, never lead it — HAProxyRouter against a real HAProxy and real aiohttp backends.

A host restarted by a deployment may still read UP in HAProxy: the UP of the process it replaced, or "UP 1/2" after
one failed check against the new one. The router resets the server's check counter and gives it weight (or sets it
ready, in place) only once a check that passed *after* that reset brought it UP. Backends here are replaced by
flipping their health: what HAProxy sees right after the flip is the old process's verdict.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from fractions import Fraction

import pytest
import test_haproxy
from conftest import HANG_GUARD
from test_haproxy import StackFactory, spread

from engine.adapters.haproxy.process import health_verdict_seconds
from engine.adapters.haproxy.runtime import AdminState, parse_stat_csv
from engine.core.errors import AdapterError

# The real HAProxy + aiohttp backends fixtures of test_haproxy.py, shared rather than copied.
run_dir = test_haproxy.run_dir
stack = test_haproxy.stack


async def transitions_to_down(s: test_haproxy.Stack) -> dict[str, int]:
    """HAProxy's count of UP -> DOWN transitions per server (``chkdown``)."""
    rows = parse_stat_csv(await s.runtime.execute("show stat -1 4 -1"))
    return {row["svname"]: int(row["chkdown"] or 0) for row in rows if row["pxname"] == "web"}


async def load_until(url: str, work: asyncio.Future[None]) -> Counter[str]:
    """Requests through HAProxy for as long as ``work`` runs (and one batch more), counted by who answered."""
    answers: Counter[str] = Counter()
    while True:
        done = work.done()
        answers += await spread(url, 40, concurrency=4)
        if done:
            return answers


VERDICT = 1.5  # seconds a restarted server has to be seen UP here: three of the stack's 500 ms checks


async def test_a_replacement_whose_new_process_fails_health_is_never_weighted(stack: StackFactory) -> None:
    s = await stack(["blue", "green"])
    router = s.router(allow_timeout=VERDICT)
    router.set_roles("web", ["blue"], ["green"])
    await router.set_weight("web", 0)  # between deployments: the idle side drained, its old process still checked
    await s.wait_status("green", "DRAIN")
    assert (await s.state("green")).up
    s.backends["green"].healthy = False  # restarted into a process that fails its health check
    assert (await s.state("green")).status != "DOWN"  # HAProxy still has the old process's verdict
    shift = asyncio.ensure_future(router.set_weight("web", 20))
    answers = await load_until(s.url, shift)
    with pytest.raises(AdapterError) as caught:
        await shift
    assert "web/green" in caught.value.detail and "L7STS" in caught.value.detail
    assert set(answers) == {"blue"}  # 0 requests reached the failing host while the router waited on its health
    states = await s.runtime.server_states("web")
    assert (states["green"].weight, states["green"].admin, states["blue"].weight) == (0, AdminState.DRAIN, 100)
    assert await router.verify_weight("web", 0) is True  # every weight where it was before the shift
    assert s.backends["green"].served == 0


async def test_a_healthy_replacement_is_weighted_after_a_check_newer_than_the_shift(stack: StackFactory) -> None:
    s = await stack(["blue0", "blue1", "green0", "green1"])
    router = s.router(allow_timeout=HANG_GUARD)  # HAProxy's real checks decide; the limit only guards a hang
    router.set_roles("web", ["blue0", "blue1"], ["green0", "green1"])
    await router.set_weight("web", 0)
    for green in ("green0", "green1"):
        await s.wait_status(green, "DRAIN")
    states = await s.runtime.server_states("web")
    assert states["green0"].up and states["green1"].up  # the old processes' UP
    downs_before = await transitions_to_down(s)
    await router.set_weight("web", 20)
    after = await s.runtime.server_states("web")
    for green in ("green0", "green1"):
        assert after[green].up and after[green].admin is AdminState.READY and after[green].weight > 0
    # HAProxy's own record of the resets: each green went DOWN once more, so its UP now is a check's since then
    downs_after = await transitions_to_down(s)
    assert {g: downs_after[g] - downs_before[g] for g in ("green0", "green1")} == {"green0": 1, "green1": 1}
    assert downs_after["blue0"] == downs_before["blue0"]  # the serving side was never touched
    assert await router.read_share("web") == 20 and await router.verify_weight("web", 20) is True
    answers = await spread(s.url, 1000)
    green = sum(n for name, n in answers.items() if name.startswith("green"))
    assert sum(answers.values()) == 1000 and abs(green / 10 - 20) <= 1.5


async def test_in_place_allow_never_readies_a_restarted_host_that_fails_health(stack: StackFactory) -> None:
    s = await stack(["a", "b"])
    router = s.router(allow_timeout=VERDICT, deregistration_delay=1.0)
    await router.block("web", "a")  # BlockTraffic: drained, still checked, still UP by its old process
    s.backends["a"].healthy = False  # ApplicationStart brought up a process that fails its health check
    served = s.backends["a"].served
    allow = asyncio.ensure_future(router.allow("web", "a"))
    answers = await load_until(s.url, allow)
    with pytest.raises(AdapterError, match="web/a"):
        await allow
    assert set(answers) == {"b"} and s.backends["a"].served == served
    assert (await s.state("a")).admin is AdminState.DRAIN  # never set ready
    s.backends["a"].healthy = True  # fixed: the next AllowTraffic lets it in once a fresh check passes
    await router.allow("web", "a")
    assert (await s.state("a")).admin is AdminState.READY
    assert (await spread(s.url, 40)) == Counter({"a": 20, "b": 20})


async def test_a_serving_server_is_not_taken_out_to_prove_itself(stack: StackFactory) -> None:
    """Resetting a server that takes traffic would drop it from rotation: a later canary step, or the original
    fleet's AllowTraffic in a rollback, only needs it UP. Nothing here may fail or move a request elsewhere."""
    s = await stack(["blue", "green"])
    router = s.router(allow_timeout=VERDICT)
    router.set_roles("web", ["blue"], ["green"])
    await router.set_weight("web", 50)
    answers_during = asyncio.ensure_future(spread(s.url, 400, concurrency=4))
    await router.set_weight("web", 50)  # a repeat: both sides serve
    await router.allow("web", "blue")
    answers = await answers_during
    assert not [a for a in answers if a.startswith("HTTP")]
    assert "DOWN" not in (await s.state("green")).status


async def test_weights_changed_behind_the_routers_back_read_back_as_they_are(stack: StackFactory) -> None:
    """The read-back is HAProxy's, not the router's memory: a weight changed by hand no longer verifies, and the
    share read back is the one HAProxy now applies (what the runner's held step reports in the log)."""
    s = await stack(["blue0", "blue1", "green0"])
    router = s.router()
    router.set_roles("web", ["blue0", "blue1"], ["green0"])
    await router.set_weight("web", 20)
    assert await router.read_share("web") == 20 and await router.verify_weight("web", 20) is True
    await s.runtime.set_weight("web", "green0", 100)  # someone at the runtime API
    assert await router.verify_weight("web", 20) is False
    weights = {name: state.weight for name, state in (await s.runtime.server_states("web")).items()}
    assert await router.read_share("web") == Fraction(100 * 100, 100 + weights["blue0"] + weights["blue1"])


def test_the_health_verdict_is_as_long_as_haproxy_takes_to_call_a_server_down() -> None:
    assert health_verdict_seconds(500) == 2 * (0.5 + 2)  # fall 2, inter 500 ms, timeout check 2 s
