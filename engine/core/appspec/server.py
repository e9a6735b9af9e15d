"""The server platform's AppSpec sections (pure): os, files, hook scripts, file_exists_behavior.

The agent reads these files, so the rules follow its code and its error wording (reference §0, §10): whatever it
would refuse at Install is refused here first, before any host is touched. Permissions have their own module,
engine.core.appspec.permissions.
"""

from __future__ import annotations

import ntpath
import posixpath
import re

from yaml.nodes import Node

from engine.core.appspec.model import (
    FAILED,
    FILE_EXISTS_BEHAVIORS,
    MAX_EVENT_SECONDS,
    SERVER_HOOK_EVENTS,
    SERVER_RESERVED_EVENTS,
    AppSpecReader,
    FileMapping,
    HookScript,
    ServerAppSpec,
    check_version,
    spelling_hint,
)
from engine.core.appspec.permissions import parse_permissions
from engine.core.model import LifecycleEvent
from engine.core.yamlnode import Entry, as_written, is_null

_NO_LOCATION = (
    f"{FAILED} the application specification file specifies a script with no location value. "
    "Specify the location in the hooks section of the AppSpec file, and then try again."
)
_BAD_TIMEOUT = (
    f"{FAILED} an invalid timeout value was provided for a script in the application specification file. "
    "Make corrections in the hooks section of the AppSpec file, and then try again."
)
_NO_SOURCE = (
    f"{FAILED} the application specification file specifies a destination file, but no source file. "
    "Update the files section of the AppSpec file, and then try again."
)
_NOT_SERVER = " (it belongs to Lambda and ECS AppSpec files: validate this file with platform lambda or ecs)"
_SERVER_KEYS = ("version", "os", "files", "permissions", "hooks", "file_exists_behavior")
_SCRIPT_KEYS = ("location", "timeout", "runas", "sudo")
_SCRIPT_HINTS = {key: " (the user a script runs as is given with 'runas')" for key in ("user", "run_as", "runas")}


def parse_server(reader: AppSpecReader, root: Node) -> ServerAppSpec | None:
    """A server AppSpec from its root node; None (with the problems reported) when it has no usable top level."""
    hints = {"resources": _NOT_SERVER}
    top = reader.known_keys(root, _SERVER_KEYS, "the AppSpec file", hints=hints)
    if top is None:
        return None
    check_version(reader, root, top.get("version"))
    os_name = _server_os(reader, root, top.get("os"))
    hooks = _server_hooks(reader, top["hooks"].value) if "hooks" in top else {}
    files = _files(reader, top["files"].value, os_name) if "files" in top else ()
    permissions = parse_permissions(reader, top["permissions"], os_name) if "permissions" in top else ()
    behavior = None
    if "file_exists_behavior" in top:
        behavior = _file_exists_behavior(reader, top["file_exists_behavior"].value)
    return ServerAppSpec(os_name or "", files, permissions, hooks, behavior)


def _server_os(reader: AppSpecReader, root: Node, entry: Entry | None) -> str | None:
    message = (
        f"{FAILED} the application specification file specifies an unsupported operating system ({{}}). "
        'Specify either "linux" or "windows" in the os section of the AppSpec file, and then try again.'
    )
    if entry is None:
        reader.report(root, message.format("") + " Add `os: linux` (or `os: windows`).")
        return None
    value = reader.value(entry.value)
    if value in ("linux", "windows"):
        return str(value)
    fix = ""
    if isinstance(value, str) and value.strip().lower() in ("linux", "windows"):
        fix = f" The name is case-sensitive: write `os: {value.strip().lower()}`."
    reader.report(entry.value, message.format(as_written(entry.value)) + fix)
    return None


def _server_hooks(reader: AppSpecReader, node: Node) -> dict[LifecycleEvent, tuple[HookScript, ...]]:
    hooks: dict[LifecycleEvent, tuple[HookScript, ...]] = {}
    if is_null(node):
        return hooks
    allowed = ", ".join(SERVER_HOOK_EVENTS)
    for name, key, value in reader.mapping(node, "hooks") or ():
        event = next((e for e in SERVER_HOOK_EVENTS if e.value == name), None)
        if event is None:
            if name in SERVER_RESERVED_EVENTS:
                why = f"{name} is run by CodeDeploy itself and cannot run scripts"
            else:
                why = f"unknown lifecycle event {name!r}{spelling_hint(name, SERVER_HOOK_EVENTS)}"
            reader.report(key, f"{why}; hooks can run at: {allowed}")
        scripts = _scripts(reader, name, key, value)
        if event is not None and scripts:
            hooks[event] = scripts
    return hooks


