"""The HTML pages over real HTTP: a real Deployer with scripted agents, one host failing with hostile output."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_service import ScriptedFleet, make_revision, open_deployer

from bot.app import create_app
from bot.pages.chart import chart_view, traffic_chart, traffic_svg_path
from bot.pages.event_log import HOST_EVENT_FAILED, readable_log, sentence
from bot.pages.links import deployment_path, signed_query
from bot.pages.render import render_text
from bot.pages.timeline import tick_step, timeline_layout
from bot.settings import Settings
from engine.core.requests import DeployRequest
from engine.runtime.deployer import Deployer

TOKEN = "page-test-token"
SECRET = "page-test-secret"
HOSTILE = "<script>alert(1)</script> & done"
FAILING = "p2"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class HostileFleet(ScriptedFleet):
    """FAILING fails AfterInstall of the bad revision, printing markup; every other event succeeds."""

    bad_sha = ""

    async def _agent(self, host: str) -> None:
        fleet = self.deployer.fleet
        while True:
            command = await fleet.next_command(host, wait=0.5)
            if command is None:
                continue
            await asyncio.sleep(self.delay)
            bad = command["spec"]["revision"]["sha256"] == self.bad_sha
            if bad and host == FAILING and command["event"] == "AfterInstall":
                result = {"status": "Failed", "error_code": 4, "message": "script exited 1", "log_tail": HOSTILE}
            else:
                result = {"status": "Succeeded", "log_tail": f"{host} {command['event']} ok"}
            await fleet.report_result(host, command["id"], result)


@dataclass
class Site:
    client: TestClient[web.Request, web.Application]
    deployer: Deployer
    agents: HostileFleet

    async def deploy(self, revision: str = "rev-b") -> str:
        """Start a production deployment (OneAtATime over p1..p4); rev-b fails on p2."""
        started = await self.deployer.start(DeployRequest("app", "production", revision=revision, actor="alice"))
        return str(started["id"])

    async def finished(self, deployment_id: str) -> dict:
        """The document once the runner is done with it (its status turns final a moment before that)."""
        async with asyncio.timeout(10):
            while "deployment.finished" not in [e["kind"] for e in await self.deployer.event_log(deployment_id)]:
                await asyncio.sleep(0.02)
        return await self.deployer.get(deployment_id)

    async def settle(self) -> None:
        for row in await self.deployer.store.list_deployments(limit=None):
            await self.finished(row["id"])


async def open_site(tmp_path: Path, *, delay: float = 0.0) -> AsyncIterator[Site]:
    make_revision(tmp_path, "rev-a", "1")
    make_revision(tmp_path, "rev-b", "2")
    deployer = await open_deployer(tmp_path)
    settings = Settings(data_dir=tmp_path / "var", api_token=TOKEN, pages_secret=SECRET)
    agents = HostileFleet(deployer, ["p1", "p2", "p3", "p4"], lambda *_: None, delay=delay)
    agents.bad_sha = (await deployer.store_revision(tmp_path / "rev-b", source="rev-b"))["sha256"]
    try:
        app = create_app(settings, deployer=deployer)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            site = Site(client, deployer, agents)
            yield site
            await site.settle()
    finally:
        await agents.close()
        await deployer.close()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async for s in open_site(tmp_path):
        yield s


@pytest.fixture
async def slow_site(tmp_path: Path) -> AsyncIterator[Site]:
    async for s in open_site(tmp_path, delay=0.15):
        yield s


def signed(deployment_id: str, *, expires_in: float = 3600, secret: str = SECRET) -> str:
    path = deployment_path(deployment_id)
    return f"{path}?{signed_query(path, int(time.time() + expires_in), secret)}"


async def test_page_shows_grid_with_failed_cell_and_escaped_log_tail(site: Site) -> None:
    assert (await site.finished(await site.deploy("rev-a")))["status"] == "Succeeded"
    deployment_id = await site.deploy()
    failed = await site.finished(deployment_id)
    assert failed["status"] == "Failed"
    rollback_id = failed["rollback"]["by"]
    assert rollback_id and (await site.finished(rollback_id))["status"] == "Succeeded"
    response = await site.client.get(f"/deployments/{deployment_id}", headers=AUTH)
    html = await response.text()
    assert response.status == 200, html
    assert 'data-host="p2" data-event="AfterInstall" data-status="Failed"' in html
    assert 'data-host="p1" data-event="Install" data-status="Succeeded"' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; done" in html
    assert HOSTILE not in html
    assert "alice" in html and "CodeDeployDefault.OneAtATime" in html
    assert 'data-kind="deployment.requested"' in html  # the event log, in words, the raw entry behind a toggle
    assert "deployment requested: revision" in html and "&#34;kind&#34;: &#34;deployment.requested&#34;" in html
    assert "p2 AfterInstall failed (error 4): script exited 1" in html  # the host's failure joins the log
    assert "automatic rollback triggered (DEPLOYMENT_FAILURE)" in html
    assert 'data-rows="4"' in html and html.count('class="timeline-row"') == 4  # the timeline: a row per host
    assert 'data-event="AfterInstall" data-outcome="failed"' in html
    assert "EventSource" not in html  # a finished page does not stream
    assert f'href="/deployments/{rollback_id}"' in html
    rollback_page = await (await site.client.get(f"/deployments/{rollback_id}", headers=AUTH)).text()
    assert f'href="/deployments/{deployment_id}"' in rollback_page


async def test_list_filters_by_status_and_application(site: Site) -> None:
    deployment_id = await site.deploy()
    await site.finished(deployment_id)
    cases = [({"status": "Failed"}, True), ({"status": "Succeeded"}, False), ({"application": "app"}, True)]
    for query, listed in cases:
        response = await site.client.get("/deployments", params=query, headers=AUTH)
        assert response.status == 200
        assert (f'href="/deployments/{deployment_id}"' in await response.text()) is listed, query


async def test_list_shows_each_environments_delivery_numbers(site: Site) -> None:
    assert (await site.finished(await site.deploy("rev-a")))["status"] == "Succeeded"
    failed = await site.finished(await site.deploy())
    await site.finished(failed["rollback"]["by"])  # the automatic rollback: it restores, it is no change of its own
    html = await (await site.client.get("/deployments", headers=AUTH)).text()
    for days in (30, 90):
        row = f'data-application="app" data-environment="production" data-days="{days}"'
        assert f'{row} data-successful="1" data-deployments="2" data-failed="1"' in html
        assert f'data-application="app" data-environment="staging" data-days="{days}" data-successful="0"' in html
    assert "50% <span" in html  # the change failure rate, 1 of 2
    narrowed = await (await site.client.get("/deployments", params={"environment": "staging"}, headers=AUTH)).text()
    assert 'data-environment="staging"' in narrowed and 'data-environment="production"' not in narrowed


async def test_event_stream_pushes_updates_while_the_deployment_runs(slow_site: Site) -> None:
    deployment_id = await slow_site.deploy()
    page = await slow_site.client.get(signed(deployment_id))
    assert "EventSource" in await page.text()
    updates: list[dict] = []
    path, _, query = signed(deployment_id).partition("?")
    async with asyncio.timeout(15):
        response = await slow_site.client.get(f"{path}/events?after=0&{query}")
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                updates.append(json.loads(line.removeprefix("data: ")))
    statuses = [u["status"] for u in updates]
    assert len(updates) >= 2 and "InProgress" in statuses, statuses
    assert statuses[-1] == "Failed"
    assert [u["version"] for u in updates] == sorted({u["version"] for u in updates})
    assert 'data-status="Failed"' in updates[-1]["grid"]
    assert "<th>error</th>" in updates[-1]["summary"]  # the header, log and chart are live too
    assert 'data-kind="deployment.requested"' in updates[-1]["log"]
    assert "deployment failed" in updates[-1]["log"]
    # the timeline is live too: a bar more as each event starts, a row per host, and p2's failed bar at the end
    bars = [u["timeline"].count('<rect class="bar') for u in updates]
    assert bars == sorted(bars) and bars[-1] > bars[0], bars
    assert updates[-1]["timeline"].count('class="timeline-row"') == 4
    assert 'data-event="AfterInstall" data-outcome="failed"' in updates[-1]["timeline"]
    assert all(u["chart"] is None for u in updates)  # an in-place deployment moves no traffic


@pytest.mark.parametrize(
    ("make_url", "reason"),
    [
        (lambda d: signed(d, expires_in=-5), "expired"),
        (lambda d: signed(d)[:-3] + "000", "tampered"),
        (lambda d: signed(d, secret="other"), "tampered"),
        (lambda d: signed("some-other-id").replace("some-other-id", d), "tampered"),
        (lambda d: f"/deployments/{d}?exp=soon&sig=x", "malformed"),
        (lambda d: f"/deployments/{d}", "missing"),
    ],
)
async def test_bad_links_get_a_403_page_saying_why(site: Site, make_url, reason: str) -> None:
    deployment_id = await site.deploy()
    response = await site.client.get(make_url(deployment_id))
    assert response.status == 403
    assert response.content_type == "text/html"
    assert f'data-reason="{reason}"' in await response.text()


async def test_valid_signed_link_opens_only_its_own_page(site: Site) -> None:
    deployment_id = await site.deploy()
    assert (await site.client.get(signed(deployment_id))).status == 200
    _, _, query = signed(deployment_id).partition("?")
    assert (await site.client.get(f"/deployments?{query}")).status == 403


async def test_login_is_a_post_form_with_a_strict_httponly_session_cookie(site: Site) -> None:
    form = await site.client.get("/login")
    assert form.status == 200 and '<form method="post" action="/login">' in await form.text()
    assert 'type="password" name="token"' in await form.text()
    alice = (await site.deployer.tokens.create("alice", name="browser"))[1]

    in_url = await site.client.get("/login", params={"token": alice}, allow_redirects=False)
    assert in_url.status == 400 and "deploybot_session" not in in_url.cookies
    assert "use the login form at /login" in await in_url.text()
    bad = await site.client.post("/login", data={"token": "nope"}, allow_redirects=False)
    assert bad.status == 403 and 'data-reason="unknown token"' in await bad.text()

    response = await site.client.post("/login", data={"token": alice}, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/deployments"
    set_cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "Secure" not in set_cookie  # plain HTTP
    cookie = response.cookies["deploybot_session"]
    assert cookie.value.startswith("tok-") and alice not in cookie.value and alice not in set_cookie
    listing = await site.client.get("/deployments")  # the client's jar sends the cookie
    assert listing.status == 200 and "<h1>Deployments</h1>" in await listing.text()
    site.client.session.cookie_jar.clear()
    assert (await site.client.get("/deployments")).status == 403


async def test_revoking_the_token_logs_the_page_out_on_the_next_request(site: Site) -> None:
    token, alice = await site.deployer.tokens.create("alice", name="browser")
    await site.client.post("/login", data={"token": alice}, allow_redirects=False)
    assert (await site.client.get("/deployments")).status == 200
    await site.deployer.tokens.revoke(token.id, actor="root")
    response = await site.client.get("/deployments")
    page = await response.text()
    assert response.status == 403 and 'data-reason="revoked"' in page and "Logged out" in page
    assert response.cookies["deploybot_session"].value == ""  # and the browser drops it
    assert (await site.client.get("/deployments", headers={"Authorization": f"Bearer {alice}"})).status == 403


async def test_a_forged_or_stale_session_cookie_opens_nothing(site: Site) -> None:
    _, alice = await site.deployer.tokens.create("alice", name="browser")
    response = await site.client.post("/login", data={"token": alice}, allow_redirects=False)
    value = response.cookies["deploybot_session"].value
    token_id, issued, mac = value.split(".")
    site.client.session.cookie_jar.clear()
    for forged in (f"{token_id}.{issued}.{'0' * 64}", f"{token_id}.{int(issued) + 1}.{mac}", "tok-x.1.y", "junk"):
        answer = await site.client.get("/deployments", cookies={"deploybot_session": forged})
        assert answer.status == 403 and 'data-reason="unknown token"' in await answer.text(), forged


def _self_signed(directory: Path) -> ssl.SSLContext:
    """A certificate for 127.0.0.1, so the pages can be served over real HTTPS."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


