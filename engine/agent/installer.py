"""The Install event: undo the previous install, copy the revision's ``files``, set ``permissions`` (I/O, §1.3, §1.4).

Theory of operation:
  1. Replay ``<group-id>-cleanup`` in reverse: files and links are removed, directories only when empty, missing
     paths ignored, a last line cut short dropped.
  2. Plan every mkdir and copy before touching anything, so conflicts (two sources onto one file, a file onto a
     planned directory, DISALLOW over an existing file) fail the event with nothing copied.
  3. Execute the plan, appending each created path to the new cleanup record as it happens (a crash mid-install
     still leaves an accurate record). RETAINed files are not recorded, as in the agent (§10.4).
  4. Apply permissions to this install's copies and created directories: chmod, setfacl, SELinux context, chown.
     Never through a link: a link in a permissions entry is left as it is, and so is its target (CodeDeploy's
     agent changes the target).

Step 1 is engine/agent/cleanup.py's: there, the previous install's directories that this one makes again are kept.

``prefix`` (deploybot's extension for simulated fleets on one machine) maps every absolute ``destination`` and
permission ``object`` under a directory, so two local hosts never write the same paths.

Containment (checked while planning, so a refusal leaves nothing copied): under a ``prefix``, every destination
and every path the plan creates must resolve, links followed, inside the prefix (``destination: /../..`` is
refused, not mapped above it). A link from the revision is copied as a link only when what it points to, resolved
where it lands, stays inside its mapping's destination; otherwise the install is refused (code 5, naming it).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from engine.agent.cleanup import CleanupRecord, PreviousInstall
from engine.agent.hooks import is_inside
from engine.core.appspec import Permission, ServerAppSpec
from engine.core.errors import EngineError

FILE_EXISTS_BEHAVIORS = ("DISALLOW", "OVERWRITE", "RETAIN")


class InstallError(EngineError):
    """The Install event cannot go on; ``path`` names the file or directory concerned."""

    def __init__(self, reason: str, path: str | Path = "") -> None:
        self.reason = reason
        self.path = str(path)
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class InstallReport:
    copied: tuple[Path, ...]
    created_dirs: tuple[Path, ...]
    retained: tuple[Path, ...]
    permissions_set: int
    cleaned_up: int

    def summary(self) -> str:
        return (
            f"removed {self.cleaned_up} path(s) of the previous install; copied {len(self.copied)} file(s), "
            f"created {len(self.created_dirs)} directorie(s), retained {len(self.retained)}; "
            f"set permissions on {self.permissions_set} path(s)"
        )


def map_destination(path: str, prefix: Path | None) -> Path:
    """Where an AppSpec path lands on this host: under ``prefix`` when one is set and the path is absolute."""
    if prefix is not None and os.path.isabs(path):
        return Path(os.path.normpath(os.path.join(prefix, path.lstrip("/"))))
    return Path(os.path.abspath(path))


@dataclass
class _Plan:
    prefix: Path | None = None
    """Under a prefix, everything planned must resolve inside it."""
    previous: PreviousInstall = field(default_factory=PreviousInstall)
    """The previous install's directories still there but gone as far as the plan goes."""
    steps: list[tuple[Path, Path | None]] = field(default_factory=list)  # (target, source or None for mkdir)
    mkdirs: set[Path] = field(default_factory=set)
    copies: dict[Path, Path] = field(default_factory=dict)
    _real: dict[str, str] = field(default_factory=dict)
    _prefix_and_parents: frozenset[Path] = frozenset()
    """The prefix and its parents, which the plan may make without a containment check (a prefix is made where
    the host's files go the first time)."""

    def __post_init__(self) -> None:
        if self.prefix is not None:
            prefix = Path(os.path.abspath(self.prefix))
            self._prefix_and_parents = frozenset((prefix, *prefix.parents))

    def real(self, path: str | Path) -> str:
        """``os.path.realpath(path)``, built from its directory's, which is remembered for the rest of the plan.

        Planning changes nothing on disk, and the paths it checks share most of their directories: resolved one by
        one, each cost a lstat per component (an install of two files did 213 of them, three quarters of its time).
        """
        key = os.fspath(path)
        found = self._real.get(key)
        if found is None:
            head, name = os.path.split(key)
            if name in ("", ".", "..") or not head:
                found = os.path.realpath(key)
            else:
                joined = os.path.join(self.real(head), name)
                found = os.path.realpath(joined) if os.path.islink(joined) else joined
            self._real[key] = found
        return found

    def resolved(self, path: Path) -> str:
        """Where ``path`` would be written: its directory with every existing link resolved, then its own name (a
        link at ``path`` itself is replaced, never written through)."""
        return os.path.join(self.real(path.parent), path.name)

    def contain(self, path: Path, what: str, *, follow: bool = False) -> None:
        """Refuse ``path`` (``what`` names it in the AppSpec's terms) when it resolves outside the prefix.

        ``follow``: ``path`` is a directory written into, so a link there is followed too."""
        if self.prefix is None:
            return
        resolved = self.real(path) if follow else self.resolved(path)
        if not is_inside(resolved, self.real(self.prefix)):
            raise InstallError(
                f"{what} resolves to {resolved}, outside this host's prefix ({self.prefix}): refused, nothing "
                "was installed",
                path,
            )

    def mkdir(self, path: Path) -> None:
        if path not in self._prefix_and_parents:
            self.contain(path, f"the directory {path}")
        if path in self.copies:
            raise InstallError(
                f"The deployment failed because the application specification file calls for creating the "
                f"directory {path}, but it also installs a file there.",
                path,
            )
        if path not in self.mkdirs and not self.is_dir(path):
            self.mkdirs.add(path)
            self.steps.append((path, None))

    def is_dir(self, path: Path) -> bool:
        return not self.previous.gone(path) and os.path.isdir(path)

    def exists(self, path: Path) -> bool:
        return not self.previous.gone(path) and os.path.lexists(path)

    def mkdir_parents(self, path: Path) -> None:
        missing = []
        parent = path
        while not self.is_dir(parent) and parent not in missing:  # (the root is its own parent)
            missing.append(parent)
            parent = parent.parent
        for parent in reversed(missing):
            self.mkdir(parent)

    def copy(self, source: Path, target: Path) -> None:
        self.contain(target, f"the file {target}")
        other = self.copies.get(target)
        if other is not None and other != source:
            raise InstallError(
                f"The deployment failed because the application specification file specifies two source files "
                f"named {other} and {source} for the same destination ({target}).",
                target,
            )
        if target in self.mkdirs:
            raise InstallError(
                f"The deployment failed because the application specification file calls for installing the file "
                f"{source}, but a file with that name already exists at the location ({target}).",
                target,
            )
        if other is None:
            self.copies[target] = source
            self.steps.append((target, source))


