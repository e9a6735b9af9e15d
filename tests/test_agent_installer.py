"""The Install event in temp directories: copies, file_exists_behavior, cleanup of the last install, permissions."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.agent.cleanup import replay_cleanup
from engine.agent.installer import InstallError, install, map_destination
from engine.agent.layout import AgentLayout
from engine.core.appspec import FileMapping, Permission, SELinuxContext, ServerAppSpec


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    (root / "app" / "static" / "css").mkdir(parents=True)
    (root / "app" / "emptydir").mkdir()
    (root / "app" / "index.html").write_text("<h1>v1</h1>\n")
    (root / "app" / "run.sh").write_text("#!/bin/sh\n")
    (root / "app" / "static" / "site.css").write_text("body {}\n")
    (root / "app" / "static" / "css" / "deep.css").write_text("p {}\n")
    (root / "config").mkdir()
    (root / "config" / "app.conf").write_text("port=1\n")
    os.chmod(root / "config" / "app.conf", 0o640)
    os.utime(root / "config" / "app.conf", (1_600_000_000, 1_600_000_000))
    os.symlink("index.html", root / "app" / "home.html")
    (root / "extra").mkdir()
    (root / "extra" / "static").write_text("a file named like a directory of app/\n")
    (root / "appspec.yml").write_text("version: 0.0\n")
    return root


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return tmp_path / "host"


def run(archive: Path, host: Path, files: list[tuple[str, str]], **kwargs: object) -> object:
    spec = ServerAppSpec(
        os="linux",
        files=tuple(FileMapping(source, destination) for source, destination in files),
        permissions=tuple(kwargs.pop("permissions", ())),  # type: ignore[arg-type]
        file_exists_behavior=kwargs.pop("appspec_behavior", None),  # type: ignore[arg-type]
    )
    cleanup = kwargs.pop("cleanup", host.parent / "instructions" / "group-1-cleanup")
    return install(spec, archive_dir=archive, cleanup_file=cleanup, prefix=host, **kwargs)  # type: ignore[arg-type]


def tree(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) + ("/" if path.is_dir() else "") for path in root.rglob("*"))


def test_directory_source_copies_its_contents_not_itself(archive: Path, host: Path) -> None:
    report = run(archive, host, [("app", "/srv/www")])
    www = host / "srv" / "www"
    assert tree(www) == [
        "emptydir/",
        "home.html",
        "index.html",
        "run.sh",
        "static/",
        "static/css/",
        "static/css/deep.css",
        "static/site.css",
    ]
    assert os.readlink(www / "home.html") == "index.html"  # links are recreated as links
    assert report.copied and all(path.is_relative_to(www) for path in report.copied)  # type: ignore[attr-defined]
    assert host / "srv" in report.created_dirs  # type: ignore[attr-defined]


def test_file_source_lands_in_destination_as_a_directory(archive: Path, host: Path) -> None:
    run(archive, host, [("config/app.conf", "/etc/app.conf")])
    landed = host / "etc" / "app.conf" / "app.conf"
    assert landed.read_text() == "port=1\n"
    assert stat.S_IMODE(landed.stat().st_mode) == 0o640  # mode and times are kept
    assert landed.stat().st_mtime == 1_600_000_000


def test_root_source_copies_the_whole_bundle(archive: Path, host: Path) -> None:
    run(archive, host, [("/", "/opt/app")])
    assert (host / "opt" / "app" / "appspec.yml").is_file()
    assert (host / "opt" / "app" / "config" / "app.conf").is_file()


def test_prefix_maps_only_absolute_paths(tmp_path: Path) -> None:
    assert map_destination("/var/www", tmp_path) == tmp_path / "var" / "www"
    assert map_destination("/var/www", None) == Path("/var/www")
    assert map_destination("relative/dir", tmp_path) == Path.cwd() / "relative" / "dir"


def test_disallow_refuses_an_existing_file_before_copying_anything(archive: Path, host: Path) -> None:
    existing = host / "srv" / "www" / "run.sh"
    existing.parent.mkdir(parents=True)
    existing.write_text("mine\n")
    with pytest.raises(InstallError) as error:
        run(archive, host, [("app", "/srv/www")], file_exists_behavior="DISALLOW")
    assert (
        error.value.reason
        == f"The deployment failed because a specified file already exists at this location: {existing}"
    )
    assert tree(host / "srv" / "www") == ["run.sh"]
    assert existing.read_text() == "mine\n"


def test_overwrite_replaces_and_records_the_file(archive: Path, host: Path) -> None:
    existing = host / "srv" / "www" / "index.html"
    existing.parent.mkdir(parents=True)
    existing.write_text("old\n")
    cleanup = host.parent / "cleanup"
    run(archive, host, [("app", "/srv/www")], file_exists_behavior="OVERWRITE", cleanup=cleanup)
    assert existing.read_text() == "<h1>v1</h1>\n"
    assert str(existing) in [json.loads(line) for line in cleanup.read_text().splitlines()]


def test_retain_keeps_the_file_and_does_not_record_it(archive: Path, host: Path) -> None:
    existing = host / "srv" / "www" / "index.html"
    existing.parent.mkdir(parents=True)
    existing.write_text("old\n")
    cleanup = host.parent / "cleanup"
    report = run(archive, host, [("app", "/srv/www")], file_exists_behavior="RETAIN", cleanup=cleanup)
    assert existing.read_text() == "old\n"
    assert report.retained == (existing,)  # type: ignore[attr-defined]
    assert str(existing) not in [json.loads(line) for line in cleanup.read_text().splitlines()]
    assert (host / "srv" / "www" / "run.sh").is_file()


def test_appspec_behavior_wins_over_the_deployment(archive: Path, host: Path) -> None:
    existing = host / "srv" / "www" / "index.html"
    existing.parent.mkdir(parents=True)
    existing.write_text("old\n")
    run(archive, host, [("app", "/srv/www")], file_exists_behavior="DISALLOW", appspec_behavior="OVERWRITE")
    assert existing.read_text() == "<h1>v1</h1>\n"
    with pytest.raises(InstallError, match="invalid option was specified for fileExistsBehavior: SOMETIMES"):
        run(archive, host, [("app", "/srv/www")], file_exists_behavior="SOMETIMES")


def test_next_install_of_the_group_removes_the_previous_one(archive: Path, host: Path, tmp_path: Path) -> None:
    cleanup = tmp_path / "group-1-cleanup"
    run(archive, host, [("app", "/srv/www"), ("config/app.conf", "/etc/app")], cleanup=cleanup)
    foreign = host / "srv" / "www" / "static" / "uploaded.png"  # written by someone else: never removed
    foreign.write_text("png")

    shutil.rmtree(archive / "app" / "static")
    (archive / "app" / "index.html").write_text("<h1>v2</h1>\n")
    report = run(archive, host, [("app", "/srv/www")], cleanup=cleanup, file_exists_behavior="DISALLOW")

    www = host / "srv" / "www"
    assert (www / "index.html").read_text() == "<h1>v2</h1>\n"  # no DISALLOW error: it was ours
    assert not (host / "etc").exists()  # the whole previous tree is gone, empty dirs included
    assert tree(www / "static") == ["uploaded.png"]  # kept, with the directory that holds it
    assert report.cleaned_up > 0  # type: ignore[attr-defined]

    other_group = tmp_path / "group-2-cleanup"
    with pytest.raises(InstallError, match="already exists"):
        run(archive, host, [("app", "/srv/www")], cleanup=other_group)


@contextlib.contextmanager
def _opened(paths: list[Path]) -> Iterator[list[tuple[int, Path]]]:
    """Each directory held open: what it is afterwards tells whether it was kept (the same, still linked) or
    removed (no links left), whatever inode number a new one gets."""
    fds = [(os.open(path, os.O_RDONLY | os.O_DIRECTORY), path) for path in paths]
    try:
        yield fds
    finally:
        for fd, _ in fds:
            os.close(fd)


def _fresh_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o777 & ~umask


def test_a_directory_made_again_is_kept_when_it_is_as_mkdir_would_make_it(
    archive: Path, host: Path, tmp_path: Path
) -> None:
    """Removing the previous install's directories and making them again leaves the host as it was; kept, they cost
    no removal and no creation. The new record still names them, so the install after removes them as before."""
    cleanup = tmp_path / "group-1-cleanup"
    run(archive, host, [("app", "/srv/www"), ("config/app.conf", "/etc/app")], cleanup=cleanup)
    www = host / "srv" / "www"
    dirs = [host / "srv", www, www / "static", www / "static" / "css", host / "etc" / "app"]
    (archive / "app" / "index.html").write_text("<h1>v2</h1>\n")

    with _opened(dirs) as before:
        report = run(archive, host, [("app", "/srv/www"), ("config/app.conf", "/etc/app")], cleanup=cleanup)
        kept = [os.path.samestat(os.fstat(fd), os.stat(path)) and os.fstat(fd).st_nlink > 0 for fd, path in before]
    assert kept == [True] * len(dirs)  # the very directories, never removed
    assert (www / "index.html").read_text() == "<h1>v2</h1>\n"
    assert all(mode_of(path) == _fresh_mode() for path in dirs)
    assert set(dirs) <= set(report.created_dirs)  # type: ignore[attr-defined]
    recorded = [Path(json.loads(line)) for line in cleanup.read_text().splitlines()]
    assert set(dirs) <= set(recorded) and www / "index.html" in recorded

    run(archive, host, [("config/app.conf", "/etc/app")], cleanup=cleanup)  # the next one without /srv/www
    assert not (host / "srv").exists()


def test_a_directory_the_last_install_changed_is_made_afresh(archive: Path, host: Path, tmp_path: Path) -> None:
    """A mode the previous install's permissions set (or anyone's chmod) is not what mkdir makes: the directory is
    removed and made again, as CodeDeploy's agent does, and nothing of the old one is left."""
    cleanup = tmp_path / "group-1-cleanup"
    perm = Permission(object="/srv", mode="700", types=frozenset({"directory"}))
    run(archive, host, [("app", "/srv/www")], cleanup=cleanup, permissions=[perm])
    www, static = host / "srv" / "www", host / "srv" / "www" / "static"
    assert mode_of(www) == mode_of(static) == 0o700

    with _opened([www, static]) as before:
        run(archive, host, [("app", "/srv/www")], cleanup=cleanup)
        assert [os.fstat(fd).st_nlink for fd, _ in before] == [0, 0]  # the old ones were removed

    assert mode_of(www) == mode_of(static) == _fresh_mode()
    assert (static / "site.css").read_text() == "body {}\n"


