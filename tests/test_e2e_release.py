"""Promotion end to end: a real ``deploybot serve`` with its local agents; staging → production through the JSON
API carries the identical bundle (same sha256, same file on the production host), and a lock stops it first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import DeploybotServer, write_revision

CONFIG = """server: {data_dir: var, revision_roots: [.]}
hosts:
  - {name: stage-1, local: true}
  - {name: prod-1, local: true}
applications:
  app:
    platform: server
    environments: [staging, production]
    deployment_groups:
      staging:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {hosts: [stage-1]}
      production:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {hosts: [prod-1]}
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DeploybotServer]:
    running = DeploybotServer(tmp_path, CONFIG)
    try:
        running.start()
        yield running
    finally:
        running.cleanup()


def test_promote_staging_to_production_through_the_api(server: DeploybotServer, tmp_path: Path) -> None:
    revision = write_revision(tmp_path, "release-7", {"ValidateService": 'test "$DEPLOYMENT_GROUP_NAME" != ""'})
    staged = server.wait_final(server.deploy("app", "staging", revision)["id"])
    assert staged["status"] == "Succeeded", staged

    status, lock = server.api(
        "POST", "/api/v1/locks", {"application": "app", "environment": "production", "reason": "audit"}
    )
    assert status == 201, lock
    status, refused = server.api("POST", "/api/v1/applications/app/promote", {"from": "staging", "to": "production"})
    assert status == 409 and refused["message"] == "app/production is locked by deploybot-admin: audit"
    status, _ = server.api("DELETE", "/api/v1/locks", {"application": "app", "environment": "production"})
    assert status == 200

    status, promoted = server.api("POST", "/api/v1/applications/app/promote", {"from": "staging", "to": "production"})
    assert status == 201, promoted
    done = server.wait_final(promoted["id"])
    assert done["status"] == "Succeeded", done
    assert done["revision"]["sha256"] == staged["revision"]["sha256"]
    assert (done["source"], done["promoted_from"]) == ("promotion", "staging")
    installed = list((server.data_dir / "hosts" / "prod-1").rglob("opt/e2e/VERSION"))
    assert [p.read_text() for p in installed] == ["release-7"]

    status, where = server.api("GET", "/api/v1/applications/app/where")
    assert status == 200
    assert [e["revision"]["sha256"] for e in where["environments"]] == [staged["revision"]["sha256"]] * 2
    assert where["environments"][1]["deployment_id"] == promoted["id"]
