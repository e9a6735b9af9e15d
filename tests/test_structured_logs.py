"""Structured logs: ``--log-format json`` / DEPLOYBOT_LOG_FORMAT=json (bot/logs.py, engine/core/log_context.py).

The formatter and the context are tested on their own; then a whole deployment runs through a real server and a
real agent, both logging JSON, with every secret deploybot can be given set to a recognisable value: every line on
their stderr must be a JSON object, the lines about the deployment must name it, and no secret may appear anywhere
in what they printed.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from e2e_support import DeploybotServer, write_revision
from fake_deployer import FakeDeployer, FakeFleet
from slack_support import signed, slash_body

from bot.app import create_app
from bot.logs import (
    TEXT_FORMAT,
    ContextFilter,
    JsonFormatter,
    annotate,
    bind,
    configure,
    door_fields,
    log_format,
    request_id,
    request_scope,
)
from bot.settings import Settings
from engine.core import log_context

# -- the formatter and the context -------------------------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON lines (with both the doors' and the engine's fields) into a string."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter([log_context.current]))
    logger = logging.getLogger("deploybot.test.structured")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, out
    finally:
        logger.removeHandler(handler)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_json_line_has_time_level_logger_message_and_the_bound_fields(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = json_log
    with (
        log_context.bind(deployment="d-ABC", application="web", environment="prod", event=None),
        bind(request_id="req-1", actor="alice"),
    ):
        logger.warning("shifted %d%% of %s", 20, "web")
    logger.info("after")
    first, after = lines(out)
    assert first == {
        "time": first["time"],
        "level": "WARNING",
        "logger": "deploybot.test.structured",
        "message": "shifted 20% of web",
        "deployment": "d-ABC",
        "application": "web",
        "environment": "prod",
        "request_id": "req-1",
        "actor": "alice",
    }
    assert first["time"].endswith("Z")
    moment = datetime.datetime.fromisoformat(first["time"].replace("Z", "+00:00"))
    assert moment.utcoffset() == datetime.timedelta(0)
    assert abs(moment.timestamp() - datetime.datetime.now(datetime.UTC).timestamp()) < 60
    assert set(after) == {"time", "level", "logger", "message"}  # the fields end with their block


def test_an_exception_is_one_field_of_one_line(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = json_log
    try:
        raise RuntimeError("the disk is full")
    except RuntimeError:
        logger.exception("could not handle command %s", 7)
    assert len(out.getvalue().splitlines()) == 1
    (line,) = lines(out)
    assert line["message"] == "could not handle command 7" and line["level"] == "ERROR"
    assert line["exception"].startswith("Traceback") and "RuntimeError: the disk is full" in line["exception"]


def test_extra_fields_are_printed_and_what_json_cannot_hold_is_stringified(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = json_log

    class Opaque:
        def __str__(self) -> str:
            return "<opaque thing>"

    with log_context.bind(host="web-1"):
        logger.info("made", extra={"path": Path("/srv/app"), "thing": Opaque(), "count": 3, "host": "web-2"})
    (line,) = lines(out)
    assert line["path"] == "/srv/app" and line["thing"] == "<opaque thing>" and line["count"] == 3
    assert line["host"] == "web-2"  # a field given with extra= wins over the bound one


async def test_fields_follow_the_code_into_the_tasks_it_starts_and_stay_there(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = json_log

    async def deployment(ident: str, go: asyncio.Event) -> None:
        with log_context.bind(deployment=ident):
            child = asyncio.create_task(asyncio.sleep(0))  # a task started inside inherits the fields
            await go.wait()
            logger.info("step of %s", ident)
            await child

    go = asyncio.Event()
    both = asyncio.gather(deployment("d-1", go), deployment("d-2", go))
    await asyncio.sleep(0)
    go.set()
    await both
    assert sorted((line["message"], line["deployment"]) for line in lines(out)) == [
        ("step of d-1", "d-1"),
        ("step of d-2", "d-2"),
    ]
    assert log_context.current() == {}


def test_the_text_format_is_unchanged_and_configuring_again_replaces_the_first_handler() -> None:
    root = logging.getLogger()
    level, others = root.level, list(root.handlers)
    first_out, out = io.StringIO(), io.StringIO()
    first = configure("json", stream=first_out)
    handler = configure("text", stream=out, sources=[log_context.current])
    try:
        with log_context.bind(deployment="d-1"), bind(request_id="r-1"):
            logging.getLogger("deploybot.test").info("hello")
        assert first not in root.handlers and all(other in root.handlers for other in others)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert first_out.getvalue() == ""
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO deploybot\.test: hello\n", out.getvalue())
    assert TEXT_FORMAT == "%(asctime)s %(levelname)s %(name)s: %(message)s"  # as before --log-format existed


def test_the_format_comes_from_the_option_then_the_environment() -> None:
    assert log_format(None, {}) == "text"
    assert log_format(None, {"DEPLOYBOT_LOG_FORMAT": "JSON"}) == "json"
    assert log_format("text", {"DEPLOYBOT_LOG_FORMAT": "json"}) == "text"
    with pytest.raises(ValueError, match="DEPLOYBOT_LOG_FORMAT='yaml' is not a log format: use text or json"):
        log_format(None, {"DEPLOYBOT_LOG_FORMAT": "yaml"})


def test_a_request_id_is_the_callers_when_plain_else_a_new_one() -> None:
    assert request_id("lb-7f3a.1") == "lb-7f3a.1"
    made = request_id("bad id\nInjected: yes")
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert request_id(None) != request_id(None)
    assert request_id("x" * 129) != "x" * 129
    with request_scope("outer") as outer, request_scope("inner") as inner:
        assert (outer, inner) == ("outer", "outer")  # a sub-application's middleware keeps the main one's id


async def test_a_requests_fields_stay_on_the_lines_of_the_task_handling_it() -> None:
    async def seen_by_a_task_it_starts() -> dict[str, str]:
        return dict(door_fields())

    with request_scope("req-1"):
        annotate(actor="alice", host=None)
        assert door_fields() == {"request_id": "req-1", "actor": "alice"}
        with bind(actor="bob"):
            assert door_fields()["actor"] == "bob"  # bound inside the request: closer to the line, so it wins
            started = await asyncio.create_task(seen_by_a_task_it_starts())
    assert started == {"actor": "bob"}  # a runner started by the request outlives it: only bind()'s fields follow
    assert door_fields() == {}
    annotate(actor="nobody")  # outside a request: nothing to annotate
    assert door_fields() == {}


class FailingFleet(FakeFleet):
    async def heartbeat(self, host: str, info: Mapping[str, Any]) -> None:
        raise RuntimeError("the fleet is broken")


async def test_the_error_line_of_an_agent_request_names_the_request_and_the_host(
    tmp_path: Path, json_log: tuple[logging.Logger, io.StringIO]
) -> None:
    logger, out = json_log
    http_log = logging.getLogger("bot.http")
    for handler in logger.handlers:
        http_log.addHandler(handler)
    app = create_app(Settings.from_env({}, data_dir=tmp_path), deployer=FakeDeployer(fleet=FailingFleet()))
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            headers = {"Authorization": "Bearer token-web-1", "X-Request-Id": "agent-req-9"}
            async with client.post("/agent/v1/heartbeat", json={}, headers=headers) as response:
                assert response.status == 500
                assert response.headers["X-Request-Id"] == "agent-req-9"
            async with client.get("/healthz") as response:
                assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-Id"])
    finally:
        for handler in logger.handlers:
            http_log.removeHandler(handler)
    (line,) = lines(out)
    assert line["message"] == "unhandled error in POST /agent/v1/heartbeat"
    assert (line["host"], line["request_id"]) == ("web-1", "agent-req-9")  # learnt inside, written outside
    assert "RuntimeError: the fleet is broken" in line["exception"]


def test_an_unknown_log_format_is_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYBOT_")} | {"DEPLOYBOT_LOG_FORMAT": "xml"}
    argv = [sys.executable, "-m", "bot", "agent", "--server", "http://127.0.0.1:9", "--name", "web-1"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "DEPLOYBOT_LOG_FORMAT='xml' is not a log format" in done.stderr


# -- a whole deployment, logged as JSON --------------------------------------------------------------------------

APP_KEY_MATERIAL = "E2EgithubAppKeyMaterial0006xYz"
SECRETS = {
    "DEPLOYBOT_TOKEN": "dbt_e2eApiTokenSecret0001aaaaaaaaaaaaaaaaaaaaaaaaaa",
    "SLACK_BOT_TOKEN": "xoxb-e2e-slack-bot-token-secret-0002",
    "SLACK_SIGNING_SECRET": "e2e-slack-signing-secret-0003",
    "GITHUB_WEBHOOK_SECRET": "e2e-github-webhook-secret-0004",
    "GITHUB_TOKEN": "ghp_e2eGithubTokenSecret0005",
    "GITHUB_APP_PRIVATE_KEY": f"-----BEGIN RSA PRIVATE KEY-----\\n{APP_KEY_MATERIAL}\\n-----END RSA PRIVATE KEY-----",
    "DEPLOYBOT_PAGES_SECRET": "e2e-pages-secret-0007",
}
HOST = "log-1"
CONFIG = f"""server: {{data_dir: var, heartbeat_timeout: 60}}
hosts:
  - {{name: {HOST}, local: false}}