def test_the_previous_installs_directories_not_made_again_go_and_a_file_may_take_the_place_of_one(
    archive: Path, host: Path, tmp_path: Path
) -> None:
    cleanup = tmp_path / "group-1-cleanup"
    run(archive, host, [("app", "/srv/www"), ("config/app.conf", "/etc/app")], cleanup=cleanup)
    assert (host / "srv" / "www" / "static" / "css").is_dir()

    # /srv/www/static becomes a file, /etc/app is not installed any more: neither directory is left
    report = run(archive, host, [("extra/static", "/srv/www")], cleanup=cleanup, file_exists_behavior="DISALLOW")

    assert tree(host) == ["srv/", "srv/www/", "srv/www/static"]
    assert (host / "srv" / "www" / "static").read_text() == "a file named like a directory of app/\n"
    assert report.copied == (host / "srv" / "www" / "static",)  # type: ignore[attr-defined]


_CRASHING_INSTALL = """
import os, shutil, sys
from pathlib import Path
from engine.agent.installer import install
from engine.core.appspec import FileMapping, ServerAppSpec

archive, host, cleanup = (Path(arg) for arg in sys.argv[1:4])
copy, copies = shutil.copy2, []

def die_at_the_second_file(source, target, **kwargs):
    copies.append(target)
    if len(copies) == 2:
        os._exit(9)  # killed with one file copied (and recorded): no finally runs
    return copy(source, target, **kwargs)

shutil.copy2 = die_at_the_second_file
spec = ServerAppSpec(os="linux", files=(FileMapping("app", "/srv/www"), FileMapping("config/app.conf", "/opt/new")))
install(spec, archive_dir=archive, cleanup_file=cleanup, prefix=host)
"""


