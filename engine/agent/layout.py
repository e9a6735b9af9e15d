"""The agent's on-disk layout: deployment directories, install records, revision retention, crash tracking (I/O).

    <root>/deployments/<group-id>/<deployment-id>/deployment.json     the command spec, written once
                                                 /bundle.tar.gz       the downloaded canonical bundle
                                                 /deployment-archive/ the extracted revision
                                                 /logs/scripts.log    hook output (see output.py)
    <root>/deployment-instructions/<group-id>-cleanup                 what the last Install created (§1.3), written
                                                                      as an Install goes (cleanup.py)
    <root>/deployment-instructions/<group-id>-cleanup.tmp             that record written anew, renamed onto it, when
                                                                      the previous install's directories it names
                                                                      first are not all this install's in the end
    <root>/deployment-instructions/<group-id>_last_successful_install -> ../deployments/<group-id>/<deployment-id>,
                                                                      a link made at the end of Install
    <root>/deployment-instructions/<group-id>_most_recent_install     -> the same, made at the end of Download
    <root>/ongoing-command/journal                                    commands being run, the process group of the
                                                                      script each runs, and their results until the
                                                                      server has them (crash recovery, §8)

Crash records cost an agent per lifecycle event one line appended to the journal when the command starts, one when
it has run, and one truncate once the server has the result, and per hook script one line when it starts and one
when it has exited: creating a file costs this filesystem ~0.35 ms, more than everything else the agent does for an
event but the hook's own process, and a line appended to a file kept open a few microseconds. Agents before the
journal kept ``<command-id>`` and ``<command-id>.result`` files, and agents before its group lines a
``<command-id>.group`` file per script; those are still read and reported.

Ids from the server become single path components (percent-encoded), so no id can name a path outside the root.
Records and bundles are written 0600 (only the agent's user reads them); directories keep the umask's mode, so a
``runas`` script can still reach its ``deployment-archive``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from engine.agent.hooks import HookGroup
from engine.core.agent_protocol import ResultBody

StoredResult = Mapping[str, object]
"""A result body read back from an ongoing-command record: a ResultBody as this agent writes it, but unchecked (a
record cut short reads as none, one of an older agent may lack keys); it is reported as it is and the server checks
it."""

KEPT_REVISIONS = 5
"""Archives kept per group besides the current one (CodeDeploy's ``max_revisions``)."""


def _component(value: str) -> str:
    """``value`` as one safe file name."""
    name = quote(value, safe="-_.@+=")
    if name in ("", ".", ".."):
        name = name.replace(".", "%2E") or "%00"
    return name


@dataclass(frozen=True, slots=True)
class OngoingCommand:
    """A command the agent was running when it last stopped."""

    command_id: int
    deployment_id: str
    event: str
    started_at: float
    result: StoredResult | None = None
    """The result body, once the command has run but before the server accepted it."""
    group: HookGroup | None = None
    """The process group of the hook script it was running, if it was (the agent ends it before reporting)."""


class AgentLayout:
    """Paths and small records under one agent root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._instructions = root / "deployment-instructions"
        self._ongoing = root / "ongoing-command"
        self._journal: int | None = None  # the journal's file descriptor, opened by the first record
        self._started: set[int] = set()  # commands with a start line and no done line in the journal
        self._commands: dict[int, OngoingCommand] = {}  # started by this agent process, until done
        self._grouped: set[int] = set()  # commands whose <id>.group file (an older agent's) may exist
        self._legacy: set[int] = set()  # commands recorded by an older agent (<id> files)

    # --- deployment directories ---------------------------------------------------------------------------------

    def group_dir(self, group_id: str) -> Path:
        return self.root / "deployments" / _component(group_id)

    def deployment_dir(self, group_id: str, deployment_id: str) -> Path:
        return self.group_dir(group_id) / _component(deployment_id)

    @staticmethod
    def archive_dir(deployment_dir: Path) -> Path:
        return deployment_dir / "deployment-archive"

    @staticmethod
    def bundle_path(deployment_dir: Path) -> Path:
        return deployment_dir / "bundle.tar.gz"

    @staticmethod
    def script_log_path(deployment_dir: Path) -> Path:
        return deployment_dir / "logs" / "scripts.log"

    def ensure_deployment_dir(self, group_id: str, deployment_id: str, spec: object) -> Path:
        """The deployment's directory, created with its ``deployment.json`` (its creation time orders retention)."""
        path = self.deployment_dir(group_id, deployment_id)
        (path / "logs").mkdir(parents=True, exist_ok=True)
        record = path / "deployment.json"
        if not record.exists():
            _write_atomic(record, json.dumps(spec, sort_keys=True, default=str))
        return path

    # --- install records (§4.5) ---------------------------------------------------------------------------------

    def cleanup_file(self, group_id: str) -> Path:
        return self._instructions / f"{_component(group_id)}-cleanup"

    def last_successful_install(self, group_id: str) -> Path | None:
        return self._read_record(group_id, "last_successful_install")

    def most_recent_install(self, group_id: str) -> Path | None:
        return self._read_record(group_id, "most_recent_install")

    def record_last_successful_install(self, group_id: str, deployment_dir: Path) -> None:
        self._write_record(group_id, "last_successful_install", deployment_dir)

    def record_most_recent_install(self, group_id: str, deployment_dir: Path) -> None:
        self._write_record(group_id, "most_recent_install", deployment_dir)

    def _record_path(self, group_id: str, kind: str) -> Path:
        return self._instructions / f"{_component(group_id)}_{kind}"

    def _read_record(self, group_id: str, kind: str) -> Path | None:
        """The deployment directory a record names, when it is still there. A record is a link to it (see
        ``_write_record``); one written by an agent before that is a file holding its path below ``deployments``."""
        record = self._record_path(group_id, kind)
        try:
            relative = os.path.relpath(os.path.join(self._instructions, os.readlink(record)), self.root / "deployments")
        except FileNotFoundError:
            return None
        except OSError:  # not a link: an older agent's file
            try:
                relative = record.read_text().strip()
            except OSError:
                return None
        if not relative or relative.startswith(".."):
            return None
        path = self.root / "deployments" / relative
        return path if path.is_dir() else None

    def _write_record(self, group_id: str, kind: str, deployment_dir: Path) -> None:
        """A link to ``deployment_dir`` (relative: the root may move), put in place by a rename, so a reader sees the
        old record or the new one. Not a file written and renamed: replacing a file by a rename makes ext4 write the
        new file's data out at once (``auto_da_alloc``), which took 0.3-0.5 ms of each DownloadBundle and Install."""
        target = os.path.relpath(deployment_dir, self._instructions)
        try:
            _link_atomic(self._record_path(group_id, kind), target)
        except FileNotFoundError:  # the first install on this host
            self._instructions.mkdir(parents=True, exist_ok=True)
            _link_atomic(self._record_path(group_id, kind), target)

    # --- retention ----------------------------------------------------------------------------------------------

    def prune_revisions(self, group_id: str, current: Path, keep: int = KEPT_REVISIONS) -> list[Path]:
        """Delete a group's oldest deployment directories beyond ``keep`` besides ``current``.

        The last successful and most recent installs are never deleted (hooks of later deployments run them).
        """
        protected = {current, self.last_successful_install(group_id), self.most_recent_install(group_id)}
        group = self.group_dir(group_id)
        if not group.is_dir():
            return []
        others = [path for path in group.iterdir() if path.is_dir() and path not in protected]
        others.sort(key=_created_at, reverse=True)
        removed = others[keep:]
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        return removed

    # --- crash tracking (§8) ------------------------------------------------------------------------------------

    def mark_ongoing(self, command: OngoingCommand, *, result: ResultBody | None = None) -> None:
        """Record a command as running, or (with ``result``) as run but not yet reported: one line appended to the
        journal (see ``ongoing``). A command handed out again starts afresh: its new start line drops what an
        earlier one had recorded."""
        if result is None:
            self._check_journal()
            self._started.add(command.command_id)
            self._commands[command.command_id] = command
            self._append(command.command_id, _START, _start_body(command))
            return
        result_line = _line(command.command_id, _RESULT, json.dumps(dict(result)))
        self._write(self._start_again(command.command_id, command) + result_line)

    def mark_group(self, command_id: int, group: HookGroup | None) -> None:
        """Record the process group of the script ``command_id`` runs now, or (None) that no script of it runs: one
        journal line, ``<id> group {"pgid", "start_time"}`` or ``<id> group null``; the last one counts.

        It is what an agent restarted after a crash signals, so a torn line must read as none rather than as another
        group: a JSON object cut short is not one, and reads as none.
        """
        body = "null" if group is None else json.dumps({"pgid": group.pgid, "start_time": group.start_time})
        self._check_journal()
        self._write(self._start_again(command_id, self._commands.get(command_id)) + _line(command_id, _GROUP, body))

    def _start_again(self, command_id: int, command: OngoingCommand | None) -> bytes:
        """The start line a record of ``command_id`` must follow when the journal was lost since its start (a later
        line of a command with no start is not read); nothing when its start is there, or is not known."""
        if command_id in self._started or command is None:
            return b""
        self._started.add(command_id)
        return _line(command_id, _START, _start_body(command))

    def clear_ongoing(self, command_id: int) -> None:
        """Forget a command's records (its result was accepted). Once no command is left open, the journal is
        emptied (one truncate, never a rewrite), so it holds at most the commands of one run of the agent."""
        if command_id in self._grouped:
            self._grouped.discard(command_id)
            (self._ongoing / f"{command_id}.group").unlink(missing_ok=True)
        if command_id in self._legacy:
            self._legacy.discard(command_id)
            for suffix in ("", ".result", ".group"):
                (self._ongoing / f"{command_id}{suffix}").unlink(missing_ok=True)
        self._commands.pop(command_id, None)
        if command_id not in self._started:
            return
        self._started.discard(command_id)
        if self._started:
            self._write(_line(command_id, _DONE, ""))
        else:
            self._truncate()

    def ongoing(self) -> list[OngoingCommand]:
        """Commands left running by a previous agent process, from the journal ``ongoing-command/journal``.

        One line per fact, appended as it happens: ``<id> start {deployment_id, event, started_at}``, ``<id> result
        {ResultBody}``, ``<id> done``. A command started and not done is reported: with its result if one was
        recorded, else as cut short (code 7). A line torn by a kill mid-write reads as what it could not finish: a
        start whose JSON is cut short still names its command (reported with code 7, its event unknown), a torn
        result as no result (code 7), a torn ``done`` as not done (the result is sent again; the server takes a
        result once), and ``<id> group {"pgid", "start_time"}`` or ``<id> group null`` for the script it runs (the last
        such line counts; a torn one reads as none). Records of agents before the journal (``<id>``, ``<id>.result``
        and ``<id>.group`` files) are read too."""
        if not self._ongoing.is_dir():
            return []
        found: dict[int, OngoingCommand] = {}
        journal = self._ongoing / JOURNAL
        for command_id, kind, payload in _journal_lines(journal):
            if kind == _START:
                body = _parse_object(payload)
                found[command_id] = OngoingCommand(
                    command_id=command_id,
                    deployment_id=str(body.get("deployment_id", "")),
                    event=str(body.get("event", "")),
                    started_at=_number(body.get("started_at"), journal.stat().st_mtime),
                )
            elif kind == _RESULT and command_id in found:
                result = _parse_object(payload)
                found[command_id] = replace(found[command_id], result=result or None)
            elif kind == _GROUP and command_id in found:
                found[command_id] = replace(found[command_id], group=_group_in(_parse_object(payload)))
            elif kind == _DONE:
                found.pop(command_id, None)
        journaled = set(found)
        for path in sorted(self._ongoing.iterdir()):  # an older agent's records: one file per command
            if path.name.isascii() and path.name.isdigit():
                self._legacy.add(int(path.name))  # removed with the command, whichever record reports it
                found.setdefault(int(path.name), _legacy_record(path))
        self._started.update(journaled)
        commands = []
        for command_id, command in found.items():
            group = _read_group(self._ongoing / f"{command_id}.group")  # an older agent's record
            if group is not None:
                self._grouped.add(command_id)
                command = replace(command, group=group)
            commands.append(command)
        return commands

    # --- the journal --------------------------------------------------------------------------------------------

    def _append(self, command_id: int, kind: str, body: str) -> None:
        self._write(_line(command_id, kind, body))

    def _write(self, data: bytes) -> None:
        """Append ``data`` (whole lines) with one write on the journal kept open: no file is created per event."""
        os.write(self._journal_fd(), data)

    def _journal_fd(self) -> int:
        if self._journal is None:
            self._ongoing.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._ongoing / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            size = os.fstat(fd).st_size
            self._journal = fd
            if size and _last_byte(self._ongoing / JOURNAL, size) != b"\n":
                os.write(fd, b"\n")  # a line torn by a kill ends here: the next one must not be glued to it
        return self._journal

    def _check_journal(self) -> None:
        """Reopen the journal when its file was removed under us (else the records would go to a deleted file)."""
        if self._journal is not None and os.fstat(self._journal).st_nlink == 0:
            os.close(self._journal)
            self._journal = None
            self._started.clear()

    def _truncate(self) -> None:
        os.ftruncate(self._journal_fd(), 0)

    def close(self) -> None:
        """Close the journal (it is reopened when written again)."""
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None


JOURNAL = "journal"
"""The crash-record journal in ``ongoing-command/`` (see ``AgentLayout.ongoing``)."""
_START, _RESULT, _GROUP, _DONE = "start", "result", "group", "done"


def _line(command_id: int, kind: str, body: str) -> bytes:
    return f"{command_id} {kind} {body}\n".encode()


def _start_body(command: OngoingCommand) -> str:
    body = {"deployment_id": command.deployment_id, "event": command.event, "started_at": command.started_at}
    return json.dumps(body)


def _journal_lines(path: Path) -> list[tuple[int, str, str]]:
    """``(command id, kind, payload)`` of each line of the journal that names both; a torn last line included (its
    payload is then cut short, which its reader sees)."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return []
    lines = []
    for line in text.split("\n"):
        head, _, payload = line.partition(" ")
        kind, sep, payload = payload.partition(" ")
        if head.isascii() and head.isdigit() and (sep or kind == _DONE) and kind in (_START, _RESULT, _GROUP, _DONE):
            lines.append((int(head), kind, payload))
    return lines


def _last_byte(path: Path, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, 1, size - 1)
    finally:
        os.close(fd)


def _parse_object(text: str) -> dict[str, Any]:
    """The JSON object ``text``; empty when it is cut short or not an object."""
    try:
        body = json.loads(text)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _number(value: object, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _legacy_record(path: Path) -> OngoingCommand:
    """An ``<id>`` record of an agent before the journal, its result in ``<id>.result`` or (older still) in it."""
    body = _read_object(path)
    result = _read_object(path.with_name(f"{path.name}.result")) or body.get("result")
    return OngoingCommand(
        command_id=int(path.name),
        deployment_id=str(body.get("deployment_id", "")),
        event=str(body.get("event", "")),
        started_at=_number(body.get("started_at"), path.stat().st_mtime),
        result=result if isinstance(result, dict) and result else None,
    )


def _read_group(path: Path) -> HookGroup | None:
    """The process group recorded in the file ``path`` (an older agent's); None when there is none."""
    return _group_in(_read_object(path))


def _group_in(body: Mapping[str, Any]) -> HookGroup | None:
    """The process group a record holds; None when it holds none or not one (never guess a pid)."""
    pgid, start_time = body.get("pgid"), body.get("start_time")
    if type(pgid) is not int or type(start_time) is not int or pgid <= 1:
        return None
    return HookGroup(pgid, start_time)


def _read_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; empty when it is missing, cut short or not an object."""
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _created_at(path: Path) -> float:
    try:
        return (path / "deployment.json").stat().st_mtime
    except OSError:
        return path.stat().st_mtime


def _write_atomic(path: Path, text: str) -> None:
    """Write-then-rename, so a killed agent never leaves a half-written record (no fsync: the host is not the risk).

    Plain ``os`` calls rather than ``Path.write_text``: the agent writes such records twice per command, and a text
    file object costs more than the write itself.
    """
    target = os.fspath(path)
    partial = _partial_beside(target)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(partial, target)


def _link_atomic(path: Path, target: str) -> None:
    """Make ``path`` a symbolic link to ``target``, replacing whatever was there with one rename."""
    partial = _partial_beside(os.fspath(path))
    os.symlink(target, partial)
    try:
        os.replace(partial, path)
    except OSError:
        os.unlink(partial)
        raise


def _partial_beside(path: str) -> str:
    """A name in ``path``'s directory for what is renamed onto it: hidden, and this process's alone."""
    head, name = os.path.split(path)
    return os.path.join(head, f".{name}.{os.getpid()}.{time.monotonic_ns()}")