async def test_the_session_cookie_is_secure_over_https(tmp_path: Path) -> None:
    deployer = await open_deployer(tmp_path)
    settings = Settings(data_dir=tmp_path / "var", api_token=TOKEN, pages_secret=SECRET)
    server = TestServer(create_app(settings, deployer=deployer), host="127.0.0.1")
    try:
        await server.start_server(ssl=_self_signed(tmp_path))
        async with TestClient(server) as client:
            assert str(server.make_url("/")).startswith("https://")
            response = await client.post("/login", data={"token": TOKEN}, allow_redirects=False, ssl=False)
            assert response.status == 303
            set_cookie = response.headers["Set-Cookie"]
            assert "Secure" in set_cookie and "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    finally:
        await server.close()
        await deployer.close()


async def test_unknown_deployment_is_a_404_page(site: Site) -> None:
    response = await site.client.get("/deployments/d-nope", headers=AUTH)
    assert response.status == 404 and "d-nope" in await response.text()


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([], ""),
        ([(0.0, 0)], ""),
        ([(0.0, 0), (10.0, 100)], "M0.0,60.0 L300.0,60.0 L300.0,0.0"),
        ([(0.0, 0), (5.0, 50), (10.0, 50)], "M0.0,60.0 L150.0,60.0 L150.0,30.0 L300.0,30.0 L300.0,30.0"),
    ],
)
def test_traffic_svg_path_steps_through_the_weights(points: list[tuple[float, int]], expected: str) -> None:
    assert traffic_svg_path(points, width=300, height=60) == expected