def test_an_install_killed_midway_leaves_a_record_of_all_it_may_leave_behind(
    archive: Path, host: Path, tmp_path: Path
) -> None:
    """The previous install's directories are named first in the new record, before this one plans anything: a
    crash before they are kept or removed leaves them in a record, and the next install removes them with what the
    crashed one made."""
    cleanup = tmp_path / "group-1-cleanup"
    run(archive, host, [("app", "/srv/www"), ("config/app.conf", "/etc/app")], cleanup=cleanup)
    script = tmp_path / "crash.py"
    script.write_text(_CRASHING_INSTALL)
    root = Path(__file__).resolve().parent.parent
    argv = [sys.executable, str(script), str(archive), str(host), str(cleanup)]
    crashed = subprocess.run(argv, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert crashed.returncode == 9
    recorded = {Path(json.loads(line)) for line in cleanup.read_text().splitlines()}
    assert host / "etc" / "app" in recorded  # the previous install's, still there, waiting
    assert (host / "etc" / "app").is_dir()

    run(archive, host, [("app/run.sh", "/srv/bin")], cleanup=cleanup)

    assert tree(host) == ["srv/", "srv/bin/", "srv/bin/run.sh"]
    assert [Path(json.loads(line)) for line in cleanup.read_text().splitlines()][-1] == host / "srv" / "bin" / "run.sh"


def test_an_install_refused_by_its_plan_still_removes_the_previous_one(
    archive: Path, host: Path, tmp_path: Path
) -> None:
    cleanup = tmp_path / "group-1-cleanup"
    run(archive, host, [("app", "/srv/www")], cleanup=cleanup)
    with pytest.raises(InstallError, match="does not exist in the revision"):
        run(archive, host, [("missing", "/srv/www")], cleanup=cleanup)
    assert not (host / "srv").exists()  # its files and its directories, as the replay always removed them
    assert not cleanup.exists()


def test_a_directory_made_by_someone_else_just_before_our_mkdir_is_used_and_not_recorded(
    archive: Path, host: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Local hosts' prefixes share a parent: two agents installing at once both see it missing, and the second
    mkdir finds it there. That is not a failure, and the directory is not the second one's to remove."""
    shared = host / "srv"
    mkdir = os.mkdir

    def beaten_to_it(path: object, *args: object, **kwargs: object) -> None:
        if Path(str(path)) == shared and not shared.exists():
            mkdir(shared)  # another agent's, between this one's check and its mkdir
        mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "mkdir", beaten_to_it)
    cleanup = tmp_path / "group-1-cleanup"
    report = run(archive, host, [("app", "/srv/www")], cleanup=cleanup)

    assert (shared / "www" / "index.html").read_text() == "<h1>v1</h1>\n"
    assert shared not in report.created_dirs  # type: ignore[attr-defined]
    assert shared not in [Path(json.loads(line)) for line in cleanup.read_text().splitlines()]


def test_cleanup_replay_ignores_missing_paths_and_a_cut_last_line(tmp_path: Path) -> None:
    kept = tmp_path / "kept.txt"
    kept.write_text("x")
    gone = tmp_path / "gone.txt"
    gone.write_text("x")
    cleanup = tmp_path / "cleanup"
    cleanup.write_text(
        json.dumps(str(tmp_path / "never-existed")) + "\n" + json.dumps(str(gone)) + "\n" + '"' + str(kept)
    )
    assert replay_cleanup(cleanup) == 1
    assert not gone.exists() and kept.exists() and not cleanup.exists()
    assert replay_cleanup(cleanup) == 0


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([("config/app.conf", "/etc"), ("app/../config/app.conf", "/etc")], None),  # same source twice: fine
        ([("config/app.conf", "/etc"), ("app/run.sh", "/etc/app.conf")], "installs a file there"),
        ([("app", "/srv"), ("extra/static", "/srv")], "calls for installing the file"),
        ([("app/run.sh", "/bin"), ("other/run.sh", "/bin")], "does not exist in the revision"),
        ([("../outside", "/x")], "outside the revision"),
    ],
)
def test_plan_conflicts_fail_before_copying(
    archive: Path, host: Path, files: list[tuple[str, str]], message: str | None
) -> None:
    if message is None:
        run(archive, host, files)
        assert (host / "etc" / "app.conf").read_text() == "port=1\n"
        return
    with pytest.raises(InstallError, match=message):
        run(archive, host, files)
    assert not host.exists() or not any(path.is_file() for path in host.rglob("*"))


