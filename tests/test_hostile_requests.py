"""Hostile and unlucky requests through the real doors: the aiohttp app on 127.0.0.1 over a real Deployer (SQLite
store, revision archive, agents' Fleet). Each answers a 4xx with a message, never a 500 (issue 17, item 5)."""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from test_appspec_cli import never_parsed
from test_store_open import serve, stop

from bot.app import create_app
from bot.assembly import assemble_deployer
from bot.http import json_response
from bot.settings import Settings
from engine.core import yamlnode
from engine.core.config.parse import parse_config
from engine.runtime.deployer import Deployer

TOKEN = "hostile-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
APPSPEC = "version: 0.0\nos: linux\nfiles:\n  - source: VERSION\n    destination: /opt/app\n"
CONFIG = """
server: {data_dir: var, admins: [root]}
hosts:
  - {name: web-1}
applications:
  app:
    revision: rev
    environments: [staging]
    deployment_groups:
      staging: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [web-1]}}
"""


@dataclass
class Door:
    client: TestClient[web.Request, web.Application]
    deployer: Deployer

    async def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> tuple[int, Any]:
        async with self.client.request(method, path, headers=headers or AUTH, **kwargs) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    @property
    def agent(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.deployer.fleet.token_for('web-1')}"}


@pytest.fixture
async def door(tmp_path: Path) -> AsyncIterator[Door]:
    (tmp_path / "rev").mkdir()
    (tmp_path / "rev" / "appspec.yml").write_text(APPSPEC)
    (tmp_path / "rev" / "VERSION").write_text("1")
    config = parse_config(CONFIG, filename="hostile.yml", base_dir=str(tmp_path))
    deployer = await assemble_deployer(config, data_dir=tmp_path / "var")
    settings = Settings.from_env({"DEPLOYBOT_TOKEN": TOKEN}, data_dir=tmp_path / "var")
    try:
        async with TestClient(TestServer(create_app(settings, deployer=deployer), host="127.0.0.1")) as client:
            yield Door(client, deployer)
    finally:
        await deployer.close()


def bundle(appspec: str, extra: dict[str, bytes] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in (("appspec.yml", appspec.encode()), ("VERSION", b"1"), *(extra or {}).items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# ---------------------------------------------------------------------------------------------------- JSON bodies


@pytest.mark.parametrize(
    ("path", "agent"),
    [("/api/v1/deployments", False), ("/api/v1/locks", False), ("/agent/v1/heartbeat", True)],
)
async def test_a_deeply_nested_json_body_is_a_400(door: Door, path: str, agent: bool) -> None:
    deep = b'{"application": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, body = await door.call("POST", path, data=deep, headers=door.agent if agent else AUTH)
    assert status == 400
    assert body["message"] == "the body is refused: nested more than 32 levels deep"


async def test_one_level_past_the_limit_is_a_400_and_many_shallow_brackets_are_not(door: Door) -> None:
    too_deep = {"application": "app", "environment": "staging", "reason": json.loads("[" * 32 + "]" * 32)}
    status, body = await door.call("POST", "/api/v1/locks", json=too_deep)
    assert (status, body["message"]) == (400, "the body is refused: nested more than 32 levels deep")
    wide = {"application": "app", "environment": "staging", "reason": [{} for _ in range(100)]}
    status, body = await door.call("POST", "/api/v1/locks", json=wide)
    assert (status, body["message"]) == (400, "'reason' must be a string")  # walked, and shallow enough


async def test_nesting_within_the_limit_reaches_the_route(door: Door) -> None:
    shallow = {"application": "app", "environment": "staging", "reason": [[[[["x"]]]]]}
    status, body = await door.call("POST", "/api/v1/locks", json=shallow)
    assert (status, body["message"]) == (400, "'reason' must be a string")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"expires_in_minutes": NaN}', "the body is refused: NaN is not a JSON number"),
        (b'{"expires_in_minutes": Infinity}', "the body is refused: Infinity is not a JSON number"),
        (b'{"expires_in_minutes": 1e400}', "the body is refused: number 1e400 out of range"),
        (b'{"expires_in_minutes": 1e308}', "the body is refused: number 1e308 out of range"),
    ],
)
async def test_non_finite_and_huge_numbers_are_a_400(door: Door, raw: bytes, message: str) -> None:
    status, body = await door.call("POST", "/api/v1/locks", data=raw)
    assert status == 400
    assert body["message"].startswith(message)


