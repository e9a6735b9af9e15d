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
from bot.pages.links import deployment_path, signed_query
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
    assert "deployment.requested" in html  # the event log table
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
    assert "<td>deployment.requested</td>" in updates[-1]["log"]
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
