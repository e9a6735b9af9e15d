"""Server paths as revisions, over real HTTP with the real Deployer: only under the application's own ``revision`` or
``server.revision_roots``, links followed, and a refusal says nothing about the file it refused."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from test_service import make_revision

from bot.app import create_app
from bot.assembly import assemble_deployer
from bot.settings import Settings
from engine import names_server_path, parse_config, path_within

CONFIG = """
server: {data_dir: var, admins: [root]%(roots)s}
hosts:
  - {name: s1}
applications:
  app:
    revision: revisions/app
    environments: [staging]
    deployment_groups:
      staging: {deployment_config: CodeDeployDefault.AllAtOnce, targets: {hosts: [s1]}}
"""

Call = Callable[..., Any]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "revisions").mkdir()
    make_revision(tmp_path / "revisions", "app", "1")
    make_revision(tmp_path, "elsewhere", "2")
    make_revision(tmp_path / "revisions", "app-2", "3")
    return tmp_path


async def serve(workdir: Path, roots: str = "") -> AsyncIterator[Call]:
    config = parse_config(CONFIG % {"roots": roots}, filename="paths.yml", base_dir=str(workdir))
    deployer = await assemble_deployer(config, data_dir=workdir / "var")
    token = (await deployer.tokens.create("root", name="test"))[1]
    settings = Settings.from_env({}, data_dir=workdir / "var")
    try:
        async with TestClient(TestServer(create_app(settings, deployer=deployer), host="127.0.0.1", port=0)) as client:

            async def plan(revision: str) -> tuple[int, dict[str, Any]]:
                body = {"application": "app", "environment": "staging", "revision": revision}
                headers = {"Authorization": f"Bearer {token}"}
                async with client.post("/api/v1/plan", json=body, headers=headers) as response:
                    return response.status, await response.json()

            yield plan
    finally:
        await deployer.close()


@pytest.fixture
async def plan(workdir: Path) -> AsyncIterator[Call]:
    async for call in serve(workdir):
        yield call


async def test_a_file_of_the_servers_own_state_is_refused_without_a_word_about_it(plan: Call, workdir: Path) -> None:
    secret = workdir / "var" / "agent-tokens.json"
    secret.write_text(json.dumps({"host-with-a-secret-name": "t0ken"}))
    status, body = await plan(str(secret))
    assert (status, body["error"], body["rule"]) == (403, "RevisionPathRefused", "server.revision_roots")
    assert "host-with-a-secret-name" not in json.dumps(body) and "t0ken" not in json.dumps(body)
    missing_status, missing = await plan(str(workdir / "var" / "no-such-file.json"))  # existence is not told either
    assert (missing_status, missing["message"].replace("no-such-file", "agent-tokens")) == (403, body["message"])


@pytest.mark.parametrize("revision", ["elsewhere", "revisions/app/../../elsewhere", "/etc", "revisions"])
async def test_paths_outside_the_applications_revision_are_refused(plan: Call, revision: str) -> None:
    status, body = await plan(revision)
    assert (status, body["error"]) == (403, "RevisionPathRefused")
    assert "upload the bundle instead" in body["message"]


async def test_a_link_inside_the_revision_that_leads_out_is_refused(plan: Call, workdir: Path) -> None:
    (workdir / "revisions" / "app" / "out").symlink_to(workdir / "elsewhere")
    status, body = await plan("revisions/app/out")
    assert (status, body["error"]) == (403, "RevisionPathRefused")


async def test_the_applications_own_revision_and_what_is_under_it_are_taken(plan: Call, workdir: Path) -> None:
    status, body = await plan("revisions/app")
    assert status == 200, body
    assert body["revision"]["source"] == "revisions/app" and len(body["revision"]["sha256"]) == 64


async def test_revision_roots_open_more_places(workdir: Path) -> None:
    async for plan in serve(workdir, roots=", revision_roots: [revisions]"):
        assert (await plan("revisions/app-2"))[0] == 200
        assert (await plan("elsewhere"))[0] == 403


@pytest.mark.parametrize("revision", ["sha256:" + "0" * 64, "s3://bucket/key.zip", "github:o/r@abcdef1"])
async def test_fetched_and_stored_revisions_are_not_paths(plan: Call, revision: str) -> None:
    assert not names_server_path(revision)
    status, body = await plan(revision)
    assert body.get("error") != "RevisionPathRefused"
    assert status in (200, 404)  # an unknown sha256 is a 404; s3:// and github: are fetched only when deployed


def test_the_rule_is_a_prefix_of_whole_path_segments() -> None:
    assert path_within("/srv/rev/app", ["/srv/rev"]) and path_within("/srv/rev", ["/srv/rev/"])
    assert not path_within("/srv/revisions", ["/srv/rev"]) and not path_within("/srv", ["/srv/rev"])
    assert not path_within("/anything", [])


def test_revision_roots_are_resolved_against_the_config_file(tmp_path: Path) -> None:
    config = parse_config(CONFIG % {"roots": ", revision_roots: [revisions, /abs]"}, base_dir=str(tmp_path))
    assert config.server.revision_roots == (str(tmp_path / "revisions"), "/abs")