def _doc(**fields: object) -> dict:
    return {"id": "d-1", "started_at": 100.0, "ended_at": 110.0, "traffic": {"percent": 100}, "error": None} | fields


def _entry(at: float, kind: str, **data: object) -> dict:
    return {"at": at, "kind": kind, "data": data or None, "actor": "deploybot"}


CANARY_LOG = [_entry(100.0, "deployment.requested"), _entry(102.0, "traffic.shifted", percent=20)]


@pytest.mark.parametrize(
    ("document", "log", "points", "marks"),
    [
        # in-place: no traffic, no chart
        (_doc(traffic=None), CANARY_LOG, None, None),
        # a finished canary: 0 at the start, the 20 % step, 100 % after the wait, held to the end
        (
            _doc(),
            [*CANARY_LOG, _entry(106.0, "traffic.shifted", percent=100)],
            [(100.0, 0), (102.0, 20), (106.0, 100), (110.0, 100)],
            [],
        ),
        # a running linear deployment is drawn up to now (200), at its current weight
        (
            _doc(ended_at=None, traffic={"percent": 50}),
            [*CANARY_LOG, _entry(103.0, "traffic.shifted", percent=50)],
            [(100.0, 0), (102.0, 20), (103.0, 50), (200.0, 50)],
            [],
        ),
        # an alarm stops the canary at 20 %: alarm at the end, then the reroute and the rollback right after it
        (
            _doc(traffic={"percent": 0}, error={"code": "ALARM_ACTIVE", "message": "alarm probe fired"}),
            [
                *CANARY_LOG,
                _entry(110.2, "traffic.rerouted", percent=0, milliseconds=12.5),
                _entry(110.3, "rollback.triggered", trigger="DEPLOYMENT_STOP_ON_ALARM", rerouted=True),
            ],
            [(100.0, 0), (102.0, 20), (110.2, 0), (110.3, 0)],
            [(110.0, "alarm", "alarm probe fired"), (110.2, "rollback", None), (110.3, "rollback", None)],
        ),
    ],
)
def test_traffic_chart_has_a_point_per_shift_and_marks_alarms_and_rollbacks(document, log, points, marks) -> None:
    chart = traffic_chart(document, log, now=200.0)
    if points is None:
        assert chart is None
        return
    assert chart is not None and list(chart.points) == points
    assert [(m.at, str(m.kind)) for m in chart.marks] == [(at, kind) for at, kind, _ in marks]
    assert all(label is None or m.label == label for m, (_, _, label) in zip(chart.marks, marks, strict=True))


