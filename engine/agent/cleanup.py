"""The cleanup record of a deployment group's last Install, replayed by the next one (I/O, §1.3).

``<group-id>-cleanup`` names, one JSON string per line in the order they were made, every file, link and directory
an Install created. The next Install replays it in reverse: files and links are removed, directories only when
empty, missing paths ignored, a last line cut short dropped; then it writes its own.

The directories the replay would remove (empty once the files are gone) wait instead (``PreviousInstall.waiting``)
until the Install ends: one that it makes again is kept when it is exactly what ``mkdir`` would make now (ours, the
mode the umask gives, no ACL or SELinux label: ``PreviousInstall.reuse``), the rest are removed then (``finish``).
What the host ends with is the same, without a removal and a creation per directory, each a journaled change on
disk. Until then the Install's planner takes them for gone. The new record (``CleanupRecord``) names them first,
before anything is planned, so an install cut short by a crash still has every path it may leave behind in its
record; should one of them be removed in the end (not made again, or changed since), the record is written anew
without it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO


def replay_cleanup(cleanup_file: Path) -> int:
    """Remove what the previous install of the group created, and its record; returns how many paths went."""
    previous = PreviousInstall.undo(cleanup_file, keep_dirs=False)
    cleanup_file.unlink(missing_ok=True)
    return previous.undone


def _record_line(path: Path) -> str:
    """One path of a cleanup record: a JSON string and a newline (``_record_lines`` reads them back)."""
    return json.dumps(str(path)) + "\n"


def _record_lines(record: Path) -> list[str]:
    """The paths of a cleanup record, in the order they were created (a last line cut short is dropped)."""
    try:
        text = record.read_text()
    except FileNotFoundError:
        return []
    paths = []
    for line in text.split("\n")[:-1]:  # the piece after the last newline is empty or cut short
        try:
            path = json.loads(line)
        except ValueError:
            continue
        if isinstance(path, str):
            paths.append(path)
    return paths


@dataclass
class PreviousInstall:
    """The previous install of the group, undone: its files and links removed; its directories left to remove
    (``waiting``, children before parents), each empty once its files are gone."""

    undone: int = 0
    waiting: dict[Path, None] = field(default_factory=dict)
    kept: set[Path] = field(default_factory=set)  # the waiting ones this install made again by keeping them
    _fresh: tuple[int, int] | None = None  # (umask, euid) once read; see _as_made_now

    @classmethod
    def undo(cls, record: Path, *, keep_dirs: bool) -> PreviousInstall:
        """Replay ``record`` in reverse; ``keep_dirs``: leave the directories to ``reuse`` and ``finish`` instead of
        removing them now."""
        previous = cls()
        for name in reversed(_record_lines(record)):
            previous._undo(Path(name), keep_dirs)
        return previous

    def _undo(self, path: Path, keep_dirs: bool) -> None:
        try:
            found = os.lstat(path)
        except OSError:
            return  # missing
        if not stat.S_ISDIR(found.st_mode):
            with contextlib.suppress(OSError):
                os.unlink(path)
                self.undone += 1
            return
        if path in self.waiting:
            return
        if keep_dirs:
            try:
                names = os.listdir(path)
            except OSError:
                names = None  # unreadable: try the removal, as without keep_dirs
            if names is not None:
                if all(path / name in self.waiting for name in names):
                    self.waiting[path] = None
                    self.undone += 1
                return  # else it holds files the install did not create: it stays
        with contextlib.suppress(OSError):  # a directory that still holds files the install did not create stays
            os.rmdir(path)
            self.undone += 1

    def gone(self, path: Path) -> bool:
        """Whether ``path`` is a directory of the previous install that is no longer there as far as the plan goes."""
        return path in self.waiting

    def reuse(self, path: Path) -> bool:
        """``path``, one of ``waiting``, made again by this install: True when it is kept as it is (as ``mkdir``
        would make it now); else it is removed (with what waits under it), and the caller makes it afresh."""
        del self.waiting[path]
        if self._as_made_now(path):
            self.kept.add(path)
            return True
        self.remove_under(path)
        with contextlib.suppress(OSError):  # (something of someone else's got in: it stays, as in step 1)
            os.rmdir(path)
        return False

    def remove_under(self, path: Path) -> None:
        """Remove the waiting directories at and under ``path`` (something else goes there), children first."""
        for below in [waiting for waiting in self.waiting if waiting == path or waiting.is_relative_to(path)]:
            del self.waiting[below]
            with contextlib.suppress(OSError):
                os.rmdir(below)

    def finish(self) -> None:
        """Remove the directories this install did not make again, children first (as step 1 would have)."""
        for path in list(self.waiting):
            del self.waiting[path]
            with contextlib.suppress(OSError):
                os.rmdir(path)

    def _as_made_now(self, path: Path) -> bool:
        """Whether the directory is what ``os.mkdir`` would make now: owned by us with our group (the parent's when
        it is setgid), its mode the umask's (and setgid with the parent's), no extended attributes (ACLs, an SELinux
        label). Anything else (permissions the last install set, someone's chown) and it is made afresh."""
        if self._fresh is None:
            umask = _umask()
            if umask is None:
                return False
            self._fresh = (umask, os.geteuid())
        umask, euid = self._fresh
        try:
            found, parent = os.lstat(path), os.stat(path.parent)
            if _xattrs(path):
                return False
        except OSError:
            return False
        setgid = parent.st_mode & stat.S_ISGID
        group = parent.st_gid if setgid else os.getegid()
        mode = (0o777 & ~umask) | setgid
        return (
            stat.S_ISDIR(found.st_mode)
            and found.st_uid == euid
            and found.st_gid == group
            and stat.S_IMODE(found.st_mode) == mode
        )


def _umask() -> int | None:
    """This process's umask, read without changing it (``os.umask`` sets it, racing other threads); None when the
    kernel does not say (Linux before 4.7)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _xattrs(path: Path) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []  # a file system without extended attributes: none can be set
        raise


@dataclass
class CleanupRecord:
    """The new cleanup record as it is written: the previous install's directories first (they may be kept), then
    each path as this install makes it (a crash mid-install still leaves an accurate record)."""

    record: TextIO
    lines: list[Path]
    added: set[Path] = field(default_factory=set)  # made by this install (a removed directory may be made again)
    _previous: set[Path] = field(init=False)  # the previous install's directories, the lines given at the start

    def __post_init__(self) -> None:
        self._previous = set(self.lines)
        if self.lines:
            self.record.write("".join(map(_record_line, self.lines)))
            self.record.flush()

    def add(self, path: Path) -> None:
        self.lines.append(path)
        self.added.add(path)
        self.record.write(_record_line(path))
        self.record.flush()

    def gone(self, kept: set[Path]) -> set[Path]:
        """The previous install's directories named first that are not this install's in the end: neither ``kept``
        nor made again."""
        return self._previous - kept - self.added

    def write_anew(self, cleanup_file: Path, gone: set[Path]) -> None:
        """The record without ``gone``, replacing the one written: a later replay must not remove a directory
        someone else makes there meanwhile."""
        partial = cleanup_file.with_name(cleanup_file.name + ".tmp")
        with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as record:
            record.write("".join(_record_line(path) for path in self.lines if path not in gone))
        os.replace(partial, cleanup_file)
