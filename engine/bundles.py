"""Revision bundles: build one canonical tar.gz from any source, and extract bundles without escaping (I/O).

Canonical form (so the same content always has the same sha256): members sorted by path components, no root
entry, uid/gid 0, empty uname/gname, mtime kept (whole seconds), PAX format, gzip header mtime 0 and no file name.
Sources: a directory, a ``.tar``/``.tar.gz``/``.tgz``, a ``.zip`` (unix modes kept) or ``git:REF``. Archives are
first unpacked with the same checks as :func:`safe_extract`, then packed from that directory. If the unpacked root
holds exactly one directory whose entries include an appspec file, that directory becomes the root (reference §1.1).

Extraction rules (theory of operation): member names are checked lexically (no absolute names, no ``..``); files
and directories are written first, never through a symlink (each parent is checked with ``lstat``); symlinks are
created last and every one is then resolved with ``realpath`` against the *final* tree, so a chain of links cannot
point outside ``dest``. Hard links become copies of a member already extracted. Devices, fifos and sparse members
are refused. Setuid/setgid bits are dropped.

Bounded work (``BundleLimits``): the member count, the total unpacked size, and each path's length and depth are
checked from the archive's headers (a zip's central directory) before anything is extracted, and from a
directory's entries before anything is packed, so 100,000 empty members are refused after reading 20,001 headers,
not after making 100,000 inodes. The same limits hold on the server (building) and on the agent (extracting); each
error names its limit. ``build_bundle`` reads the root's AppSpec and hands it to ``check`` before packing, so a
revision without a valid AppSpec is refused before the expensive step.
"""

from __future__ import annotations

import calendar
import dataclasses
import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Protocol

from engine.core.errors import BundleError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

DEFAULT_MAX_BYTES = 2 * 1024**3
APPSPEC_NAMES = ("appspec.yml", "appspec.yaml")
"""The AppSpec files ``build_bundle`` hands to its ``check``, the first found at the revision's root."""
_APPSPEC_NAME = re.compile("appspec", re.IGNORECASE)
_CHUNK = 1024 * 1024
_APPSPEC_READ = 16 * 1024 * 1024
"""The most of an AppSpec file ``build_bundle`` reads into memory (the parser's own limit is far lower)."""
_ZIP_UNIX = 3
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile)


@dataclass(frozen=True, slots=True)
class BundleLimits:
    """What one bundle may hold; each field is named in the error that refuses a bundle over it (``bundle.<field>``).

    The defaults are far above any real application (a large web app has a few thousand files, paths under 200
    characters) and far below what would exhaust a host's inodes, disk or time.
    """

    max_members: int = 20_000
    """Files, directories and links together."""
    max_unpacked_bytes: int = DEFAULT_MAX_BYTES
    """The total size of the files once unpacked (2 GiB)."""
    max_path_length: int = 1024
    """Bytes in one member's path inside the bundle (and in a link's target)."""
    max_path_depth: int = 64
    """Directories one member's path goes through, plus one."""

    def check_member(self, name: str, target: str = "") -> None:
        """Refuse a member whose path (or link ``target``) is too long or too deep."""
        if len(name.encode()) > self.max_path_length or len(target.encode()) > self.max_path_length:
            raise BundleError(
                f"bundle has a path longer than {self.max_path_length} bytes (limit bundle.max_path_length)",
                name[:200] + "…" if len(name) > 200 else name,
            )
        if name.count("/") + 1 > self.max_path_depth:
            raise BundleError(
                f"bundle has a path deeper than {self.max_path_depth} levels (limit bundle.max_path_depth)",
                name[:200] + "…" if len(name) > 200 else name,
            )


BUNDLE_LIMITS = BundleLimits()
"""The limits the server and the agent apply (docs/configuration.md lists them)."""


class _Tally:
    """Counts members and bytes against the limits, refusing the first member over either."""

    def __init__(self, limits: BundleLimits) -> None:
        self.limits = limits
        self.members = 0
        self.bytes = 0

    def add(self, name: str, size: int = 0, target: str = "") -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise BundleError(
                f"bundle has more than {self.limits.max_members} members (limit bundle.max_members)", name
            )
        self.limits.check_member(name, target)
        self.bytes += size
        if self.bytes > self.limits.max_unpacked_bytes:
            raise BundleError(
                f"bundle content exceeds the limit of {self.limits.max_unpacked_bytes} bytes unpacked "
                "(limit bundle.max_unpacked_bytes)",
                name,
            )