def install(
    spec: ServerAppSpec,
    *,
    archive_dir: Path,
    cleanup_file: Path,
    file_exists_behavior: str = "DISALLOW",
    prefix: Path | None = None,
) -> InstallReport:
    """Run the Install event for ``spec``, whose revision is unpacked in ``archive_dir``.

    Raises:
        InstallError: a conflict, an existing file under DISALLOW, a missing source, or a permission that cannot
            be applied. What was copied before the error is in the cleanup record.
    """
    behavior = spec.file_exists_behavior or file_exists_behavior or "DISALLOW"
    if behavior not in FILE_EXISTS_BEHAVIORS:
        raise InstallError(
            f"The deployment failed because an invalid option was specified for fileExistsBehavior: {behavior}. "
            "Valid options include OVERWRITE, RETAIN, and DISALLOW."
        )
    previous = PreviousInstall.undo(cleanup_file, keep_dirs=True)
    cleanup_file.unlink(missing_ok=True)
    copied: list[Path] = []
    created: list[Path] = []
    retained: list[Path] = []
    cleanup_file.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    with open(os.open(cleanup_file, flags, 0o600), "a") as record:
        recorded = CleanupRecord(record, list(reversed(previous.waiting)))  # (parents first, as they were made)
        planned = False  # once True, something of this install may be on the host
        try:
            plan = _plan(spec, archive_dir, prefix, previous)
            if behavior == "DISALLOW":
                for target in plan.copies:
                    if plan.exists(target):
                        raise InstallError(
                            f"The deployment failed because a specified file already exists at this location: {target}",
                            target,
                        )
            planned = True
            for target, source in plan.steps:
                if source is None:
                    if previous.gone(target) and previous.reuse(target):
                        created.append(target)  # recorded already
                    elif _make_dir(target):
                        recorded.add(target)
                        created.append(target)
                elif _copy(source, target, behavior, previous):
                    recorded.add(target)
                    copied.append(target)
                else:
                    retained.append(target)
            count = _apply_permissions(spec.permissions, copied, created, prefix)
        finally:
            previous.finish()
            if not planned:
                cleanup_file.unlink()  # refused before anything was made: nothing of it to undo
            elif gone := recorded.gone(previous.kept):
                recorded.write_anew(cleanup_file, gone)
    return InstallReport(tuple(copied), tuple(created), tuple(retained), count, previous.undone)


