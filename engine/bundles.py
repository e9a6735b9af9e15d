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
"""

from __future__ import annotations

import calendar
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Protocol

from engine.core.errors import BundleError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

DEFAULT_MAX_BYTES = 2 * 1024**3
_APPSPEC_NAME = re.compile("appspec", re.IGNORECASE)
_CHUNK = 1024 * 1024
_ZIP_UNIX = 3
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile)


@dataclass(frozen=True, slots=True)
class BuiltBundle:
    path: Path
    sha256: str
    size: int
    commit: str | None
    source: str


APPSPEC_FILE_SUFFIXES = (".yml", ".yaml", ".json")


def build_bundle(source: str | Path, dest_dir: Path, *, git_repo: Path | None = None) -> BuiltBundle:
    """Normalize ``source`` into ``dest_dir/<sha256>.tar.gz``.

    Raises:
        BundleError: the source is missing, of an unknown kind, unsafe, or ``git`` failed.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    text = str(source)
    with tempfile.TemporaryDirectory(prefix="bundle-", dir=dest_dir) as scratch_name:
        scratch = Path(scratch_name)
        commit: str | None = None
        if text.startswith("git:"):
            root, commit = _unpack_git(text[4:], git_repo or Path.cwd(), scratch)
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
                _unpack_archive(path, root)
            else:
                raise BundleError("revision source does not exist", text)
        root = _revision_root(root)
        skip = dest_dir.resolve()
        if skip == root.resolve():
            raise BundleError("the bundle directory cannot be the revision directory itself", text)
        partial = scratch / "bundle.tar.gz"
        with partial.open("wb") as raw:
            writer = _HashingWriter(raw)
            _write_canonical_tar(root, writer, skip=skip)
        final = dest_dir / f"{writer.sha256}.tar.gz"
        os.replace(partial, final)
        return BuiltBundle(path=final, sha256=writer.sha256, size=writer.size, commit=commit, source=text)


def safe_extract(bundle: Path, dest: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Extract a tar (any compression) into ``dest`` without writing anything outside it.

    Raises:
        BundleError: an absolute name, a ``..`` component, a link escaping ``dest``, a device or fifo, more than
            ``max_bytes`` of content, or an unreadable archive.
    """
    try:
        with tarfile.open(bundle, "r:*") as archive:
            _extract_tar(archive, dest, max_bytes)
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


def _write_canonical_tar(root: Path, out: _Sink, *, skip: Path) -> None:
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for rel, path in _walk_sorted(root, skip):
            info = _canonical_info(rel, path, root)
            if info.isfile():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)


def _walk_sorted(root: Path, skip: Path) -> Iterator[tuple[str, Path]]:
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
        dirnames[:] = kept
        for name in filenames:
            child = base / name
            entries.append((child.relative_to(root).parts, child))
    entries.sort(key=lambda entry: entry[0])
    for parts, path in entries:
        yield "/".join(parts), path


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


def _revision_root(root: Path) -> Path:
    """The agent's unpack rule: one directory alone at the root that holds an appspec becomes the root."""
    entries = list(root.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        nested = entries[0]
        if any(_APPSPEC_NAME.search(child.name) for child in nested.iterdir()):
            return nested
    return root


def _unpack_archive(path: Path, dest: Path) -> None:
    if zipfile.is_zipfile(path):
        try:
            _extract_zip(path, dest, DEFAULT_MAX_BYTES)
        except _READ_ERRORS as exc:
            raise BundleError("unreadable archive", f"{path}: {exc}") from exc
    elif tarfile.is_tarfile(path):
        safe_extract(path, dest)
    else:
        raise BundleError("revision file is neither a tar nor a zip archive", str(path))


def _unpack_git(ref: str, repo: Path, scratch: Path) -> tuple[Path, str]:
    commit = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").decode().strip()
    archive = scratch / "git.tar"
    archive.write_bytes(_git(repo, "archive", "--format=tar", commit, config="tar.umask=0022"))
    root = scratch / "tree"
    safe_extract(archive, root)
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

    def _target(self, name: str) -> str:
        """Absolute path for ``name`` after checking that no existing parent is a symlink or a file."""
        path = self.real_dest
        parts = name.split("/")
        for part in parts[:-1]:
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise BundleError("member would be written through a link or a file", name)
        return os.path.join(path, parts[-1])

    def _reserve(self, name: str, size: int) -> None:
        self.total += size
        if self.total > self.max_bytes:
            raise BundleError(f"archive content exceeds the limit of {self.max_bytes} bytes", name)

    def add_dir(self, name: str, mode: int, mtime: int) -> None:
        path = self._target(name)
        if os.path.lexists(path):
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise BundleError("directory member conflicts with another member", name)
        else:
            os.mkdir(path, 0o755)
        self.dir_attrs.append((path, mode & 0o1777, mtime))

    def add_file(self, name: str, stream: IO[bytes], size: int, mode: int, mtime: int) -> None:
        self._reserve(name, size)
        path = self._target(name)
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
        source = self._target(of)
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
                path = self._target(name)
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


def _extract_zip(path: Path, dest: Path, max_bytes: int) -> None:
    job = _Extraction(dest, max_bytes)
    with zipfile.ZipFile(path) as archive:
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