def test_chart_view_places_a_dot_per_weight_change_and_a_line_per_mark() -> None:
    log = [*CANARY_LOG, _entry(106.0, "traffic.shifted", percent=100), _entry(106.5, "traffic.shifted", percent=100)]
    view = chart_view(traffic_chart(_doc(), log, now=0), width=100, height=100)
    assert [(s.x, s.y, s.percent) for s in view.steps] == [(0.0, 100.0, 0), (20.0, 80.0, 20), (60.0, 0.0, 100)]
    assert view.percents == "0,20,100" and view.seconds == 10.0 and view.marks == ()
    assert view.path.startswith("M0.0,100.0 L20.0,100.0 L20.0,80.0 L60.0,80.0 L60.0,0.0")
    stopped = _doc(traffic={"percent": 0}, error={"code": "ALARM_ACTIVE", "message": "m"}, ended_at=105.0)
    view = chart_view(traffic_chart(stopped, [*CANARY_LOG, _entry(110.0, "traffic.rerouted", percent=0)], now=0))
    assert view.percents == "0,20,0" and [(m.kind, m.x) for m in view.marks] == [("alarm", 280.0), ("rollback", 560.0)]


# -- the timeline ---------------------------------------------------------------------------------------------------


def _target(name: str, *events: tuple[str, str, float | None, float | None], status: str = "Succeeded") -> dict:
    return {
        "name": name,
        "status": status,
        "events": [{"name": n, "status": st, "started_at": a, "ended_at": b} for n, st, a, b in events],
    }