def _plan(spec: ServerAppSpec, archive_dir: Path, prefix: Path | None, previous: PreviousInstall) -> _Plan:
    plan = _Plan(prefix, previous)
    real_archive = plan.real(archive_dir)
    for mapping in spec.files:
        source = Path(os.path.normpath(os.path.join(archive_dir, mapping.source.lstrip("/"))))
        if not is_inside(plan.real(source), real_archive):
            raise InstallError(f"the files source {mapping.source} is outside the revision", mapping.source)
        destination = map_destination(mapping.destination, prefix)
        plan.contain(destination, f"the files destination {mapping.destination}", follow=True)
        if source.is_dir():
            plan.mkdir_parents(destination)
            _plan_tree(plan, source, destination)
        elif os.path.lexists(source):
            plan.mkdir_parents(destination)
            _plan_entry(plan, source, destination / source.name, destination)
        else:
            raise InstallError(f"the files source {mapping.source} does not exist in the revision", source)
    return plan


def _plan_tree(plan: _Plan, source: Path, destination: Path) -> None:
    """Contents of ``source`` (not the directory itself) into ``destination``; links are copied as links."""
    for dirpath, dirnames, filenames in os.walk(source):
        base = Path(dirpath)
        relative = base.relative_to(source)
        dirnames.sort()
        links = [name for name in dirnames if (base / name).is_symlink()]
        dirnames[:] = [name for name in dirnames if name not in links]
        for name in dirnames:
            plan.mkdir(destination / relative / name)
        for name in sorted([*filenames, *links]):
            _plan_entry(plan, base / name, destination / relative / name, destination)


def _plan_entry(plan: _Plan, source: Path, target: Path, destination: Path) -> None:
    """One file or link; a link only when it points, from where it lands, inside its mapping's destination."""
    if os.path.islink(source):
        text = os.readlink(source)
        pointed = os.path.realpath(os.path.join(target.parent, text))
        if os.path.isabs(text) or not is_inside(pointed, plan.real(destination)):
            raise InstallError(
                f"the link {target} -> {text} would point to {pointed}, outside its destination ({destination}): "
                "refused, nothing was installed",
                target,
            )
    plan.copy(source, target)


def _make_dir(path: Path) -> bool:
    """Make a directory of the plan; False when it is there already (made before, or since the plan by someone else:
    local hosts share their prefixes' parent), and so not this install's."""
    try:
        os.mkdir(path)
    except FileExistsError:
        if os.path.isdir(path):
            return False
        raise InstallError(f"cannot create the directory {path}: a file exists there", path) from None
    return True


def _copy(source: Path, target: Path, behavior: str, previous: PreviousInstall) -> bool:
    """Copy one file or link; False when an existing file was retained."""
    if previous.gone(target):
        previous.remove_under(target)  # the previous install's directory, where this one puts a file
    if os.path.lexists(target):
        if os.path.isdir(target) and not os.path.islink(target):
            raise InstallError(f"cannot install the file {source}: a directory exists at {target}", target)
        if behavior == "DISALLOW":
            raise InstallError(
                f"The deployment failed because a specified file already exists at this location: {target}", target
            )
        if behavior == "RETAIN":
            return False
        os.unlink(target)
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
    else:
        shutil.copy2(source, target)
    return True


# --- permissions ------------------------------------------------------------------------------------------------


def _glob(name: str, pattern: str) -> bool:
    """The agent's simple glob: only ``*`` is special."""
    return re.fullmatch(".*".join(re.escape(part) for part in pattern.split("*")), name, re.DOTALL) is not None


def _matches(permission: Permission, obj: Path, path: Path) -> bool:
    base = str(obj).rstrip("/") + "/"
    name = str(path)
    if not name.startswith(base):
        return False
    remaining = name[len(base) :]
    immediate = "/" not in remaining
    if any(immediate and _glob(remaining, item) for item in permission.except_):
        return False
    return permission.pattern == "**" or (immediate and _glob(remaining, permission.pattern))


