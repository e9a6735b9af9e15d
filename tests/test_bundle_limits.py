"""Bounded work from small input: member count, unpacked size, path length and depth are checked from the headers
before anything is extracted (the agent, and the server unpacking an upload) or packed (the server, from a
directory); the AppSpec is checked before the bundle is packed."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from test_agent_client import FakeFleet, command, options, running_agent

from engine.bundles import BUNDLE_LIMITS, AppSpecFile, BundleLimits, build_bundle, safe_extract
from engine.core.errors import BundleError

MEMBERS_LIMIT = "bundle has more than 20000 members (limit bundle.max_members)"


@pytest.fixture
async def fleet() -> AsyncIterator[FakeFleet]:
    fake = FakeFleet()
    runner = web.AppRunner(fake.app(), shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield fake
    await runner.cleanup()


@pytest.fixture(scope="module")
def many_members(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The issue's tarball: 100,000 empty members, 605 KiB gzipped (headers patched from one template: fast)."""
    template = bytearray(tarfile.TarInfo("f000000").tobuf(format=tarfile.USTAR_FORMAT))
    template[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    base = sum(template) - sum(b"f000000")
    blocks = []
    for index in range(100_000):
        name = b"f%06d" % index
        header = bytearray(template)
        header[0:7] = name
        header[148:156] = b"%06o\0 " % (base + sum(name))
        blocks.append(bytes(header))
    path = tmp_path_factory.mktemp("bomb") / "many.tar.gz"
    path.write_bytes(gzip.compress(b"".join(blocks) + b"\0" * 1024, compresslevel=9, mtime=0))
    assert 600 * 1024 < path.stat().st_size < 610 * 1024
    return path


def test_the_defaults() -> None:
    expected = BundleLimits(max_members=20_000, max_unpacked_bytes=2 * 1024**3, max_path_length=1024, max_path_depth=64)
    assert expected == BUNDLE_LIMITS


def test_100000_empty_members_are_refused_before_extracting_any(many_members: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(BundleError) as caught:
        safe_extract(many_members, tmp_path / "dest")
    print(f"refused 100,000 members in {time.perf_counter() - started:.3f} s")  # reported, not asserted
    assert caught.value.reason == MEMBERS_LIMIT and caught.value.member == "f020000"
    assert not (tmp_path / "dest").exists()


def test_100000_empty_members_are_refused_when_the_server_builds_the_bundle(many_members: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(BundleError, match=r"more than 20000 members \(limit bundle\.max_members\)"):
        build_bundle(many_members, tmp_path / "bundles")
    print(f"refused 100,000 members in {time.perf_counter() - started:.3f} s")
    assert list((tmp_path / "bundles").iterdir()) == []  # its scratch directory is gone too


async def test_an_agent_refuses_the_100000_members_with_code_5(
    many_members: Path, fleet: FakeFleet, tmp_path: Path
) -> None:
    data = many_members.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    fleet.bundles[sha] = data
    async with running_agent(options(fleet, tmp_path / "agent")):
        await fleet.enqueue(command(1, "DownloadBundle", sha=sha))
        result = await fleet.result(1)
    assert result["status"] == "Failed" and result["error_code"] == 5
    assert MEMBERS_LIMIT in result["message"]
    assert not list((tmp_path / "agent").rglob("deployment-archive/*"))


def test_a_bundle_over_the_unpacked_size_is_refused_before_writing_it_out(tmp_path: Path) -> None:
    # One header saying 3 GiB (a gzip bomb's promise): refused on reading it, before a byte is written.
    bomb = tarfile.TarInfo("big.bin")
    bomb.size = 3 * 1024**3
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(gzip.compress(bomb.tobuf(format=tarfile.PAX_FORMAT), mtime=0))
    with pytest.raises(BundleError) as caught:
        safe_extract(path, tmp_path / "dest")
    assert caught.value.reason == (
        "bundle content exceeds the limit of 2147483648 bytes unpacked (limit bundle.max_unpacked_bytes)"
    )
    assert not (tmp_path / "dest").exists()


def test_the_unpacked_size_counts_every_member_before_the_first_is_written(tmp_path: Path) -> None:
    path = tmp_path / "parts.tar"
    with tarfile.open(path, "w") as archive:
        for index in range(3):
            info = tarfile.TarInfo(f"part{index}")
            info.size = 400
            archive.addfile(info, io.BytesIO(b"x" * 400))
    with pytest.raises(BundleError, match=r"limit of 1000 bytes unpacked \(limit bundle\.max_unpacked_bytes\)"):
        safe_extract(path, tmp_path / "dest", limits=BundleLimits(max_unpacked_bytes=1000))
    assert not (tmp_path / "dest").exists()  # part0 and part1 fit, but nothing was written


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a" * 1025, "bundle has a path longer than 1024 bytes (limit bundle.max_path_length)"),
        ("d/" * 64 + "f", "bundle has a path deeper than 64 levels (limit bundle.max_path_depth)"),
    ],
)
def test_a_path_too_long_or_too_deep_is_refused(tmp_path: Path, name: str, reason: str) -> None:
    path = tmp_path / "odd.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(tarfile.TarInfo("ok"))
        archive.addfile(tarfile.TarInfo(name))
    with pytest.raises(BundleError) as caught:
        safe_extract(path, tmp_path / "dest")
    assert caught.value.reason == reason
    assert not (tmp_path / "dest").exists()


def test_a_zip_over_the_member_count_is_refused_from_its_central_directory(tmp_path: Path) -> None:
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(6):
            archive.writestr(f"f{index}", b"")
    with pytest.raises(BundleError, match=r"more than 5 members \(limit bundle\.max_members\)"):
        build_bundle(path, tmp_path / "bundles", limits=BundleLimits(max_members=5))
    assert list((tmp_path / "bundles").iterdir()) == []


def test_a_directory_over_the_member_count_is_refused_before_packing(tmp_path: Path) -> None:
    revision = tmp_path / "revision"
    revision.mkdir()
    (revision / "appspec.yml").write_text("version: 0.0\nos: linux\n")
    for index in range(5):
        (revision / f"f{index}").write_text("x")
    with pytest.raises(BundleError, match=r"more than 5 members \(limit bundle\.max_members\)"):
        build_bundle(revision, tmp_path / "bundles", limits=BundleLimits(max_members=5))
    assert list((tmp_path / "bundles").iterdir()) == []


def test_the_appspec_is_checked_before_the_bundle_is_packed(tmp_path: Path) -> None:
    seen: list[AppSpecFile | None] = []

    def check(found: AppSpecFile | None) -> str:
        seen.append(found)
        if found is None:
            raise ValueError("no appspec")
        return f"checked {found.name}"

    revision = tmp_path / "revision"
    revision.mkdir()
    for index in range(10):
        (revision / f"f{index}").write_text("x")
    # Over the member limit as well: the AppSpec's refusal comes first, so nothing was walked or packed.
    with pytest.raises(ValueError, match="no appspec"):
        build_bundle(revision, tmp_path / "bundles", check=check, limits=BundleLimits(max_members=5))
    assert seen == [None] and list((tmp_path / "bundles").iterdir()) == []

    (revision / "appspec.yaml").write_text("version: 0.0\nos: linux\n")
    built = build_bundle(revision, tmp_path / "bundles", check=check)
    assert seen[1] == AppSpecFile("appspec.yaml", b"version: 0.0\nos: linux\n")
    assert built.checked == "checked appspec.yaml"