def test_two_sources_onto_one_file_is_refused(archive: Path, host: Path) -> None:
    (archive / "other").mkdir()
    (archive / "other" / "run.sh").write_text("#!/bin/sh\n")
    with pytest.raises(InstallError, match=r"two source files named .* for the same destination"):
        run(archive, host, [("app", "/srv"), ("other/run.sh", "/srv")])
    assert not host.exists()


# --- permissions --------------------------------------------------------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_permission_on_a_copied_file(archive: Path, host: Path) -> None:
    perm = Permission(object="/etc/app/app.conf", mode="600", types=frozenset({"file"}))
    report = run(archive, host, [("config/app.conf", "/etc/app")], permissions=[perm])
    assert mode_of(host / "etc" / "app" / "app.conf") == 0o600
    assert report.permissions_set == 1  # type: ignore[attr-defined]


def test_permission_on_a_directory_applies_to_descendants_only(archive: Path, host: Path) -> None:
    existing = host / "srv"
    existing.mkdir(parents=True)
    os.chmod(existing, 0o755)
    perms = [
        Permission(object="/srv", mode="700", types=frozenset({"directory"})),
        Permission(object="/srv/www", pattern="*.sh", mode="750", types=frozenset({"file"})),
        Permission(object="/srv/www/static", except_=("site.css",), mode="604", types=frozenset({"file"})),
    ]
    run(archive, host, [("app", "/srv/www")], permissions=perms)
    www = host / "srv" / "www"
    assert mode_of(existing) == 0o755  # the object itself (and any directory that existed) is untouched
    assert mode_of(www) == 0o700 and mode_of(www / "static") == 0o700 and mode_of(www / "static" / "css") == 0o700
    assert mode_of(www / "run.sh") == 0o750  # pattern: immediate children by base name
    assert mode_of(www / "index.html") == 0o644
    assert mode_of(www / "static" / "css" / "deep.css") == 0o604  # "**" reaches every depth
    assert mode_of(www / "static" / "site.css") == 0o644  # except