@pytest.mark.parametrize(
    ("targets", "now", "ended_at", "rows", "seconds"),
    [
        # nothing started yet: no timeline
        ([_target("h1", ("ApplicationStop", "Pending", None, None))], 10.0, None, None, None),
        # two hosts one after the other over 10 s, on a 100 px plot: bars placed and sized by time
        (
            [
                _target("h1", ("Install", "Succeeded", 0.0, 2.0), ("AfterInstall", "Succeeded", 2.0, 5.0)),
                _target("h2", ("Install", "Succeeded", 5.0, 6.0), ("AfterInstall", "Failed", 6.0, 10.0)),
            ],
            99.0,
            None,
            [
                ("h1", 0.0, [("Install", 0.0, 20.0, "succeeded"), ("AfterInstall", 20.0, 30.0, "succeeded")]),
                ("h2", 16.0, [("Install", 50.0, 10.0, "succeeded"), ("AfterInstall", 60.0, 40.0, "failed")]),
            ],
            10.0,
        ),
        # a running event reaches now; events that never started (Pending, Skipped) are not drawn
        (
            [
                _target(
                    "h1",
                    ("Install", "Succeeded", 100.0, 104.0),
                    ("AfterInstall", "InProgress", 104.0, None),
                    ("ValidateService", "Pending", None, None),
                    status="InProgress",
                ),
                _target("h2", ("Install", "Skipped", None, None), status="Skipped"),
            ],
            108.0,
            None,
            [
                ("h1", 0.0, [("Install", 0.0, 50.0, "succeeded"), ("AfterInstall", 50.0, 50.0, "running")]),
                ("h2", 16.0, []),
            ],
            8.0,
        ),
        # a finished deployment's end stretches the axis; an instant event keeps a visible width
        (
            [_target("h1", ("BeforeAllowTraffic", "Skipped", 0.0, 0.0), ("Install", "Succeeded", 0.0, 5.0))],
            50.0,
            20.0,
            [("h1", 0.0, [("BeforeAllowTraffic", 0.0, 1.5, "skipped"), ("Install", 0.0, 25.0, "succeeded")])],
            20.0,
        ),
    ],
)
def test_timeline_layout_places_a_bar_per_event_from_its_times(targets, now, ended_at, rows, seconds) -> None:
    view = timeline_layout(targets, now=now, ended_at=ended_at, width=100)
    if rows is None:
        assert view is None
        return
    assert view is not None and view.seconds == seconds and view.hidden_hosts == 0
    got = [(r.host, r.y, [(b.event, b.x, b.width, b.outcome) for b in r.bars]) for r in view.rows]
    assert got == rows


def test_timeline_draws_at_most_max_rows_and_counts_the_rest() -> None:
    targets = [_target(f"host-{i}", ("Install", "Succeeded", float(i), float(i + 1))) for i in range(7)]
    view = timeline_layout(targets, now=10.0, max_rows=3)
    assert view is not None
    assert [r.host for r in view.rows] == ["host-0", "host-1", "host-2"] and view.hidden_hosts == 4
    assert view.seconds == 7.0  # the axis still spans every host's events
    html = render_text("timeline.html", timeline=view)
    assert html.count('class="timeline-row"') == 3 and 'data-hidden="4"' in html
    assert "and 4 more hosts" in html


def test_timeline_svg_has_a_title_per_bar_and_a_time_axis() -> None:
    targets = [_target("a-very-long-host-name-indeed", ("Install", "Failed", 0.0, 65.0), status="Failed")]
    view = timeline_layout(targets, now=70.0)
    assert view is not None and view.rows[0].label == "a-very-long-host-…"
    html = render_text("timeline.html", timeline=view)
    assert "<title>a-very-long-host-name-indeed Install: Failed (1m 05s)</title>" in html
    assert [t.label for t in view.ticks] == ["0s", "15s", "30s", "45s", "1m"]
    assert all(f">{t.label}</text>" in html for t in view.ticks)
    assert render_text("timeline.html", timeline=None).strip().startswith('<p class="muted">No host has started')


