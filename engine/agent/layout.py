"""The agent's on-disk layout: deployment directories, install records, revision retention, crash tracking (I/O).

    <root>/deployments/<group-id>/<deployment-id>/deployment.json     the command spec, written once
                                                 /bundle.tar.gz       the downloaded canonical bundle
                                                 /deployment-archive/ the extracted revision
                                                 /logs/scripts.log    hook output (see output.py)
    <root>/deployment-instructions/<group-id>-cleanup                 what the last Install created (§1.3)
    <root>/deployment-instructions/<group-id>_last_successful_install <group-id>/<deployment-id>, end of Install
    <root>/deployment-instructions/<group-id>_most_recent_install     <group-id>/<deployment-id>, end of Download
    <root>/ongoing-command/<command-id>                               a command being run (crash recovery, §8)
    <root>/ongoing-command/<command-id>.result                        its result until the server has it
    <root>/ongoing-command/<command-id>.group                         the process group of its running script

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
from dataclasses import dataclass
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
        self._ongoing_made = False  # made once: a mkdir of an existing directory raises and catches an error

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
        try:
            relative = self._record_path(group_id, kind).read_text().strip()
        except FileNotFoundError:
            return None
        path = self.root / "deployments" / relative
        return path if relative and path.is_dir() else None

    def _write_record(self, group_id: str, kind: str, deployment_dir: Path) -> None:
        relative = deployment_dir.relative_to(self.root / "deployments").as_posix()
        self._instructions.mkdir(parents=True, exist_ok=True)
        _write_atomic(self._record_path(group_id, kind), relative + "\n")

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
        """Record a command as running, or (with ``result``) as run but not yet reported.

        Two fresh files per command, ``<id>`` then ``<id>.result``, each written once and never replaced: replacing
        a file (rename over it, or truncate and rewrite) costs the filesystem several times more, and an agent does
        this for every lifecycle event. Neither needs to be atomic: a record cut short by a kill reads as "no
        result", which is what a kill a moment earlier would have left, and is reported as code 7 all the same.
        """
        try:
            self._mark_ongoing(command, result)
        except FileNotFoundError:  # the directory was removed under us: make it again
            self._ongoing_made = False
            self._mark_ongoing(command, result)

    def _mark_ongoing(self, command: OngoingCommand, result: ResultBody | None) -> None:
        if not self._ongoing_made:
            self._ongoing.mkdir(parents=True, exist_ok=True)
            self._ongoing_made = True
        name = str(command.command_id)
        if result is not None:
            _write_fresh(self._ongoing / f"{name}.result", json.dumps(dict(result)))
            if (self._ongoing / name).exists():
                return
        body = {
            "command_id": command.command_id,
            "deployment_id": command.deployment_id,
            "event": command.event,
            "started_at": command.started_at,
            "result": None,
        }
        if result is None:  # a command handed out again starts afresh
            (self._ongoing / f"{name}.result").unlink(missing_ok=True)
        _write_fresh(self._ongoing / name, json.dumps(body))

    def mark_group(self, command_id: int, group: HookGroup | None) -> None:
        """Record the process group of the script ``command_id`` runs now, or (None) that no script of it runs.

        Written whole (write-then-rename): it is what an agent restarted after a crash signals, so a torn record
        must read as none rather than as another group. Once per script, not per event.
        """
        path = self._ongoing / f"{command_id}.group"
        if group is None:
            path.unlink(missing_ok=True)
            return
        text = json.dumps({"pgid": group.pgid, "start_time": group.start_time})
        try:
            _write_atomic(path, text)
        except FileNotFoundError:  # the directory was removed under us: make it again
            self._ongoing.mkdir(parents=True, exist_ok=True)
            self._ongoing_made = True
            _write_atomic(path, text)

    def clear_ongoing(self, command_id: int) -> None:
        (self._ongoing / f"{command_id}.result").unlink(missing_ok=True)
        (self._ongoing / f"{command_id}.group").unlink(missing_ok=True)
        (self._ongoing / str(command_id)).unlink(missing_ok=True)

    def ongoing(self) -> list[OngoingCommand]:
        """Commands left running by a previous agent process (unreadable records are named by their file).

        The result is read from ``<id>.result``, or from the record itself as agents before it wrote it there; the
        running script's process group from ``<id>.group``."""
        if not self._ongoing.is_dir():
            return []
        found = []
        for path in sorted(self._ongoing.iterdir()):
            if not path.name.isdigit():
                continue
            body = _read_object(path)
            result = _read_object(path.with_name(f"{path.name}.result")) or body.get("result")
            found.append(
                OngoingCommand(
                    command_id=int(path.name),
                    deployment_id=str(body.get("deployment_id", "")),
                    event=str(body.get("event", "")),
                    started_at=float(body.get("started_at", path.stat().st_mtime)),
                    result=result if isinstance(result, dict) and result else None,
                    group=_read_group(path.with_name(f"{path.name}.group")),
                )
            )
        return found


def _read_group(path: Path) -> HookGroup | None:
    """The process group recorded in ``path``; None when there is none or it is not one (never guess a pid)."""
    body = _read_object(path)
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
    head, name = os.path.split(target)
    partial = os.path.join(head, f".{name}.{os.getpid()}.{time.monotonic_ns()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(partial, target)


def _write_fresh(path: Path, text: str) -> None:
    """Create (or truncate) ``path`` and write ``text``: not atomic, for records whose torn state is harmless."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
