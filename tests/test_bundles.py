"""Revision bundles: canonical, deterministic builds from every source kind, and extraction that never escapes."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.bundles import build_bundle, read_member, safe_extract
from engine.core.errors import BundleError


def make_revision(root: Path) -> Path:
    (root / "scripts").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "appspec.yml").write_text("version: 0.0\nos: linux\n")
    (root / "scripts" / "start.sh").write_text("#!/bin/sh\necho started\n")
    os.chmod(root / "scripts" / "start.sh", 0o755)
    (root / "index.html").write_text("<h1>hello</h1>\n")
    os.symlink("scripts/start.sh", root / "start-link")
    for path in [*root.rglob("*"), root]:
        os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
    return root


def members(bundle: Path) -> list[tuple[str, str, int]]:
    with tarfile.open(bundle) as archive:
        kinds = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "link", tarfile.REGTYPE: "file"}
        return [(m.name, kinds[m.type], stat.S_IMODE(m.mode)) for m in archive.getmembers()]


def test_same_directory_gives_the_same_canonical_bundle(tmp_path: Path) -> None:
    source = make_revision(tmp_path / "rev")
    first = build_bundle(source, tmp_path / "out1")
    second = build_bundle(source, tmp_path / "out2")
    copy = tmp_path / "copy"
    shutil.copytree(source, copy, symlinks=True)
    for path in [*copy.rglob("*"), copy]:
        os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
    third = build_bundle(copy, tmp_path / "out3")

    assert first.sha256 == second.sha256 == third.sha256
    assert first.path.name == f"{first.sha256}.tar.gz"
    assert first.size == first.path.stat().st_size
    assert first.commit is None and first.source == str(source)
    raw = first.path.read_bytes()
    assert raw[4:8] == b"\0\0\0\0"  # gzip header mtime
    with tarfile.open(first.path) as archive:
        infos = archive.getmembers()
        assert {(m.uid, m.gid, m.uname, m.gname) for m in infos} == {(0, 0, "", "")}
        assert {m.mtime for m in infos} == {1_700_000_000}
    assert members(first.path) == [
        ("appspec.yml", "file", 0o644),
        ("empty", "dir", 0o755),
        ("index.html", "file", 0o644),
        ("scripts", "dir", 0o755),
        ("scripts/start.sh", "file", 0o755),
        ("start-link", "link", 0o777),
    ]


def test_changed_content_changes_the_sha(tmp_path: Path) -> None:
    source = make_revision(tmp_path / "rev")
    before = build_bundle(source, tmp_path / "out")
    (source / "index.html").write_text("<h1>changed</h1>\n")
    after = build_bundle(source, tmp_path / "out")
    assert before.sha256 != after.sha256
    assert read_member(after.path, "index.html") == b"<h1>changed</h1>\n"


def test_tarball_source_repacks_to_the_directory_bundle(tmp_path: Path) -> None:
    source = make_revision(tmp_path / "rev")
    expected = build_bundle(source, tmp_path / "out")
    for suffix, mode in ((".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar", "w")):
        tarball = tmp_path / f"rev{suffix}"
        with tarfile.open(tarball, mode) as archive:
            archive.add(source, arcname=".")  # "./" prefixes and real owners: both normalized away
        built = build_bundle(tarball, tmp_path / "out")
        assert built.sha256 == expected.sha256, suffix


def test_zip_source_keeps_unix_modes_and_links(tmp_path: Path) -> None:
    archive_path = tmp_path / "rev.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        for name, mode, data in (
            ("appspec.yml", 0o100644, b"version: 0.0\n"),
            ("scripts/run.sh", 0o100755, b"#!/bin/sh\n"),
            ("run-link", 0o120777, b"scripts/run.sh"),
        ):
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 2, 3, 4, 6))
            info.create_system = 3
            info.external_attr = mode << 16
            archive.writestr(info, data)
        windows = zipfile.ZipInfo("windows.txt", date_time=(2024, 1, 2, 3, 4, 6))
        windows.create_system = 0  # made on Windows: no unix mode, so the default applies
        archive.writestr(windows, b"no unix mode")
    built = build_bundle(archive_path, tmp_path / "out")
    assert ("scripts/run.sh", "file", 0o755) in members(built.path)
    assert ("windows.txt", "file", 0o644) in members(built.path)
    assert ("run-link", "link", 0o777) in members(built.path)
    dest = tmp_path / "dest"
    safe_extract(built.path, dest)
    assert os.readlink(dest / "run-link") == "scripts/run.sh"
    assert os.access(dest / "scripts" / "run.sh", os.X_OK)
    assert build_bundle(archive_path, tmp_path / "again").sha256 == built.sha256


def test_a_directory_an_archive_only_implies_takes_its_members_time_not_the_build_s(tmp_path: Path) -> None:
    """A zip or tar may list files alone ("scripts/run.sh", no "scripts/"): the directory made for them used to keep
    the time it was made, which the canonical bundle stored, so the same archive gave another sha256 each second
    (test_zip_source_keeps_unix_modes_and_links failed so once in a fresh clone)."""
    at = (2024, 1, 2, 3, 4, 6)
    zipped = tmp_path / "rev.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for name in ("appspec.yml", "scripts/deep/run.sh"):
            archive.writestr(zipfile.ZipInfo(name, date_time=at), b"version: 0.0\n")
    tarred = tmp_path / "rev.tar.gz"
    with tarfile.open(tarred, "w:gz") as archive:
        for name in ("appspec.yml", "scripts/deep/run.sh"):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = 13, 1_704_164_646
            archive.addfile(info, io.BytesIO(b"version: 0.0\n"))
    for source in (zipped, tarred):
        with tarfile.open(build_bundle(source, tmp_path / "out" / source.name).path) as bundle:
            made = {m.name: (m.mtime, stat.S_IMODE(m.mode)) for m in bundle.getmembers() if m.isdir()}
        assert made == {"scripts": (1_704_164_646, 0o755), "scripts/deep": (1_704_164_646, 0o755)}, source.name


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["app/appspec.yml", "app/index.html"], ["appspec.yml", "index.html"]),
        (["app/index.html"], ["app", "app/index.html"]),  # no appspec inside: no re-rooting
        (["app/appspec.yml", "README"], ["README", "app", "app/appspec.yml"]),  # not alone at the root
    ],
)
def test_a_lone_directory_holding_the_appspec_becomes_the_root(
    tmp_path: Path, names: list[str], expected: list[str]
) -> None:
    tarball = tmp_path / "rev.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 2
            archive.addfile(info, io.BytesIO(b"x\n"))
    built = build_bundle(tarball, tmp_path / "out")
    assert [name for name, _, _ in members(built.path)] == expected


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z"}
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, env=env)
    return done.stdout.strip()


def test_git_ref_source_archives_the_commit(tmp_path: Path) -> None:
    repo = make_revision(tmp_path / "repo")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "first")
    head = git(repo, "rev-parse", "HEAD")
    (repo / "untracked.txt").write_text("not committed\n")

    built = build_bundle("git:HEAD", tmp_path / "out", git_repo=repo)
    again = build_bundle(f"git:{head[:10]}", tmp_path / "out2", git_repo=repo)

    assert built.commit == head and again.commit == head
    assert built.sha256 == again.sha256
    assert built.source == "git:HEAD"
    names = [name for name, _, _ in members(built.path)]
    assert "scripts/start.sh" in names and "untracked.txt" not in names
    assert ("scripts/start.sh", "file", 0o755) in members(built.path)
    with pytest.raises(BundleError, match="git rev-parse failed"):
        build_bundle("git:no-such-branch", tmp_path / "out3", git_repo=repo)


def test_missing_or_unknown_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        build_bundle(tmp_path / "nope", tmp_path / "out")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(BundleError, match="neither a tar nor a zip"):
        build_bundle(junk, tmp_path / "out")


def test_directory_with_an_escaping_symlink_is_refused(tmp_path: Path) -> None:
    source = make_revision(tmp_path / "rev")
    os.symlink("../../etc/passwd", source / "scripts" / "passwd")
    with pytest.raises(BundleError, match="outside the revision"):
        build_bundle(source, tmp_path / "out")


def test_directory_with_a_fifo_is_refused(tmp_path: Path) -> None:
    source = make_revision(tmp_path / "rev")
    os.mkfifo(source / "pipe")
    with pytest.raises(BundleError, match="unsupported file type"):
        build_bundle(source, tmp_path / "out")


# --- unsafe archives --------------------------------------------------------------------------------------------


def _file(name: str, data: bytes = b"evil\n") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


def _special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, b""


UNSAFE: dict[str, Callable[[Path], list[tuple[tarfile.TarInfo, bytes]]]] = {
    "zip-slip": lambda outside: [_file("ok.txt"), _file("../outside/evil")],
    "nested dot-dot": lambda outside: [_file("a/b/../../../outside/evil")],
    "absolute name": lambda outside: [_file(str(outside / "evil"))],
    "symlink to parent then write": lambda outside: [_link("up", "../outside"), _file("up/evil")],
    "absolute symlink": lambda outside: [_link("abs", str(outside)), _file("abs/evil")],
    "symlink chain": lambda outside: [_link("here", "."), _link("esc", "here/../outside"), _file("esc/evil")],
    "symlink chain without write": lambda outside: [_link("l1", "l2/.."), _link("l2", ".")],
    "symlink inside then write through it": lambda outside: [_link("d", "sub"), _file("d/evil")],
    "hardlink outside": lambda outside: [_link("h", "../outside/evil", tarfile.LNKTYPE)],
    "fifo": lambda outside: [_special("pipe", tarfile.FIFOTYPE)],
    "char device": lambda outside: [_special("null", tarfile.CHRTYPE)],
    "block device": lambda outside: [_special("disk", tarfile.BLKTYPE)],
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archives_are_refused_and_write_nothing_outside(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    tarball = tmp_path / "evil.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        for info, data in UNSAFE[case](outside):
            archive.addfile(info, io.BytesIO(data) if data else None)

    with pytest.raises(BundleError):
        safe_extract(tarball, dest)

    assert list(outside.iterdir()) == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dest", "evil.tar.gz", "outside"]
    for path in dest.rglob("*"):
        assert not path.is_symlink() or os.path.realpath(path).startswith(str(dest.resolve()))


def test_zip_slip_zip_is_refused_when_building(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    archive_path = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.writestr("appspec.yml", b"version: 0.0\n")
        archive.writestr("../outside/evil", b"evil\n")
    with pytest.raises(BundleError, match=r"'\.\.'"):
        build_bundle(archive_path, tmp_path / "out")
    assert list(outside.iterdir()) == []


def test_content_over_the_limit_is_refused(tmp_path: Path) -> None:
    tarball = tmp_path / "big.tar"
    with tarfile.open(tarball, "w") as archive:
        for index in range(3):
            info, data = _file(f"part{index}", b"x" * 400)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(BundleError, match="exceeds the limit of 1000 bytes"):
        safe_extract(tarball, tmp_path / "dest", max_bytes=1000)
    safe_extract(tarball, tmp_path / "ok", max_bytes=1200)
    assert (tmp_path / "ok" / "part2").read_bytes() == b"x" * 400


def test_safe_links_and_hardlinks_extract(tmp_path: Path) -> None:
    tarball = tmp_path / "ok.tar"
    with tarfile.open(tarball, "w") as archive:
        for info, data in (
            _file("sub/real.txt", b"real\n"),
            _link("sub/alias", "real.txt"),
            _link("top-alias", "sub/real.txt"),
            _link("copy.txt", "sub/real.txt", tarfile.LNKTYPE),
        ):
            archive.addfile(info, io.BytesIO(data) if data else None)
    dest = tmp_path / "dest"
    safe_extract(tarball, dest)
    assert (dest / "top-alias").read_text() == "real\n"
    assert (dest / "sub" / "alias").read_text() == "real\n"
    assert (dest / "copy.txt").read_text() == "real\n" and not (dest / "copy.txt").is_symlink()


def test_setuid_bits_are_dropped(tmp_path: Path) -> None:
    tarball = tmp_path / "suid.tar"
    with tarfile.open(tarball, "w") as archive:
        info, data = _file("tool", b"#!/bin/sh\n")
        info.mode = 0o4755
        archive.addfile(info, io.BytesIO(data))
    safe_extract(tarball, tmp_path / "dest")
    assert stat.S_IMODE((tmp_path / "dest" / "tool").stat().st_mode) == 0o755


def test_read_member_reads_one_file(tmp_path: Path) -> None:
    built = build_bundle(make_revision(tmp_path / "rev"), tmp_path / "out")
    assert read_member(built.path, "appspec.yml") == b"version: 0.0\nos: linux\n"
    assert read_member(built.path, "./scripts/start.sh") == b"#!/bin/sh\necho started\n"
    assert read_member(built.path, "missing.yml") is None
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(BundleError, match="unreadable"):
        read_member(broken, "appspec.yml")