async def test_a_lock_for_1e308_minutes_is_a_400_and_no_lock(door: Door) -> None:
    lock = {"application": "app", "environment": "staging", "expires_in_minutes": 1e308}
    status, body = await door.call("POST", "/api/v1/locks", json=lock)
    assert status == 400
    assert "out of range" in body["message"]
    assert await door.call("GET", "/api/v1/locks") == (200, {"locks": []})


def test_json_responses_refuse_nan_and_infinity() -> None:
    for value in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
            json_response({"expires_at": value})
    assert json.loads(json_response({"expires_at": 1.5}).text or "") == {"expires_at": 1.5}


# ---------------------------------------------------------------------------------------------------- agents


@pytest.mark.parametrize(
    ("heartbeat", "message"),
    [
        ({"version": {}}, "'version' must be a string of at most 256 characters"),
        ({"version": ["1"]}, "'version' must be a string of at most 256 characters"),
        ({"version": "v" * 257}, "'version' must be a string of at most 256 characters"),
        ({"tags": {"k": {}}}, "'tags' must be an object of strings"),
        ({"tags": {f"k{i}": "v" for i in range(65)}}, "'tags' may hold 64 tags of at most 256 characters each"),
        ({"running_command": -1}, "'running_command' must be a command id or null"),
    ],
    ids=["version-object", "version-list", "version-long", "tag-object", "too-many-tags", "negative-command"],
)
async def test_a_bad_heartbeat_is_a_400_and_records_nothing(
    door: Door, heartbeat: dict[str, Any], message: str
) -> None:
    status, body = await door.call("POST", "/agent/v1/heartbeat", json=heartbeat, headers=door.agent)
    assert (status, body["message"]) == (400, message)
    assert await door.deployer.store.get_agent("web-1") is None


async def test_a_heartbeat_naming_a_23_digit_command_is_a_400(door: Door) -> None:
    raw = b'{"running_command": ' + b"9" * 23 + b"}"
    status, body = await door.call("POST", "/agent/v1/heartbeat", data=raw, headers=door.agent)
    assert status == 400
    assert body["message"].startswith("the body is refused: number 99999999999999999999999 out of range")


async def test_a_23_digit_command_id_is_no_command(door: Door) -> None:
    result = {"status": "Succeeded", "error_code": 0, "message": "", "log_tail": ""}
    status, body = await door.call(
        "POST", "/agent/v1/commands/" + "9" * 23 + "/result", json=result, headers=door.agent
    )
    assert (status, body) == (
        404,
        {"error": "NotFound", "message": "no command 99999999999999999999999 for host web-1"},
    )
    status, body = await door.call("POST", f"/agent/v1/commands/{2**63 - 1}/result", json=result, headers=door.agent)
    assert (status, body["error"]) == (404, "NotFound")  # the largest id the store holds: asked, and not there


async def test_result_times_past_the_year_3000_are_a_400(door: Door) -> None:
    result = {"status": "Succeeded", "error_code": 0, "started_at": 1e15}
    status, body = await door.call("POST", "/agent/v1/commands/1/result", json=result, headers=door.agent)
    assert (status, body["message"]) == (400, "'started_at' must be an epoch time in seconds (before the year 3000)")


# ---------------------------------------------------------------------------------------------------- revisions


async def test_a_5000_character_s3_bucket_in_plan_is_a_400(door: Door) -> None:
    plan = {"application": "app", "environment": "staging", "revision": "s3://" + "b" * 5000 + "/key.tar.gz"}
    status, body = await door.call("POST", "/api/v1/plan", json=plan)
    assert (status, body["error"]) == (400, "BadRevisionName")  # refused as a name, before any file or S3 call
    assert "(5000 characters)' is not an S3 bucket name" in body["message"] and len(body["message"]) < 300