def _apply_permissions(
    permissions: tuple[Permission, ...], copied: list[Path], created: list[Path], prefix: Path | None
) -> int:
    copied_set = set(copied)
    assigned: dict[Path, Permission] = {}
    for permission in permissions:
        obj = map_destination(permission.object, prefix)
        targets: list[Path] = []
        if obj in copied_set:
            if "file" in permission.types:
                if permission.pattern != "**":
                    raise InstallError(
                        f"The deployment failed because the permissions section includes an object ({obj}) with an "
                        f"invalid pattern ({permission.pattern}), such as a pattern for a file applied to a directory.",
                        obj,
                    )
                if permission.except_:
                    raise InstallError(
                        f"The deployment failed because the except parameter ({list(permission.except_)}) for the "
                        f"object named {obj} contains an invalid format: except applies to directories only.",
                        obj,
                    )
                if any(_is_default_acl(entry) for entry in permission.acls):
                    raise InstallError(
                        f"The deployment failed because the -d parameter has been specified to apply an acl setting "
                        f"to a file ({obj}). This parameter is supported for directories only.",
                        obj,
                    )
                targets.append(obj)
        else:
            if "file" in permission.types:
                targets += [path for path in copied if _matches(permission, obj, path)]
            if "directory" in permission.types:
                targets += [path for path in created if _matches(permission, obj, path)]
        for target in targets:
            if os.path.islink(target):
                continue  # neither the link nor what it points to (see the module docstring)
            if target in assigned:
                raise InstallError(
                    f"The deployment failed because the permissions setting for ({target}) is specified more than "
                    "once in the application specification file.",
                    target,
                )
            assigned[target] = permission
    for target, permission in assigned.items():
        _set_permissions(target, permission)
    return len(assigned)


def _is_default_acl(entry: str) -> bool:
    return entry.startswith(("d:", "default:"))


def _set_permissions(path: Path, permission: Permission) -> None:
    """chmod, setfacl, SELinux context, chown: the agent's order. ``path`` is never a link (see the caller)."""
    if permission.mode is not None:
        os.chmod(path, int(permission.mode, 8))
    if permission.acls:
        _set_acls(path, permission.acls)
    if permission.context is not None:
        _set_context(path, permission)
    if permission.owner is not None or permission.group is not None:
        uid = _uid(permission.owner, path) if permission.owner is not None else -1
        gid = _gid(permission.group, path) if permission.group is not None else -1
        os.chown(path, uid, gid, follow_symlinks=False)


def _uid(name: str, path: Path) -> int:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise InstallError(f"cannot set the owner of {path}: no user named {name!r} on this host", path) from None


def _gid(name: str, path: Path) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise InstallError(f"cannot set the group of {path}: no group named {name!r} on this host", path) from None


def _set_acls(path: Path, acls: tuple[str, ...]) -> None:
    if shutil.which("setfacl") is None:
        raise InstallError(
            f"cannot set the acls of {path}: the setfacl command is not installed on this host (package 'acl')", path
        )
    mode = os.stat(path).st_mode
    base = [f"u::{_rwx(mode >> 6)}", f"g::{_rwx(mode >> 3)}", f"o::{_rwx(mode)}"]
    _run_tool(["setfacl", "--set", ",".join([*base, *acls]), str(path)], path)


def _rwx(bits: int) -> str:
    return "".join(flag if bits & mask else "-" for flag, mask in (("r", 4), ("w", 2), ("x", 1)))


def _set_context(path: Path, permission: Permission) -> None:
    context = permission.context
    assert context is not None
    missing = [tool for tool in ("semanage", "restorecon") if shutil.which(tool) is None]
    if missing:
        raise InstallError(
            f"cannot set the SELinux context of {path}: {' and '.join(missing)} not installed on this host", path
        )
    command = ["semanage", "fcontext", "-a", "-t", context.type]
    if context.name:
        command += ["-s", context.name]
    if context.range:
        command += ["-r", context.range]
    _run_tool([*command, str(path)], path)
    _run_tool(["restorecon", "-v", str(path)], path)


def _run_tool(command: list[str], path: Path) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = done.stderr.strip() or f"exit code {done.returncode}"
        raise InstallError(f"{command[0]} failed for {path}: {detail}", path)
