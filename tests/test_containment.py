"""Nothing outside the deployment root: a real agent process, started by the local fleet exactly as ``deploybot serve``
starts one (``--root``, ``--prefix``), against a fake server speaking the agent protocol; and the Install event's
own checks (links, permissions) in temp directories.

Each escape is refused with code 5 naming the path, and a canary file outside keeps its mode bits and content.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from test_agent_client import TOKEN, FakeFleet, command

from bot.localfleet import LocalFleet, RestartPolicy, agent_processes
from engine.agent.installer import InstallError, install
from engine.bundles import build_bundle
from engine.core.appspec import FileMapping, Permission, ServerAppSpec
from engine.core.config.model import Host

FAST = RestartPolicy(initial_delay=0.05, max_delay=0.2, stable_after=30.0, stop_timeout=2.0)
CANARY = "#!/bin/sh\necho canary\n"


@pytest.fixture
async def fleet() -> AsyncIterator[FakeFleet]:
    fake = FakeFleet()
    runner = web.AppRunner(fake.app(), shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


@pytest.fixture
async def agent(fleet: FakeFleet, tmp_path: Path) -> AsyncIterator[Path]:
    """A local agent process for host web-1; yields its root (``<data>/hosts/web-1``, prefix ``.../fs``)."""
    data = tmp_path / "var"
    (process,) = agent_processes(
        [Host("web-1", {}, local=True)], server_url=fleet.url, data_dir=data, token_for=lambda name: TOKEN
    )
    local = LocalFleet([process], FAST)
    await local.start()
    try:
        yield data.absolute() / "hosts" / "web-1"
    finally:
        await local.stop()


def canary(path: Path, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CANARY)
    path.chmod(mode)
    return path


def assert_untouched(path: Path, mode: int = 0o644) -> None:
    assert stat.S_IMODE(path.stat().st_mode) == mode and path.read_text() == CANARY


def revision(tmp_path: Path, appspec: str, files: dict[str, str] | None = None) -> str:
    """A bundle built as the server would, but with no AppSpec check (a hostile or older server): its sha256."""
    root = tmp_path / "revision"
    root.mkdir()
    (root / "appspec.yml").write_text(appspec)
    for name, text in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return str(root)


async def run(fleet: FakeFleet, source: str | Path, tmp_path: Path, *events: str) -> list[dict[str, object]]:
    built = build_bundle(source, tmp_path / "bundles")
    fleet.bundles[built.sha256] = built.path.read_bytes()
    results = []
    for command_id, event in enumerate(events, 1):
        await fleet.enqueue(command(command_id, event, sha=built.sha256))
        results.append(await fleet.result(command_id))
    return results


async def test_a_hook_location_leaving_the_revision_is_code_5_and_the_file_is_neither_changed_nor_run(
    fleet: FakeFleet, agent: Path, tmp_path: Path
) -> None:
    archive = agent / "deployments" / "hello-staging" / "d-1" / "deployment-archive"
    victim = canary(archive / ".." / ".." / "victim")  # what `../../victim` names from the revision
    appspec = "version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n    - location: ../../victim\n"
    downloaded, after_install = await run(
        fleet, revision(tmp_path, appspec), tmp_path, "DownloadBundle", "AfterInstall"
    )
    assert downloaded["status"] == "Succeeded"
    assert after_install["status"] == "Failed" and after_install["error_code"] == 5
    assert "appspec.yml:5:17: hook location '../../victim' has a '..' segment" in str(after_install["message"])
    assert_untouched(victim)  # 0644 kept (the agent would chmod +x a script before running it) ...
    assert "canary" not in str(after_install["log_tail"])  # ... and it never ran


async def test_a_destination_above_the_prefix_is_refused_and_nothing_is_written_outside(
    fleet: FakeFleet, agent: Path, tmp_path: Path
) -> None:
    appspec = "version: 0.0\nos: linux\nfiles:\n  - source: index.html\n    destination: /../..\n"
    landing = agent / "fs" / ".." / ".."  # where `/../..` would land under the prefix: <data>/hosts
    victim = canary(landing / "index.html", 0o600)
    before = sorted(path.name for path in landing.iterdir())
    source = revision(tmp_path, appspec, {"index.html": "<h1>owned</h1>\n"})
    downloaded, installed = await run(fleet, source, tmp_path, "DownloadBundle", "Install")
    assert downloaded["status"] == "Succeeded"
    assert installed["status"] == "Failed" and installed["error_code"] == 5
    message = str(installed["message"])
    assert "the files destination /../.. resolves to" in message and "outside this host's prefix" in message
    assert_untouched(victim, 0o600)
    assert sorted(path.name for path in landing.iterdir()) == before


async def test_a_link_that_escapes_the_prefix_once_installed_is_refused(
    fleet: FakeFleet, agent: Path, tmp_path: Path
) -> None:
    # Legal in the bundle (app/deep/link -> ../../secret is the bundle's own secret), but installed at /www/link
    # it would point two levels above /www: outside the prefix.
    appspec = "version: 0.0\nos: linux\nfiles:\n  - source: app/deep\n    destination: /www\n"
    source = Path(revision(tmp_path, appspec, {"app/deep/page.html": "ok\n", "secret": "bundle's own\n"}))
    (source / "app" / "deep" / "link").symlink_to("../../secret")
    victim = canary(agent / "fs" / ".." / "secret", 0o600)
    downloaded, installed = await run(fleet, source, tmp_path, "DownloadBundle", "Install")
    assert downloaded["status"] == "Succeeded"
    assert installed["status"] == "Failed" and installed["error_code"] == 5
    link = agent / "fs" / "www" / "link"
    assert f"the link {link} -> ../../secret would point to {agent / 'secret'}" in str(installed["message"])
    assert not os.path.lexists(link) and not (agent / "fs" / "www" / "page.html").exists()  # nothing copied
    assert_untouched(victim, 0o600)


# --- the Install event's own checks (no server) -------------------------------------------------------------------


def install_into(archive: Path, host: Path, files: list[tuple[str, str]], *perms: Permission) -> object:
    spec = ServerAppSpec("linux", tuple(FileMapping(s, d) for s, d in files), tuple(perms))
    return install(spec, archive_dir=archive, cleanup_file=host.parent / "cleanup", prefix=host)


def test_a_link_pointing_inside_its_destination_is_copied_as_a_link(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    (archive / "app" / "releases" / "v1").mkdir(parents=True)
    (archive / "app" / "current").symlink_to("releases/v1")
    install_into(archive, tmp_path / "host", [("app", "/srv/app")])
    assert os.readlink(tmp_path / "host" / "srv" / "app" / "current") == "releases/v1"


def test_a_link_pointing_out_of_its_destination_is_refused_even_without_leaving_the_prefix(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    (archive / "app").mkdir(parents=True)
    (archive / "shared").mkdir()
    (archive / "app" / "shared").symlink_to("../shared")  # inside the revision, but /srv/shared once installed
    with pytest.raises(InstallError, match=r"outside its destination \(.*/host/srv/app\)"):
        install_into(archive, tmp_path / "host", [("app", "/srv/app"), ("shared", "/srv/shared")])
    assert not (tmp_path / "host").exists()  # refused while planning: nothing made


def test_a_destination_through_a_link_out_of_the_prefix_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "index.html").write_text("<h1>owned</h1>\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "host" / "srv").mkdir(parents=True)
    (tmp_path / "host" / "srv" / "www").symlink_to(outside)  # left by an earlier hook script, say
    with pytest.raises(InstallError, match=r"the files destination /srv/www resolves to .*/outside, outside"):
        install_into(archive, tmp_path / "host", [("index.html", "/srv/www")])
    assert list(outside.iterdir()) == []


def test_an_empty_directory_beneath_a_link_out_of_the_prefix_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    (archive / "app" / "cache" / "empty").mkdir(parents=True)  # no file under it: only a directory is made there
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "host" / "srv" / "app").mkdir(parents=True)
    (tmp_path / "host" / "srv" / "app" / "cache").symlink_to(outside)  # left by an earlier hook script, say
    with pytest.raises(InstallError, match=r"the directory .*/host/srv/app/cache/empty resolves to .*/outside/empty"):
        install_into(archive, tmp_path / "host", [("app", "/srv/app")])
    assert list(outside.iterdir()) == []


def test_the_first_install_makes_the_prefix_and_its_missing_parents(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "index.html").write_text("<h1>hi</h1>\n")
    host = tmp_path / "var" / "hosts" / "web-1" / "fs"  # none of it there yet: a new local host
    install(
        ServerAppSpec("linux", (FileMapping("index.html", "/srv/www"),), ()),
        archive_dir=archive,
        cleanup_file=tmp_path / "cleanup",
        prefix=host,
    )
    assert (host / "srv" / "www" / "index.html").read_text() == "<h1>hi</h1>\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_permissions_change_neither_a_link_nor_what_it_points_to(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    (archive / "app").mkdir(parents=True)
    (archive / "app" / "index.html").write_text("hi\n")
    (archive / "app" / "current").symlink_to("existing.conf")
    host = tmp_path / "host"
    target = canary(host / "srv" / "app" / "existing.conf", 0o644)  # on the host before, not this install's
    nobody = pwd.getpwnam("nobody").pw_uid
    everything = Permission(object="/srv/app", mode="600", owner="nobody", types=frozenset({"file"}))
    report = install_into(archive, host, [("app", "/srv/app")], everything)
    link = host / "srv" / "app" / "current"
    assert os.lstat(link).st_uid == os.geteuid()  # the link itself keeps its owner
    assert_untouched(target)
    assert target.stat().st_uid == os.geteuid()
    assert stat.S_IMODE((host / "srv" / "app" / "index.html").stat().st_mode) == 0o600
    assert (host / "srv" / "app" / "index.html").stat().st_uid == nobody
    assert report.permissions_set == 1  # type: ignore[attr-defined]

    the_link = Permission(object="/srv/app/current", mode="600", owner="nobody", types=frozenset({"file"}))
    install_into(archive, host, [("app", "/srv/app")], the_link)  # the next install: the object is the link
    assert os.lstat(link).st_uid == os.geteuid()
    assert_untouched(target)