@pytest.mark.parametrize(
    ("appspec", "problem"),
    [
        ("version: 0.0\nos: !!bool x\n", (2, 5, "'x' is not a valid !!bool value: fix it or remove the tag")),
        ("version: 0.0\nos: !!timestamp x\n", (2, 5, "'x' is not a valid !!timestamp value: fix it or remove the tag")),
        (
            "version: 0.0\nos: " + "[" * 5000 + "]" * 5000 + "\n",
            (2, 105, "the AppSpec nests deeper than 100 levels: the nesting limit"),
        ),
    ],
    ids=["bool-tag", "timestamp-tag", "5000-deep"],
)
async def test_uploading_a_hostile_appspec_is_a_422_with_the_located_problem(
    door: Door, appspec: str, problem: tuple[int, int, str]
) -> None:
    status, body = await door.call("POST", "/api/v1/revisions", data=bundle(appspec))
    assert (status, body["error"]) == (422, "AppSpecInvalid")
    assert [(p["line"], p["column"], p["message"]) for p in body["problems"]] == [problem]


async def test_uploading_a_4_mb_appspec_of_300000_keys_is_a_quick_422_naming_the_limit(
    door: Door, monkeypatch: pytest.MonkeyPatch
) -> None:
    appspec = "version: 0.0\nos: linux\nhooks:\n" + "".join(f"  Key{index}: value\n" for index in range(300_000))
    data = bundle(appspec)
    monkeypatch.setattr(yamlnode, "_LimitedLoader", never_parsed)  # quick because refused before any parsing
    status, body = await door.call("POST", "/api/v1/revisions", data=data)
    assert (status, body["error"]) == (422, "AppSpecInvalid")
    [problem] = body["problems"]
    assert (
        problem["message"] == f"the AppSpec is {len(appspec):,} bytes, over the limit of 262,144 bytes for one AppSpec"
    )
    assert len(json.dumps(body)) < 2000


# ---------------------------------------------------------------------------------------------------- a full disk

UNSHARE = shutil.which("unshare")
TINY_TMPFS = 'mount -t tmpfs -o size=64k deploybot-full "$0" && exec "$@"'


def _namespaces_work() -> bool:
    """Whether this machine lets an unprivileged user namespace mount a tmpfs (CI containers often do not)."""
    if UNSHARE is None:
        return False
    probe = [UNSHARE, "--user", "--map-root-user", "--mount", "sh", "-c", 'mount -t tmpfs none "$0"', "/tmp"]
    return subprocess.run(probe, capture_output=True, check=False, timeout=10).returncode == 0


def _post(url: str, path: str, data: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(url + path, data=data, method="POST", headers=AUTH)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.skipif(not _namespaces_work(), reason="needs unshare and user namespaces to mount a 64 KiB tmpfs")
@pytest.mark.parametrize("full", ["uploads", "revisions"])
def test_a_full_disk_while_storing_an_upload_is_a_507_naming_the_data_dir(tmp_path: Path, full: str) -> None:
    """A real ``deploybot serve`` whose ``var/<full>`` is a 64 KiB tmpfs (a mount namespace of its own): the upload
    (or the bundle built from it) does not fit, and the answer says so instead of a bare 500."""
    (tmp_path / "deploybot.yml").write_text("server: {data_dir: var}\nhosts:\n  - {name: web-1}\n")
    (tmp_path / "var" / full).mkdir(parents=True, mode=0o700)
    payload = random.Random(17).randbytes(256 * 1024)  # incompressible: the bundle stays as big
    data = bundle(APPSPEC, extra={"blob.bin": payload})
    wrapper = [
        UNSHARE or "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
        TINY_TMPFS,
        str(tmp_path / "var" / full),
    ]
    served = serve(tmp_path, wrapper=wrapper, env={"DEPLOYBOT_TOKEN": TOKEN})
    try:
        assert served.listening.wait(30), "".join(served.lines)
        url = next(line.split()[-1] for line in served.lines if "listening on" in line)
        status, body = _post(url, "/api/v1/revisions", data)
        assert status == 507, body
        data_dir = str(tmp_path / "var")
        assert body == {
            "error": "InsufficientStorage",
            "message": f"disk full on the server (data dir {data_dir}): No space left on device; "
            "free space there, then retry",
            "data_dir": data_dir,
        }
        status, small = _post(url, "/api/v1/revisions", bundle(APPSPEC))
        assert status == 201, small  # what fits is still stored: the server is not stuck
    finally:
        assert stop(served) == 0