@dataclass(frozen=True, slots=True)
class AppSpecFile:
    """The AppSpec file found at a revision's root, as read before the bundle was packed."""

    name: str
    data: bytes


AppSpecCheck = Callable[[AppSpecFile | None], Any]
"""Given the root's AppSpec (None when there is none) before packing; raises to refuse the revision, and what it
returns is kept as ``BuiltBundle.checked``."""


@dataclass(frozen=True, slots=True)
class BuiltBundle:
    path: Path
    sha256: str
    size: int
    commit: str | None
    source: str
    checked: Any = None
    """What ``build_bundle``'s ``check`` returned (None without one)."""


APPSPEC_FILE_SUFFIXES = (".yml", ".yaml", ".json")


def build_bundle(
    source: str | Path,
    dest_dir: Path,
    *,
    git_repo: Path | None = None,
    check: AppSpecCheck | None = None,
    limits: BundleLimits = BUNDLE_LIMITS,
) -> BuiltBundle:
    """Normalize ``source`` into ``dest_dir/<sha256>.tar.gz``; ``check`` sees the AppSpec before anything is packed.

    Raises:
        BundleError: the source is missing, of an unknown kind, unsafe, over one of ``limits``, or ``git`` failed.
        Whatever ``check`` raises (an AppSpecInvalid), before the bundle is packed.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    text = str(source)
    with tempfile.TemporaryDirectory(prefix="bundle-", dir=dest_dir) as scratch_name:
        scratch = Path(scratch_name)
        commit: str | None = None
        if text.startswith("git:"):
            root, commit = _unpack_git(text[4:], git_repo or Path.cwd(), scratch, limits)
        else:
            path = Path(source)
            if path.is_dir():
                root = path
            elif path.is_file() and path.suffix.lower() in APPSPEC_FILE_SUFFIXES:
                # A Lambda or ECS revision is just its AppSpec (CodeDeploy's "String" revision): bundle it alone.
                root = scratch / "tree"
                root.mkdir()
                shutil.copy2(path, root / "appspec.yml")  # keeps its mtime: same file, same sha256
            elif path.is_file():
                root = scratch / "tree"
                _unpack_archive(path, root, limits)
            else:
                raise BundleError("revision source does not exist", text)
        root = _revision_root(root)
        checked = check(_root_appspec(root)) if check is not None else None
        skip = dest_dir.resolve()
        if skip == root.resolve():
            raise BundleError("the bundle directory cannot be the revision directory itself", text)
        entries = _walk_sorted(root, skip, limits)
        partial = scratch / "bundle.tar.gz"
        with partial.open("wb") as raw:
            writer = _HashingWriter(raw)
            _write_canonical_tar(root, entries, writer)
        final = dest_dir / f"{writer.sha256}.tar.gz"
        os.replace(partial, final)
        return BuiltBundle(
            path=final, sha256=writer.sha256, size=writer.size, commit=commit, source=text, checked=checked
        )


def safe_extract(
    bundle: Path, dest: Path, *, max_bytes: int | None = None, limits: BundleLimits = BUNDLE_LIMITS
) -> None:
    """Extract a tar (any compression) into ``dest`` without writing anything outside it. Every header is read and
    checked against ``limits`` (``max_bytes`` overrides its unpacked size) before ``dest`` is even made.

    Raises:
        BundleError: an absolute name, a ``..`` component, a link escaping ``dest``, a device or fifo, a bundle over
            one of ``limits``, or an unreadable archive.
    """
    if max_bytes is not None:
        limits = dataclasses.replace(limits, max_unpacked_bytes=max_bytes)
    try:
        with tarfile.open(bundle, "r:*") as archive:
            _check_tar_headers(archive, limits)
            _extract_tar(archive, dest, limits.max_unpacked_bytes)
    except _READ_ERRORS as exc:
        raise BundleError("unreadable archive", f"{bundle}: {exc}") from exc


def read_member(bundle: Path, name: str) -> bytes | None:
    """The content of the regular file ``name`` in the bundle (e.g. the appspec), without extracting the rest."""
    wanted = _normalize_name(name)
    try:
        with tarfile.open(bundle, "r:*") as archive:
            for member in archive:
                if member.isfile() and _normalize_name(member.name) == wanted:
                    handle = archive.extractfile(member)
                    return handle.read() if handle else None
    except _READ_ERRORS as exc:
        raise BundleError("unreadable archive", f"{bundle}: {exc}") from exc
    return None


# --- building ---------------------------------------------------------------------------------------------------


class _Sink(Protocol):
    """What gzip needs of the stream it writes to (typeshed's ``gzip._WritableFileobj``)."""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to the file."""

    def __init__(self, target: BinaryIO) -> None:
        self._target, self._hash, self.size = target, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer, /) -> int:
        self._hash.update(data)
        self.size += memoryview(data).nbytes
        return self._target.write(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def _write_canonical_tar(root: Path, entries: list[tuple[str, Path]], out: _Sink) -> None:
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for rel, path in entries:
            info = _canonical_info(rel, path, root)
            if info.isfile():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)