applications:
  app:
    platform: server
    environments: [prod]
    deployment_groups:
      prod:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {{hosts: [{HOST}]}}
"""


class JsonLoggingServer(DeploybotServer):
    """``deploybot serve`` with DEPLOYBOT_LOG_FORMAT=json and every secret set; stdout (its banner) and stderr (its
    log) kept apart."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, CONFIG)
        self.stderr: list[str] = []

    def start(self, timeout: float = 30) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPLOYBOT_", "SLACK_", "GITHUB_"))}
        env |= SECRETS | {"DEPLOYBOT_LOG_FORMAT": "json", "GITHUB_APP_ID": "12345"}
        env |= {"SLACK_API_URL": "http://127.0.0.1:9/api/", "GITHUB_API_URL": "http://127.0.0.1:9"}  # unreachable
        argv = [sys.executable, "-m", "bot", "serve", "--config", str(self.config), "--port", str(self.port)]
        self.process = process = subprocess.Popen(
            argv, cwd=self.workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        listening = threading.Event()

        def read_out() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                self.output.append(line)
                if "listening on" in line:
                    listening.set()

        def read_err() -> None:
            assert process.stderr is not None
            self.stderr.extend(process.stderr)

        self.readers = [threading.Thread(target=read, daemon=True) for read in (read_out, read_err)]
        for reader in self.readers:
            reader.start()
        if not listening.wait(timeout):
            raise AssertionError("server did not start:\n" + "".join(self.output + self.stderr))

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        request = urllib.request.Request(self.url + path, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[JsonLoggingServer]:
    (tmp_path / "server").mkdir()
    started = JsonLoggingServer(tmp_path / "server")
    try:
        started.start()
        yield started
    finally:
        started.cleanup()


def parsed(name: str, text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as a JSON object; fails naming the first line that is not one."""
    documents = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            document = json.loads(line)
        except ValueError:
            raise AssertionError(f"{name} line {number} is not JSON: {line!r}") from None
        assert isinstance(document, dict), line
        assert {"time", "level", "logger", "message"} <= set(document), line
        documents.append(document)
    return documents


def test_a_deployment_logged_as_json_names_itself_and_leaks_no_secret(
    tmp_path: Path, server: JsonLoggingServer
) -> None:
    agent_token = json.loads((server.data_dir / "agent-tokens.json").read_text())[HOST]
    token_file = tmp_path / "agent.token"
    token_file.write_text(agent_token)
    token_file.chmod(0o600)
    root = tmp_path / "agent"
    agent_out, agent_err = (tmp_path / "agent.out").open("wb"), (tmp_path / "agent.err").open("wb")
    argv = [sys.executable, "-m", "bot", "agent", "--server", server.url, "--name", HOST, "--log-format", "json"]
    argv += ["--token-file", str(token_file), "--root", str(root), "--prefix", str(root / "fs")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPLOYBOT_", "SLACK_", "GITHUB_"))}
    agent = subprocess.Popen(argv, stdout=agent_out, stderr=agent_err, start_new_session=True, env=env)
    server.extra_processes.append(agent)

    # A deployment whose hook warns on stderr and prints the environment it was given.
    revision = write_revision(tmp_path, "rev", {"ValidateService": "env; echo 'checked' >&2"})
    asked = {"application": "app", "environment": "prod", "revision": server.upload(revision, "app")}
    status, created = server.api("POST", "/api/v1/deployments", asked, headers={"X-Request-Id": "e2e-deploy-1"})
    assert status == 201, created
    ident = created["id"]
    assert server.wait_final(ident)["status"] == "Succeeded"
    # The doors, with their secrets at work: a signed GitHub ping and a badly signed one, a signed Slack command.
    ping = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    signature = hmac.new(SECRETS["GITHUB_WEBHOOK_SECRET"].encode(), ping, hashlib.sha256).hexdigest()
    github = {"X-GitHub-Event": "ping", "Content-Type": "application/json", "X-GitHub-Delivery": "e2e-ping-1"}
    assert server.post("/github/webhook", ping, github | {"X-Hub-Signature-256": f"sha256={signature}"}) < 300
    assert server.post("/github/webhook", ping, github | {"X-Hub-Signature-256": "sha256=" + "0" * 64}) >= 400
    body = slash_body("help")
    assert server.post("/slack/events", body.encode(), signed(body, secret=SECRETS["SLACK_SIGNING_SECRET"])) == 200
    # An API call naming its request id gets it back.
    headers = {"X-Request-Id": "e2e-request-1", "Authorization": f"Bearer {SECRETS['DEPLOYBOT_TOKEN']}"}
    with urllib.request.urlopen(
        urllib.request.Request(f"{server.url}/api/v1/deployments/{ident}", headers=headers), timeout=30
    ) as response:
        assert response.headers["X-Request-Id"] == "e2e-request-1"

    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    assert server.stop() == 0
    for reader in server.readers:
        reader.join(10)
    agent_out.close()
    agent_err.close()

    (tmp_path / "server.err").write_text("".join(server.stderr))  # kept for a failure's post-mortem
    server_lines = parsed("server stderr", "".join(server.stderr))
    agent_lines = parsed("agent stderr", (tmp_path / "agent.err").read_text())
    about_it = [line for line in server_lines if line.get("deployment") == ident]
    assert about_it, server_lines
    for line in about_it:
        assert (line["application"], line["environment"], line["deployment_group"]) == ("app", "prod", "app-prod")
    started = next(line for line in about_it if line["message"] == f"deployment {ident} started")
    assert started["actor"] == "deploybot-admin"  # who asked for it (the request's id stays with the request)
    assert any(line["message"] == f"deployment {ident} ended: Succeeded" for line in about_it)
    agent_about_it = [line for line in agent_lines if line.get("deployment") == ident]
    assert {line["event"] for line in agent_about_it} >= {"DownloadBundle", "Install", "ValidateService"}
    assert all(line["host"] == HOST and line["application"] == "app" for line in agent_about_it)
    assert all(line.get("host") == HOST for line in agent_lines)

    issued_tokens = json.loads((server.data_dir / "agent-tokens.json").read_text()).values()
    secrets = [*SECRETS.values(), APP_KEY_MATERIAL, *issued_tokens, (server.data_dir / "api-token").read_text().strip()]
    captured = {
        "server stdout": "".join(server.output),
        "server stderr": "".join(server.stderr),
        "agent stdout": (tmp_path / "agent.out").read_text(),
        "agent stderr": (tmp_path / "agent.err").read_text(),
    }
    for name, text in captured.items():
        for secret in secrets:
            assert secret not in text, f"{name} holds a secret ({secret[:12]}...)"