@pytest.mark.parametrize(
    ("span", "step"),
    [(0.0, 1), (5.0, 1), (7.0, 2), (65.0, 15), (600.0, 120), (3 * 3600.0, 1800), (4 * 3600.0, 3600), (10**6, 172800)],
)
def test_tick_step_keeps_the_axis_to_six_ticks(span: float, step: int) -> None:
    assert tick_step(span) == step


# -- the event log in words -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "data", "text"),
    [
        (
            "deployment.requested",
            {"group": "app-production", "revision": "ab" * 32, "rollback_of": None},
            "deployment requested: revision abababababab to app-production",
        ),
        (
            "deployment.requested",
            {"group": "g", "revision": "cd" * 32, "rollback_of": "d-1"},
            "deployment requested: revision cdcdcdcdcdcd to g (rollback of d-1)",
        ),
        (
            "deployment.finished",
            {"status": "Failed", "error_code": "HEALTH_CONSTRAINTS"},
            "deployment failed (HEALTH_CONSTRAINTS)",
        ),
        ("deployment.finished", {"status": "Succeeded", "error_code": None}, "deployment succeeded"),
        ("deployment.stop_requested", {"rollback": True}, "stop requested, with rollback"),
        ("deployment.stop_requested", {"rollback": None}, "stop requested"),
        ("traffic.shifted", {"percent": 10}, "traffic 10% → new side"),
        (
            "traffic.verified",
            {"wanted_percent": 10, "checks": 3, "seconds": 0.42},
            "traffic at 10% verified (3 checks, 0.4s)",
        ),
        (
            "traffic.rerouted",
            {"percent": 0, "milliseconds": 12.5},
            "traffic rerouted to the original fleet (0%) in 12 ms",
        ),
        (
            "rollback.triggered",
            {"trigger": "DEPLOYMENT_STOP_ON_ALARM"},
            "automatic rollback triggered (DEPLOYMENT_STOP_ON_ALARM)",
        ),
        (
            "rollback.skipped",
            {"reason": "no earlier successful revision"},
            "rollback skipped: no earlier successful revision",
        ),
        ("deployment.offline_hosts", {"group": "g", "offline": ["p1", "p2"]}, "hosts offline when it started: p1, p2"),
        (
            HOST_EVENT_FAILED,
            {"host": "production-1", "event": "AfterInstall", "error_code": 1, "message": "<script>"},
            "production-1 AfterInstall failed (error 1): <script>",
        ),
        # an unknown kind: the kind and its short fields, empty ones left out
        ("lock.set", {"lock": "x", "replaced": None, "n": 3}, "lock.set: lock=x, n=3"),
        ("something.new", {}, "something.new"),
        ("many.fields", {k: k for k in "abcdef"}, "many.fields: a=a, b=b, c=c, d=d, …"),
    ],
)
def test_each_kind_reads_as_a_sentence(kind: str, data: dict, text: str) -> None:
    assert sentence(kind, data) == text


def test_readable_log_joins_host_failures_in_time_order_with_the_raw_entry() -> None:
    log = [
        _entry(100.0, "deployment.requested", group="g", revision="ab" * 32),
        _entry(110.0, "deployment.finished", status="Failed"),
    ]
    targets = [
        _target("p1", ("Install", "Succeeded", 101.0, 102.0)),
        _target("p2", ("AfterInstall", "Failed", 103.0, 105.0), status="Failed"),
    ]
    targets[1]["events"][0] |= {"error_code": 4, "message": "script exited 1"}
    lines = readable_log(log, targets)
    assert [(line.at, line.kind, line.tone) for line in lines] == [
        (100.0, "deployment.requested", ""),
        (105.0, HOST_EVENT_FAILED, "failed"),
        (110.0, "deployment.finished", "failed"),
    ]
    assert lines[1].sentence == "p2 AfterInstall failed (error 4): script exited 1" and lines[1].actor == "p2"
    assert json.loads(lines[0].raw) == log[0]
    html = render_text("log.html", log_lines=lines)
    assert html.count("<details>") == 3 and '<summary class="sentence">deployment failed</summary>' in html