def _scripts(reader: AppSpecReader, event: str, key: Node, node: Node) -> tuple[HookScript, ...]:
    """One event's scripts; their explicit timeouts may add up to at most an hour (docs; AA)."""
    example = f"'- location: scripts/{event.lower()}.sh'"
    scripts: list[HookScript] = []
    total = 0
    for item in reader.sequence(node, f"the scripts of {event}", example) or ():
        found = reader.known_keys(item, _SCRIPT_KEYS, f"a script of {event}", hints=_SCRIPT_HINTS)
        if found is None:
            continue
        location = reader.text(found["location"].value, "location") if "location" in found else None
        if location is None or not location.strip():
            reader.report(found["location"].value if "location" in found else item, _NO_LOCATION)
        else:
            escape = _location_escape(location.strip())
            if escape:
                reader.report(found["location"].value, escape)
        timeout = 3600
        if "timeout" in found:
            given = reader.whole_number(found["timeout"].value)
            if given is None or given <= 0:
                fix = " The timeout is a whole number of seconds greater than 0"
                given_text = as_written(found["timeout"].value)
                reader.report(found["timeout"].value, f"{_BAD_TIMEOUT}{fix} (got {given_text}).")
            else:
                timeout = given
                total += given
        runas = reader.optional_text(found, "runas")
        sudo = reader.value(found["sudo"].value) if "sudo" in found else False
        if not isinstance(sudo, bool) and sudo is not None:
            reader.report(found["sudo"].value, f"sudo must be true or false, not {as_written(found['sudo'].value)}")
        scripts.append(HookScript((location or "").strip(), timeout, runas or None, sudo is True))
    if total > MAX_EVENT_SECONDS:
        reader.report(
            key,
            f"the timeouts of the scripts in {event} add up to {total} seconds, more than the "
            f"{MAX_EVENT_SECONDS} seconds one lifecycle event may take (CodeDeploy fails the event after an hour); "
            "lower the timeouts",
        )
    return tuple(scripts)


def _location_escape(location: str) -> str | None:
    """Why a hook ``location`` could name a file outside the revision (absolute, or a ``..`` segment); None if not.

    The agent runs ``<revision>/<location>``: an absolute path or ``..`` would make it chmod and run a file of the
    host instead (the agent checks again after resolving links, engine/agent/hooks.py).
    """
    fix = "name the script by its path inside the revision, such as scripts/start.sh"
    if location.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", location):
        return f"hook location {location!r} is an absolute path; {fix}"
    if ".." in re.split(r"[\\/]", location):
        return f"hook location {location!r} has a '..' segment and could leave the revision; {fix}"
    return None


def _files(reader: AppSpecReader, node: Node, os_name: str | None) -> tuple[FileMapping, ...]:
    """``files`` items; two sources that would land on the same destination file are an error (as at Install)."""
    mappings: list[FileMapping] = []
    landed: dict[tuple[str, str], str] = {}
    example = "'- source: app' with 'destination: /opt/app' below it"
    for item in reader.sequence(node, "files", example) or ():
        found = reader.known_keys(item, ("source", "destination"), "a files item")
        if found is None:
            continue
        source = reader.optional_text(found, "source")
        destination = reader.optional_text(found, "destination")
        if not source:
            reader.report(found["source"].value if "source" in found else item, _NO_SOURCE)
        if not destination:
            reader.report(
                found["destination"].value if "destination" in found else item,
                f"{FAILED} the application specification file specifies only a source file ({source or ''}). "
                "Add the name of the destination file to the files section of the AppSpec file, "
                "and then try again.",
            )
        elif not _is_absolute(destination, os_name):
            example_path = "c:\\temp\\app" if os_name == "windows" else "/opt/app"
            reader.report(
                found["destination"].value,
                f"destination {destination!r} is not a fully qualified path; write an absolute path such as "
                f"{example_path} (the agent would resolve it against its own working directory)",
            )
        if not source or not destination:
            continue
        landing, shown = _landing(source, destination, os_name)
        if landing in landed:
            reader.report(
                found["source"].value,
                f"{FAILED} the application specification file specifies two source files named {landed[landing]} "
                f"and {source} for the same destination ({shown}). Remove one of the source file paths from the "
                "AppSpec file, and then try again.",
            )
        else:
            landed[landing] = source
        mappings.append(FileMapping(source, destination))
    return tuple(mappings)


def _is_absolute(path: str, os_name: str | None) -> bool:
    windows = bool(re.match(r"[A-Za-z]:[\\/]|\\\\", path))
    if os_name == "windows":
        return windows
    return path.startswith("/") or (os_name is None and windows)


def _landing(source: str, destination: str, os_name: str | None) -> tuple[tuple[str, str], str]:
    """Where a file source lands: ``destination/basename(source)`` (the destination is always a directory)."""
    if os_name == "windows":
        base = ntpath.basename(source.rstrip("\\/"))
        folder = ntpath.normpath(destination)
        return (folder.lower(), base.lower()), ntpath.join(folder, base)
    base = posixpath.basename(source.rstrip("/"))
    base = "" if base == "." else base
    folder = posixpath.normpath(destination)
    return (folder, base), posixpath.join(folder, base)


def _file_exists_behavior(reader: AppSpecReader, node: Node) -> str | None:
    value = reader.value(node)
    if value is None or value in FILE_EXISTS_BEHAVIORS:
        return None if value is None else str(value)
    fix = ""
    if isinstance(value, str) and value.strip().upper() in FILE_EXISTS_BEHAVIORS:
        fix = f" The value is case-sensitive: write `file_exists_behavior: {value.strip().upper()}`."
    reader.report(
        node,
        f"{FAILED} an invalid file_exists_behavior value ({as_written(node)}) was entered in the application "
        "specification file. Make sure your AppSpec file specifies one of DISALLOW,OVERWRITE,RETAIN as the "
        f"file_exists_behavior, and then try again.{fix}",
    )
    return None