def _walk_sorted(root: Path, skip: Path, limits: BundleLimits) -> list[tuple[str, Path]]:
    """Every entry under ``root`` in canonical order, counted against ``limits`` as the walk goes (so a directory of
    a million files is refused after the first ``max_members``, before anything is packed)."""
    tally = _Tally(limits)
    entries: list[tuple[tuple[str, ...], Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        kept = []
        for name in dirnames:
            child = base / name
            if child.is_symlink():
                filenames.append(name)  # a link to a directory is stored as a link, never followed
            elif child.resolve() != skip:
                kept.append(name)
                entries.append((child.relative_to(root).parts, child))
                tally.add("/".join(entries[-1][0]))
        dirnames[:] = kept
        for name in filenames:
            child = base / name
            entries.append((child.relative_to(root).parts, child))
            st = child.lstat()
            tally.add("/".join(entries[-1][0]), st.st_size if stat.S_ISREG(st.st_mode) else 0)
    entries.sort(key=lambda entry: entry[0])
    return [("/".join(parts), path) for parts, path in entries]


def _canonical_info(rel: str, path: Path, root: Path) -> tarfile.TarInfo:
    st = path.lstat()
    info = tarfile.TarInfo(rel)
    info.mtime = int(st.st_mtime)
    info.mode = stat.S_IMODE(st.st_mode) & 0o1777
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
        _check_link_target(rel, info.linkname)
        target = os.path.realpath(path)
        real_root = os.path.realpath(root)
        if target != real_root and not target.startswith(real_root + os.sep):
            raise BundleError("symlink points outside the revision", f"{rel} -> {info.linkname}")
    elif stat.S_ISREG(st.st_mode):
        info.type = tarfile.REGTYPE
        info.size = st.st_size
    else:
        raise BundleError("unsupported file type in revision (device, fifo or socket)", rel)
    return info


def _root_appspec(root: Path) -> AppSpecFile | None:
    """The first of APPSPEC_NAMES that is a regular file at ``root`` (a link is not read, as in the bundle)."""
    for name in APPSPEC_NAMES:
        path = root / name
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as handle:
                data = handle.read(_APPSPEC_READ + 1)
            if len(data) > _APPSPEC_READ:
                raise BundleError(f"the AppSpec file is larger than {_APPSPEC_READ} bytes", name)
            return AppSpecFile(name, data)
    return None


def _revision_root(root: Path) -> Path:
    """The agent's unpack rule: one directory alone at the root that holds an appspec becomes the root."""
    entries = list(root.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        nested = entries[0]
        if any(_APPSPEC_NAME.search(child.name) for child in nested.iterdir()):
            return nested
    return root


def _unpack_archive(path: Path, dest: Path, limits: BundleLimits) -> None:
    if zipfile.is_zipfile(path):
        try:
            _extract_zip(path, dest, limits)
        except _READ_ERRORS as exc:
            raise BundleError("unreadable archive", f"{path}: {exc}") from exc
    elif tarfile.is_tarfile(path):
        safe_extract(path, dest, limits=limits)
    else:
        raise BundleError("revision file is neither a tar nor a zip archive", str(path))


def _unpack_git(ref: str, repo: Path, scratch: Path, limits: BundleLimits) -> tuple[Path, str]:
    commit = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").decode().strip()
    archive = scratch / "git.tar"
    archive.write_bytes(_git(repo, "archive", "--format=tar", commit, config="tar.umask=0022"))
    root = scratch / "tree"
    safe_extract(archive, root, limits=limits)
    return root, commit


def _git(repo: Path, *args: str, config: str | None = None) -> bytes:
    options = ["-c", config] if config else []
    try:
        done = subprocess.run(["git", "-C", str(repo), *options, *args], capture_output=True, check=False)
    except OSError as exc:
        raise BundleError("git is not available", str(exc)) from exc
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip() or f"exit code {done.returncode}"
        raise BundleError(f"git {args[0]} failed in {repo}", detail)
    return done.stdout


# --- extracting -------------------------------------------------------------------------------------------------


def _normalize_name(name: str) -> str:
    """Lexically checked, ``./``-free member name ("" for the root entry)."""
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name) or "\\" in name:
        raise BundleError("absolute or non-POSIX member name", name)
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise BundleError("member name contains '..'", name)
    if "\0" in name:
        raise BundleError("member name contains a NUL byte", name)
    return "/".join(parts)


def _check_link_target(name: str, target: str) -> None:
    """A first, lexical check of a symlink target; the final one is done on disk after extraction."""
    if not target or target.startswith("/"):
        raise BundleError("symlink target is absolute or empty", f"{name} -> {target}")
    depth = len(name.split("/")) - 1
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise BundleError("symlink points outside the revision", f"{name} -> {target}")
        elif part not in ("", "."):
            depth += 1


class _Extraction:
    """Writes one archive into ``dest``: files and directories now, symlinks at ``finish``."""

    def __init__(self, dest: Path, max_bytes: int) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        self.dest = dest
        self.real_dest = os.path.realpath(dest)
        self.max_bytes = max_bytes
        self.total = 0
        self.links: list[tuple[str, str, int]] = []
        self.dir_attrs: list[tuple[str, int, int]] = []

    def _target(self, name: str, mtime: int) -> str:
        """Absolute path for ``name`` after checking that no existing parent is a symlink or a file.

        A parent the archive has no entry for (a zip or tar may list only files) is made here, with mode 755 and the
        mtime of the member that needs it: not the time of the extraction, which the canonical bundle would keep, so
        the same archive would give another sha256 each second."""
        path = self.real_dest
        parts = name.split("/")
        for part in parts[:-1]:
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
                self.dir_attrs.append((path, 0o755, mtime))  # an entry of its own, later, wins
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise BundleError("member would be written through a link or a file", name)
        return os.path.join(path, parts[-1])

    def _reserve(self, name: str, size: int) -> None:
        """Headers were checked before extraction; this holds for hard-link copies, which add bytes of their own."""
        self.total += size
        if self.total > self.max_bytes:
            limit = "(limit bundle.max_unpacked_bytes)"
            raise BundleError(f"bundle content exceeds the limit of {self.max_bytes} bytes unpacked {limit}", name)

    def add_dir(self, name: str, mode: int, mtime: int) -> None:
        path = self._target(name, mtime)
        if os.path.lexists(path):
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise BundleError("directory member conflicts with another member", name)
        else:
            os.mkdir(path, 0o755)
        self.dir_attrs.append((path, mode & 0o1777, mtime))

    def add_file(self, name: str, stream: IO[bytes], size: int, mode: int, mtime: int) -> None:
        self._reserve(name, size)
        path = self._target(name, mtime)
        if os.path.lexists(path):
            if stat.S_ISDIR(os.lstat(path).st_mode):
                raise BundleError("file member conflicts with a directory member", name)
            os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        written = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(_CHUNK):
                written += len(chunk)
                if written > size:
                    raise BundleError("member is larger than its header says", name)
                out.write(chunk)
        os.chmod(path, mode & 0o1777)
        os.utime(path, (mtime, mtime))

    def add_copy(self, name: str, of: str, mode: int, mtime: int) -> None:
        source = self._target(of, mtime)
        if not os.path.lexists(source) or not stat.S_ISREG(os.lstat(source).st_mode):
            raise BundleError("hard link to a member that is not an extracted file", f"{name} -> {of}")
        with open(source, "rb") as stream:
            self.add_file(name, stream, os.path.getsize(source), mode, mtime)

    def add_symlink(self, name: str, target: str, mtime: int) -> None:
        _check_link_target(name, target)
        self.links.append((name, target, mtime))

    def finish(self) -> None:
        created: list[str] = []
        try:
            for name, target, mtime in self.links:
                path = self._target(name, mtime)
                if os.path.lexists(path):
                    raise BundleError("symlink member conflicts with another member", name)
                os.symlink(target, path)
                created.append(path)
                os.utime(path, (mtime, mtime), follow_symlinks=False)
            for path in created:
                resolved = os.path.realpath(path)
                if resolved != self.real_dest and not resolved.startswith(self.real_dest + os.sep):
                    raise BundleError("symlink points outside the revision", os.path.relpath(path, self.real_dest))
        except BaseException:
            for path in created:
                os.unlink(path)
            raise
        for path, mode, mtime in sorted(self.dir_attrs, key=lambda item: item[0].count(os.sep), reverse=True):
            os.chmod(path, mode | 0o700)
            os.utime(path, (mtime, mtime))


def _check_tar_headers(archive: tarfile.TarFile, limits: BundleLimits) -> None:
    """Read every header (``archive.next`` caches them for the extraction) and refuse the first over ``limits``."""
    tally = _Tally(limits)
    while (member := archive.next()) is not None:
        size = member.size if member.isreg() else 0
        tally.add(member.name, size, member.linkname if member.issym() or member.islnk() else "")


def _extract_tar(archive: tarfile.TarFile, dest: Path, max_bytes: int) -> None:
    job = _Extraction(dest, max_bytes)
    for member in archive:
        name = _normalize_name(member.name)
        mode = member.mode & ~(stat.S_ISUID | stat.S_ISGID)
        mtime = int(member.mtime)
        if not name:
            continue
        if member.issparse():
            raise BundleError("sparse members are not supported", member.name)
        if member.isdir():
            job.add_dir(name, mode, mtime)
        elif member.isreg():
            stream = archive.extractfile(member)
            assert stream is not None
            job.add_file(name, stream, member.size, mode, mtime)
        elif member.issym():
            job.add_symlink(name, member.linkname, mtime)
        elif member.islnk():
            job.add_copy(name, _normalize_name(member.linkname), mode, mtime)
        else:
            raise BundleError("device, fifo or other special member refused", member.name)
    job.finish()


def _extract_zip(path: Path, dest: Path, limits: BundleLimits) -> None:
    with zipfile.ZipFile(path) as archive:
        tally = _Tally(limits)
        for info in archive.infolist():  # the central directory: every header, before anything is written
            tally.add(info.filename, info.file_size)
        job = _Extraction(dest, limits.max_unpacked_bytes)
        for info in archive.infolist():
            name = _normalize_name(info.filename)
            if not name:
                continue
            unix = info.external_attr >> 16 if info.create_system == _ZIP_UNIX else 0
            kind = stat.S_IFMT(unix)
            mtime = calendar.timegm((*info.date_time, 0, 0, 0))
            if info.is_dir() or kind == stat.S_IFDIR:
                job.add_dir(name, stat.S_IMODE(unix) or 0o755, mtime)
            elif kind == stat.S_IFLNK:
                if info.file_size > 4096:
                    raise BundleError("symlink target longer than 4096 bytes", info.filename)
                job.add_symlink(name, archive.read(info).decode(errors="replace"), mtime)
            elif kind in (0, stat.S_IFREG):
                mode = (stat.S_IMODE(unix) & ~(stat.S_ISUID | stat.S_ISGID)) or 0o644
                with archive.open(info) as stream:
                    job.add_file(name, stream, info.file_size, mode, mtime)
            else:
                raise BundleError("device, fifo or other special member refused", info.filename)
    job.finish()