def test_permission_errors(archive: Path, host: Path) -> None:
    twice = [Permission(object="/srv", mode="700"), Permission(object="/srv/www", mode="755")]
    with pytest.raises(InstallError, match=r"permissions setting for \(.*\) is specified more than once"):
        run(archive, host, [("app", "/srv/www")], permissions=twice)
    shutil.rmtree(host)
    pattern_on_file = [Permission(object="/etc/app/app.conf", pattern="*.conf", types=frozenset({"file"}))]
    with pytest.raises(InstallError, match="invalid pattern"):
        run(archive, host, [("config/app.conf", "/etc/app")], permissions=pattern_on_file, cleanup=host.parent / "c2")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owner_and_group_are_set(archive: Path, host: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    perm = Permission(object="/etc/app", owner="nobody", group=group)
    run(archive, host, [("config/app.conf", "/etc/app")], permissions=[perm])
    st = (host / "etc" / "app" / "app.conf").stat()
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(InstallError, match="no user named 'no-such-user-xyz'"):
        run(
            archive,
            host,
            [("config/app.conf", "/etc/other")],
            permissions=[Permission(object="/etc/other", owner="no-such-user-xyz")],
            cleanup=host.parent / "c2",
        )


@pytest.mark.skipif(shutil.which("setfacl") is not None, reason="setfacl is installed here")
def test_acls_without_setfacl_is_a_clear_error(archive: Path, host: Path) -> None:
    perm = Permission(object="/etc/app", acls=("u:nobody:rw",))
    with pytest.raises(InstallError, match="setfacl command is not installed"):
        run(archive, host, [("config/app.conf", "/etc/app")], permissions=[perm])


@pytest.mark.skipif(shutil.which("semanage") is not None, reason="semanage is installed here")
def test_selinux_context_without_semanage_is_a_clear_error(archive: Path, host: Path) -> None:
    perm = Permission(object="/etc/app", context=SELinuxContext(type="httpd_sys_content_t"))
    with pytest.raises(InstallError, match=r"SELinux context .* semanage and restorecon not installed"):
        run(archive, host, [("config/app.conf", "/etc/app")], permissions=[perm])


# --- records kept beside installs ---------------------------------------------------------------------------------


def test_retention_keeps_five_revisions_besides_the_current_and_the_last_successful(tmp_path: Path) -> None:
    layout = AgentLayout(tmp_path / "agent")
    dirs = []
    for index in range(9):
        path = layout.ensure_deployment_dir("group/1", f"d-{index}", {"deployment_id": f"d-{index}"})
        os.utime(path / "deployment.json", (1_000 + index, 1_000 + index))
        dirs.append(path)
    layout.record_last_successful_install("group/1", dirs[0])
    layout.record_most_recent_install("group/1", dirs[8])

    removed = layout.prune_revisions("group/1", current=dirs[8])

    assert sorted(removed) == sorted(dirs[1:3])
    assert [path.name for path in sorted(layout.group_dir("group/1").iterdir())] == [
        "d-0",
        "d-3",
        "d-4",
        "d-5",
        "d-6",
        "d-7",
        "d-8",
    ]
    assert layout.last_successful_install("group/1") == dirs[0]
    assert layout.group_dir("group/1").parent == layout.root / "deployments"  # "/" cannot leave the root
    assert layout.deployment_dir("g", "..").name == "%2E%2E"


def test_install_records_are_links_and_an_older_agents_files_still_read(tmp_path: Path) -> None:
    layout = AgentLayout(tmp_path / "agent")
    first = layout.ensure_deployment_dir("g", "d-1", {})
    second = layout.ensure_deployment_dir("g", "d-2", {})
    instructions = layout.root / "deployment-instructions"
    instructions.mkdir()
    (instructions / "g_last_successful_install").write_text("g/d-1\n")  # as an agent before the links wrote it
    (instructions / "g_most_recent_install").write_text("../../elsewhere\n")  # never outside the deployments
    assert layout.last_successful_install("g") == first
    assert layout.most_recent_install("g") is None

    layout.record_last_successful_install("g", second)  # replaces the file
    layout.record_most_recent_install("g", first)
    assert (instructions / "g_last_successful_install").is_symlink()
    assert (layout.last_successful_install("g"), layout.most_recent_install("g")) == (second, first)
    assert sorted(path.name for path in instructions.iterdir()) == [
        "g_last_successful_install",
        "g_most_recent_install",
    ]

    shutil.rmtree(second)
    assert layout.last_successful_install("g") is None  # a record of a directory pruned since reads as none


def test_the_plans_remembered_realpath_agrees_with_os_realpath_through_every_kind_of_link(tmp_path: Path) -> None:
    # The plan resolves a path from its directory's remembered resolution (one lstat per new component). It must
    # answer exactly what os.path.realpath does: links to directories, relative and absolute, chained, dangling,
    # looping, and paths through "..", through a link, and that do not exist yet.
    from engine.agent.installer import _Plan

    (tmp_path / "real" / "deep" / "er").mkdir(parents=True)
    (tmp_path / "real" / "file").write_text("x")
    (tmp_path / "rel").symlink_to("real/deep")
    (tmp_path / "abs").symlink_to(tmp_path / "real")
    (tmp_path / "chain").symlink_to("rel")
    (tmp_path / "real" / "deep" / "up").symlink_to("../..")
    (tmp_path / "dangling").symlink_to("nowhere/at/all")
    (tmp_path / "loop-a").symlink_to("loop-b")
    (tmp_path / "loop-b").symlink_to("loop-a")
    tails = ["", "er", "er/new/dirs", "file", "up", "up/real/deep/up/abs", "../real", "./er", "x/../y"]
    heads = ["real", "real/deep", "rel", "abs", "chain", "real/deep/up", "dangling", "loop-a", "missing"]
    plan = _Plan()
    for head in heads:
        for tail in tails:
            path = str(tmp_path / head / tail) if tail else str(tmp_path / head)
            assert plan.real(path) == os.path.realpath(path), path
            assert plan.real(Path(path)) == os.path.realpath(path), path  # remembered: asked again
