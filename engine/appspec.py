"""AppSpec files for the server, Lambda and ECS platforms: parse and validate strictly, errors with line:column (pure).

The value types below are the contract the agent and the runner use; the parser fills them.

Policy (reference §0): a revision is refused before any host is touched if either the agent or the User Guide would
refuse it: quoted ``version``, ``os`` case, reserved or unknown hook names, relative destinations, two sources onto
one file, unquoted ``0755`` modes, more than 3600 s of explicit timeouts in one event, and so on. Unknown keys are
errors too (the agent ignores them, so a typo like ``hook:`` would silently drop every script). Messages reuse the
agent's wording and add the fix. ``EcsAppSpec.network_configuration`` and ``capacity_provider_strategy`` are kept in
the ECS API's own shape (``{"awsvpcConfiguration": {"subnets", "securityGroups", "assignPublicIp"}}``,
``{"capacityProvider", "base", "weight"}``) so an adapter can pass them on unchanged.
"""

from __future__ import annotations

import copy
import difflib
import ntpath
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import yaml

from engine.errors import AppSpecInvalid, Problem
from engine.model import LifecycleEvent, Platform


@dataclass(frozen=True, slots=True)
class FileMapping:
    """One ``files`` item: ``source`` is bundle-relative, ``destination`` is always a directory."""

    source: str
    destination: str


@dataclass(frozen=True, slots=True)
class SELinuxContext:
    type: str
    name: str | None = None
    range: str | None = None


@dataclass(frozen=True, slots=True)
class Permission:
    """One ``permissions`` item, normalized (``mode`` as an octal string of 3 or 4 digits)."""

    object: str
    pattern: str = "**"
    except_: tuple[str, ...] = ()
    types: frozenset[str] = frozenset({"file", "directory"})
    owner: str | None = None
    group: str | None = None
    mode: str | None = None
    acls: tuple[str, ...] = ()
    context: SELinuxContext | None = None


@dataclass(frozen=True, slots=True)
class HookScript:
    location: str
    timeout: int = 3600
    runas: str | None = None
    sudo: bool = False


@dataclass(frozen=True, slots=True)
class ServerAppSpec:
    os: str
    files: tuple[FileMapping, ...] = ()
    permissions: tuple[Permission, ...] = ()
    hooks: Mapping[LifecycleEvent, tuple[HookScript, ...]] = field(default_factory=dict)
    file_exists_behavior: str | None = None


@dataclass(frozen=True, slots=True)
class LambdaAppSpec:
    function_name: str
    alias: str
    current_version: str
    target_version: str
    hooks: Mapping[LifecycleEvent, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EcsAppSpec:
    task_definition: str
    container_name: str
    container_port: int
    platform_version: str | None = None
    network_configuration: Mapping[str, object] | None = None
    capacity_provider_strategy: tuple[Mapping[str, object], ...] = ()
    hooks: Mapping[LifecycleEvent, tuple[str, ...]] = field(default_factory=dict)


AppSpec = ServerAppSpec | LambdaAppSpec | EcsAppSpec


# --------------------------------------------------------------------------------------------------------------------
# The parser. It walks the node tree from ``yaml.compose`` (never ``yaml.load``) so every value keeps the line and
# column it came from, and it reports every problem it finds rather than stopping at the first, as the agent does.
# Where the agent and the user guide disagree, the stricter side wins (reference §0, §10).

SERVER_HOOK_EVENTS: tuple[LifecycleEvent, ...] = (
    LifecycleEvent.APPLICATION_STOP,
    LifecycleEvent.BEFORE_INSTALL,
    LifecycleEvent.AFTER_INSTALL,
    LifecycleEvent.APPLICATION_START,
    LifecycleEvent.VALIDATE_SERVICE,
    LifecycleEvent.BEFORE_BLOCK_TRAFFIC,
    LifecycleEvent.AFTER_BLOCK_TRAFFIC,
    LifecycleEvent.BEFORE_ALLOW_TRAFFIC,
    LifecycleEvent.AFTER_ALLOW_TRAFFIC,
)
SERVER_RESERVED_EVENTS: tuple[LifecycleEvent, ...] = (
    LifecycleEvent.DOWNLOAD_BUNDLE,
    LifecycleEvent.INSTALL,
    LifecycleEvent.BLOCK_TRAFFIC,
    LifecycleEvent.ALLOW_TRAFFIC,
)
LAMBDA_HOOK_EVENTS: tuple[LifecycleEvent, ...] = (
    LifecycleEvent.BEFORE_ALLOW_TRAFFIC,
    LifecycleEvent.AFTER_ALLOW_TRAFFIC,
)
ECS_HOOK_EVENTS: tuple[LifecycleEvent, ...] = (
    LifecycleEvent.BEFORE_INSTALL,
    LifecycleEvent.AFTER_INSTALL,
    LifecycleEvent.AFTER_ALLOW_TEST_TRAFFIC,
    LifecycleEvent.BEFORE_ALLOW_TRAFFIC,
    LifecycleEvent.AFTER_ALLOW_TRAFFIC,
)
FILE_EXISTS_BEHAVIORS = ("DISALLOW", "OVERWRITE", "RETAIN")
MAX_EVENT_SECONDS = 3600
"""The most the scripts of one lifecycle event may take together (the service fails the event after an hour)."""

_FAILED = "The deployment failed because"
_EMPTY_SERVER = (
    f"{_FAILED} the application specification file was empty. Make sure your AppSpec file defines at minimum "
    "the 'version' and 'os' properties."
)
_EMPTY_RESOURCES = "The AppSpec file is empty. Make sure it defines at minimum 'version: 0.0' and 'Resources'."
_NO_LOCATION = (
    f"{_FAILED} the application specification file specifies a script with no location value. "
    "Specify the location in the hooks section of the AppSpec file, and then try again."
)
_BAD_TIMEOUT = (
    f"{_FAILED} an invalid timeout value was provided for a script in the application specification file. "
    "Make corrections in the hooks section of the AppSpec file, and then try again."
)
_NO_SOURCE = (
    f"{_FAILED} the application specification file specifies a destination file, but no source file. "
    "Update the files section of the AppSpec file, and then try again."
)
_NO_OBJECT = (
    f"{_FAILED} a permission listed in the application specification file has no object value. "
    "Update the permissions section of the AppSpec file, and then try again."
)
_WINDOWS_PERMISSIONS = (
    f"{_FAILED} the application specification file specifies file permissions, but the deployment is targeting "
    "one or more Windows Server instances. Permissions are supported only for Amazon Linux, Ubuntu Server, and "
    "Red Hat Enterprise Linux (RHEL) instances. Remove the permissions section or use `os: linux`."
)
_ACL_PROBLEM = f"{_FAILED} of a problem with the acls permission settings in the application specification file."
_ACE_TYPES = {"u": "user", "user": "user", "g": "group", "group": "group", "m": "mask", "mask": "mask"}
_ACE_TYPES |= {"o": "other", "other": "other"}
_MODE_TYPES = 'mode must be an octal number such as 644 or 4755, or a quoted string such as "0644"'
_NOT_SERVER = " (it belongs to Lambda and ECS AppSpec files: validate this file with platform lambda or ecs)"
_NOT_RESOURCES = " (it belongs to server AppSpec files: validate this file with platform server)"

_Entry = tuple[yaml.Node, yaml.Node]
"""A mapping entry: the key node (for "unknown key" and "given twice") and the value node."""

_COMPOUND = object()
"""Stands for the value of a mapping or list node (or an unreadable scalar) where a scalar was expected."""


def parse_appspec(text: str, *, platform: Platform = Platform.SERVER, filename: str = "appspec.yml") -> AppSpec:
    """Parse and validate an AppSpec file; raise ``AppSpecInvalid`` with every problem, sorted by position."""
    reader = _Reader(filename)
    root = reader.compose(text)
    platform = Platform(platform)
    spec: AppSpec | None = None
    if not reader.problems:
        if root is None or (isinstance(root, yaml.ScalarNode) and reader.value(root) is None):
            reader.report_at(1, 1, _EMPTY_SERVER if platform is Platform.SERVER else _EMPTY_RESOURCES)
        elif platform is Platform.SERVER:
            spec = _parse_server(reader, root)
        elif platform is Platform.LAMBDA:
            spec = _parse_lambda(reader, root)
        else:
            spec = _parse_ecs(reader, root)
    if reader.problems or spec is None:
        raise AppSpecInvalid(sorted(reader.problems, key=lambda p: (p.line, p.column)))
    return spec


class _Reader:
    """Turns nodes into values, checking their shape, and collects every problem at the node it is about."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[Problem] = []
        self._unreadable: set[int] = set()

    def report(self, node: yaml.Node, message: str) -> None:
        if id(node) not in self._unreadable:
            self.report_at(node.start_mark.line + 1, node.start_mark.column + 1, message)

    def report_unreadable(self, node: yaml.Node, message: str) -> None:
        """A value that cannot be read at all: this problem explains any later one about the same node."""
        self.report(node, message)
        self._unreadable.add(id(node))

    def report_at(self, line: int, column: int, message: str) -> None:
        self.problems.append(Problem(self.filename, line, column, message))

    def compose(self, text: str) -> yaml.Node | None:
        try:
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            if "'\\t'" in str(exc.problem) and text.lstrip("\ufeff \r\n").startswith(("{", "[")):
                return self.compose(_json_tabs_to_spaces(text))  # JSON allows tabs between tokens; PyYAML does not
            mark = exc.problem_mark or exc.context_mark
            line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            self.report_at(line, column, _yaml_message(exc))
        except yaml.reader.ReaderError as exc:
            before = text[: exc.position]
            column = exc.position - (before.rfind("\n") + 1) + 1
            self.report_at(before.count("\n") + 1, column, f"YAML syntax error: {exc.reason} (#x{exc.character:04x})")
        return None

    def value(self, node: yaml.Node) -> object:
        """The Python value of a scalar node as YAML 1.1 reads it (``0755`` is 493); ``_COMPOUND`` otherwise."""
        if not isinstance(node, yaml.ScalarNode):
            return _COMPOUND
        construct = yaml.SafeLoader.yaml_constructors.get(node.tag) if node.tag in _SCALAR_TAGS else None
        if construct is None:
            self.report_unreadable(node, f"unsupported YAML tag {node.tag}: remove it")
            return _COMPOUND
        try:
            return construct(_CONSTRUCTOR, node)
        except (yaml.YAMLError, ValueError) as exc:
            self.report_unreadable(node, f"cannot read {node.value!r}: {exc}")
            return _COMPOUND

    def is_null(self, node: yaml.Node) -> bool:
        return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"

    def mapping(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node, yaml.Node]] | None:
        """The entries of a mapping node, keys as text; reports a non-mapping and keys given twice."""
        if not isinstance(node, yaml.MappingNode):
            self.report(node, f"{what} must be a mapping (key: value lines), not {_kind(node)}")
            return None
        try:
            _merge_keys(node)
        except yaml.MarkedYAMLError as exc:
            self.report(node, _yaml_message(exc))
            return None
        entries: list[tuple[str, yaml.Node, yaml.Node]] = []
        seen: set[str] = set()
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                self.report(key, f"the keys of {what} must be plain names, not {_kind(key)}")
                continue
            if key.value in seen:
                self.report(key, f"{key.value!r} is given twice in {what}; keep one")
                continue
            seen.add(key.value)
            entries.append((key.value, key, value))
        return entries

    def fields(
        self,
        node: yaml.Node,
        names: Sequence[str],
        what: str,
        *,
        lower_too: bool = False,
        hints: Mapping[str, str] | None = None,
    ) -> dict[str, _Entry] | None:
        """A mapping's known keys by canonical name; unknown keys are problems (a typo must not be ignored).

        ``lower_too`` also accepts the all-lower-case spelling (``currentversion``) the Lambda/ECS docs use.
        """
        entries = self.mapping(node, what)
        if entries is None:
            return None
        spelled = {name: name for name in names}
        if lower_too:
            spelled |= {name.lower(): name for name in names}
        found: dict[str, _Entry] = {}
        for key_text, key, value in entries:
            name = spelled.get(key_text)
            if name is None:
                hint = (hints or {}).get(key_text.lower()) or _did_you_mean(key_text, names)
                self.report(key, f"unknown key {key_text!r} in {what}{hint}; known keys: {', '.join(names)}")
            elif name in found:
                self.report(key, f"{name} is given twice in {what} (as {found[name][0].value} and {key_text})")
            else:
                found[name] = (key, value)
        return found

    def sequence(self, node: yaml.Node, what: str, example: str) -> list[yaml.Node] | None:
        """The items of a list node; an empty value (``files:``) is an empty list, as for the agent."""
        if self.is_null(node):
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.report(node, f"{what} must be a list (lines starting with '- ', e.g. {example}), not {_kind(node)}")
            return None
        return list(node.value)

    def text(self, node: yaml.Node, what: str) -> str | None:
        """A scalar as text. Numbers and dates keep what was written (a file named 2024 stays "2024")."""
        value = self.value(node)
        if value is None:
            return None
        if value is _COMPOUND or isinstance(value, bool):
            shown = _kind(node) if value is _COMPOUND else f"true/false ({node.value})"
            self.report_unreadable(node, f"{what} must be text, not {shown}; put it in quotes if it is meant as text")
            return None
        return value if isinstance(value, str) else str(node.value)


_CONSTRUCTOR = yaml.constructor.SafeConstructor()
"""PyYAML's safe constructor, used only for single scalars and merge keys (it never sees a whole document)."""
_SCALAR_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "str", "timestamp")}


def _merge_keys(node: yaml.MappingNode) -> None:
    """Resolve ``<<: *anchor`` merge keys in place; keys written in the mapping win over merged ones (YAML 1.1)."""
    if not any(key.tag == "tag:yaml.org,2002:merge" for key, _ in node.value):
        return
    own = [(key, value) for key, value in node.value if key.tag != "tag:yaml.org,2002:merge"]
    _CONSTRUCTOR.flatten_mapping(node)
    merged = node.value[: len(node.value) - len(own)]
    taken = {key.value for key, _ in own if isinstance(key, yaml.ScalarNode)}
    kept = []
    for key, value in merged:
        if isinstance(key, yaml.ScalarNode) and key.value not in taken:
            taken.add(key.value)
            kept.append((key, value))
    node.value = kept + own


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    context = str(exc.context or "")
    if context.startswith("while"):
        message = f"YAML syntax error {context}: {exc.problem}"
    else:
        message = f"YAML syntax error: {context + ', ' if context else ''}{exc.problem}"
    opened = exc.context_mark
    if opened is not None and exc.problem_mark is not None and opened.line != exc.problem_mark.line:
        message += f" (the construct started at line {opened.line + 1}, column {opened.column + 1})"
    if "'\\t'" in str(exc.problem):
        message += "; tabs cannot indent YAML: indent with spaces"
    return message


def _json_tabs_to_spaces(text: str) -> str:
    """Replace the tabs between JSON tokens by spaces (same column count); tabs inside strings are kept."""
    out: list[str] = []
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped = not escaped and char == "\\"
            in_string = escaped or char != '"'
        elif char == '"':
            in_string = True
        out.append(" " if char == "\t" and not in_string else char)
    return "".join(out)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == "tag:yaml.org,2002:null":
        return "empty"
    return f"{node.value!r}"


def _show(node: yaml.Node) -> str:
    """A node as the user wrote it, for messages."""
    return str(node.value) if isinstance(node, yaml.ScalarNode) else _kind(node)


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    lowered = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.7)
    return f" (did you mean {str(lowered[close[0]])!r}?)" if close else ""


def _required(reader: _Reader, owner: yaml.Node, found: Mapping[str, _Entry], name: str, what: str) -> str | None:
    """A required, non-empty text value of ``found``; reported at the owning mapping when missing."""
    if name not in found:
        reader.report(owner, f"{what} needs {name!r}")
        return None
    text = (reader.text(found[name][1], name) or "").strip()
    if not text:
        reader.report(found[name][1], f"{name} must not be empty")  # not repeated for an unreadable value
    return text or None


def _optional_text(reader: _Reader, found: Mapping[str, _Entry], name: str) -> str | None:
    text = reader.text(found[name][1], name) if name in found else None
    return text.strip() if text is not None else None


def _whole_number(reader: _Reader, node: yaml.Node) -> int | None:
    """An integer written as a number or as digits in quotes (``"300"``), as the agent's ``to_i`` reads it."""
    value = reader.value(node)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*\+?[0-9]+\s*", value):
        return int(value)
    return None


# ---------------------------------------------------------------------------------------------------- server platform
_SERVER_KEYS = ("version", "os", "files", "permissions", "hooks", "file_exists_behavior")
_SCRIPT_KEYS = ("location", "timeout", "runas", "sudo")
_SCRIPT_HINTS = {key: " (the user a script runs as is given with 'runas')" for key in ("user", "run_as", "runas")}
_PERMISSION_KEYS = ("object", "pattern", "except", "type", "owner", "group", "mode", "acls", "context")


def _parse_server(reader: _Reader, root: yaml.Node) -> ServerAppSpec | None:
    hints = {"resources": _NOT_SERVER}
    top = reader.fields(root, _SERVER_KEYS, "the AppSpec file", hints=hints)
    if top is None:
        return None
    _check_version(reader, root, top.get("version"))
    os_name = _server_os(reader, root, top.get("os"))
    hooks = _server_hooks(reader, top["hooks"][1]) if "hooks" in top else {}
    files = _files(reader, top["files"][1], os_name) if "files" in top else ()
    permissions = _permissions(reader, top["permissions"], os_name) if "permissions" in top else ()
    behavior = _file_exists_behavior(reader, top["file_exists_behavior"][1]) if "file_exists_behavior" in top else None
    return ServerAppSpec(os_name or "", files, permissions, hooks, behavior)


def _check_version(reader: _Reader, root: yaml.Node, entry: _Entry | None) -> None:
    """``version`` must be the number 0.0 (the agent compares with ``[0.0].include?``, so ``"0.0"`` fails)."""
    message = (
        f"{_FAILED} an invalid version value ({{}}) was entered in the application specification file. "
        'Make sure your AppSpec file specifies "0.0" as the version, and then try again.'
    )
    if entry is None:
        reader.report(root, message.format("") + " Add `version: 0.0` (a number, without quotes).")
        return
    node = entry[1]
    value = reader.value(node)
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return
    fix = " Write `version: 0.0`."
    if isinstance(value, str) and value.strip() in ("0.0", "0"):
        fix = f' The quoted "{value}" is text, not a number: write `version: 0.0` without quotes.'
    reader.report(node, message.format(_show(node)) + fix)


def _server_os(reader: _Reader, root: yaml.Node, entry: _Entry | None) -> str | None:
    message = (
        f"{_FAILED} the application specification file specifies an unsupported operating system ({{}}). "
        'Specify either "linux" or "windows" in the os section of the AppSpec file, and then try again.'
    )
    if entry is None:
        reader.report(root, message.format("") + " Add `os: linux` (or `os: windows`).")
        return None
    value = reader.value(entry[1])
    if value in ("linux", "windows"):
        return str(value)
    fix = ""
    if isinstance(value, str) and value.strip().lower() in ("linux", "windows"):
        fix = f" The name is case-sensitive: write `os: {value.strip().lower()}`."
    reader.report(entry[1], message.format(_show(entry[1])) + fix)
    return None


def _server_hooks(reader: _Reader, node: yaml.Node) -> dict[LifecycleEvent, tuple[HookScript, ...]]:
    hooks: dict[LifecycleEvent, tuple[HookScript, ...]] = {}
    if reader.is_null(node):
        return hooks
    allowed = ", ".join(SERVER_HOOK_EVENTS)
    for name, key, value in reader.mapping(node, "hooks") or ():
        event = next((e for e in SERVER_HOOK_EVENTS if e.value == name), None)
        if event is None:
            if name in SERVER_RESERVED_EVENTS:
                why = f"{name} is run by CodeDeploy itself and cannot run scripts"
            else:
                why = f"unknown lifecycle event {name!r}{_did_you_mean(name, SERVER_HOOK_EVENTS)}"
            reader.report(key, f"{why}; hooks can run at: {allowed}")
        scripts = _scripts(reader, name, key, value)
        if event is not None and scripts:
            hooks[event] = scripts
    return hooks


def _scripts(reader: _Reader, event: str, key: yaml.Node, node: yaml.Node) -> tuple[HookScript, ...]:
    """One event's scripts; their explicit timeouts may add up to at most an hour (docs; AA)."""
    example = f"'- location: scripts/{event.lower()}.sh'"
    scripts: list[HookScript] = []
    total = 0
    for item in reader.sequence(node, f"the scripts of {event}", example) or ():
        found = reader.fields(item, _SCRIPT_KEYS, f"a script of {event}", hints=_SCRIPT_HINTS)
        if found is None:
            continue
        location = reader.text(found["location"][1], "location") if "location" in found else None
        if location is None or not location.strip():
            reader.report(found["location"][1] if "location" in found else item, _NO_LOCATION)
        timeout = 3600
        if "timeout" in found:
            given = _whole_number(reader, found["timeout"][1])
            if given is None or given <= 0:
                fix = " The timeout is a whole number of seconds greater than 0"
                reader.report(found["timeout"][1], f"{_BAD_TIMEOUT}{fix} (got {_show(found['timeout'][1])}).")
            else:
                timeout = given
                total += given
        runas = _optional_text(reader, found, "runas")
        sudo = reader.value(found["sudo"][1]) if "sudo" in found else False
        if not isinstance(sudo, bool) and sudo is not None:
            reader.report(found["sudo"][1], f"sudo must be true or false, not {_show(found['sudo'][1])}")
        scripts.append(HookScript((location or "").strip(), timeout, runas or None, sudo is True))
    if total > MAX_EVENT_SECONDS:
        reader.report(
            key,
            f"the timeouts of the scripts in {event} add up to {total} seconds, more than the "
            f"{MAX_EVENT_SECONDS} seconds one lifecycle event may take (CodeDeploy fails the event after an hour); "
            "lower the timeouts",
        )
    return tuple(scripts)


def _files(reader: _Reader, node: yaml.Node, os_name: str | None) -> tuple[FileMapping, ...]:
    """``files`` items; two sources that would land on the same destination file are an error (as at Install)."""
    mappings: list[FileMapping] = []
    landed: dict[tuple[str, str], str] = {}
    example = "'- source: app' with 'destination: /opt/app' below it"
    for item in reader.sequence(node, "files", example) or ():
        found = reader.fields(item, ("source", "destination"), "a files item")
        if found is None:
            continue
        source = _optional_text(reader, found, "source")
        destination = _optional_text(reader, found, "destination")
        if not source:
            reader.report(found["source"][1] if "source" in found else item, _NO_SOURCE)
        if not destination:
            reader.report(
                found["destination"][1] if "destination" in found else item,
                f"{_FAILED} the application specification file specifies only a source file ({source or ''}). "
                "Add the name of the destination file to the files section of the AppSpec file, "
                "and then try again.",
            )
        elif not _is_absolute(destination, os_name):
            example_path = "c:\\temp\\app" if os_name == "windows" else "/opt/app"
            reader.report(
                found["destination"][1],
                f"destination {destination!r} is not a fully qualified path; write an absolute path such as "
                f"{example_path} (the agent would resolve it against its own working directory)",
            )
        if not source or not destination:
            continue
        landing, shown = _landing(source, destination, os_name)
        if landing in landed:
            reader.report(
                found["source"][1],
                f"{_FAILED} the application specification file specifies two source files named {landed[landing]} "
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


def _file_exists_behavior(reader: _Reader, node: yaml.Node) -> str | None:
    value = reader.value(node)
    if value is None or value in FILE_EXISTS_BEHAVIORS:
        return None if value is None else str(value)
    fix = ""
    if isinstance(value, str) and value.strip().upper() in FILE_EXISTS_BEHAVIORS:
        fix = f" The value is case-sensitive: write `file_exists_behavior: {value.strip().upper()}`."
    reader.report(
        node,
        f"{_FAILED} an invalid file_exists_behavior value ({_show(node)}) was entered in the application "
        "specification file. Make sure your AppSpec file specifies one of DISALLOW,OVERWRITE,RETAIN as the "
        f"file_exists_behavior, and then try again.{fix}",
    )
    return None


def _permissions(reader: _Reader, entry: _Entry, os_name: str | None) -> tuple[Permission, ...]:
    items = reader.sequence(entry[1], "permissions", "'- object: /opt/app' with 'mode: 644' below it") or []
    if items and os_name == "windows":
        reader.report(entry[0], _WINDOWS_PERMISSIONS)
        return ()
    permissions = (_permission(reader, item) for item in items)
    return tuple(p for p in permissions if p is not None)


def _permission(reader: _Reader, node: yaml.Node) -> Permission | None:
    found = reader.fields(node, _PERMISSION_KEYS, "a permissions item")
    if found is None:
        return None
    target = _optional_text(reader, found, "object")
    if not target:
        reader.report(found["object"][1] if "object" in found else node, _NO_OBJECT)
    pattern = _optional_text(reader, found, "pattern") or "**"
    excepts = _text_list(reader, found, "except", "'except: [README.md]'")
    types = _text_list(reader, found, "type", "'type: [file]'")
    for type_node, kind in zip(_list_nodes(found, "type"), types, strict=False):
        if kind not in ("file", "directory"):
            reader.report(
                type_node,
                f"{_FAILED} the application specification file specifies a permission for an object type not "
                f"supported for permissions ({kind}). Use file, directory or both.",
            )
    if _list_nodes(found, "type") == [] and "type" in found and isinstance(found["type"][1], yaml.SequenceNode):
        reader.report(found["type"][1], "type must list file, directory or both (leave it out for both)")
    acls = _text_list(reader, found, "acls", "'acls: [\"u:bob:rw\"]'")
    for acl_node, acl in zip(_list_nodes(found, "acls"), acls, strict=False):
        problem = _ace_problem(acl)
        if problem:
            reader.report(acl_node, problem)
    mode = _mode(reader, found["mode"][1]) if "mode" in found else None
    context = _context(reader, found["context"]) if "context" in found else None
    return Permission(
        object=target or "",
        pattern=pattern,
        except_=tuple(excepts),
        types=frozenset(types) or frozenset({"file", "directory"}),
        owner=_optional_text(reader, found, "owner"),
        group=_optional_text(reader, found, "group"),
        mode=mode,
        acls=tuple(acls),
        context=context,
    )


def _list_nodes(found: Mapping[str, _Entry], name: str) -> list[yaml.Node]:
    node = found[name][1] if name in found else None
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _text_list(reader: _Reader, found: Mapping[str, _Entry], name: str, example: str) -> list[str]:
    if name not in found:
        return []
    items = reader.sequence(found[name][1], name, example) or []
    texts = [reader.text(item, f"an item of {name}") for item in items]
    return [text.strip() for text in texts if text is not None]


def _mode(reader: _Reader, node: yaml.Node) -> str | None:
    """The agent's ``ModeInfo``: ``to_s``, left-padded to 3, at most 4 characters, digits 0-7 only.

    An unquoted ``0755`` is the YAML 1.1 octal number 493, which the agent rejects ("invalid character (9)");
    ``0644`` becomes 420 and would silently set the wrong mode. The docs say to quote such values, so both fail.
    """
    value = reader.value(node)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
        if node.style is None and re.fullmatch(r"[-+]?0[0-7_]+", node.value):
            outcome = _mode_problem(text) or f"The agent would set mode {text.rjust(3, '0')} instead."
            reader.report(
                node,
                f"mode {node.value} has a leading zero, so YAML reads it as the octal number {value}. {outcome} "
                f'Quote it (mode: "{node.value}") or drop the leading zero (mode: {node.value.lstrip("0") or 0}).',
            )
            return None
    elif isinstance(value, str):
        text = value.strip()
    else:
        reader.report(node, f"{_MODE_TYPES}, not {_kind(node)}")
        return None
    problem = _mode_problem(text)
    if problem:
        reader.report(node, f"{problem} Modes are octal: up to four digits from 0 to 7, such as 644 or 4755.")
        return None
    return text.rjust(3, "0")


def _mode_problem(mode: str) -> str | None:
    mode = mode.rjust(3, "0")
    if len(mode) > 4:
        return (
            f"{_FAILED} the length of a permissions mode ({mode}) in the application specification file is "
            "invalid. Permissions modes must be between one and four characters long."
        )
    bad = next((char for char in mode if char not in "01234567"), None)
    if bad is not None:
        return (
            f"{_FAILED} the permissions mode ({mode}) in the application specification file contains an invalid "
            f"character ({bad})."
        )
    return None


def _ace_problem(ace: str) -> str | None:
    """The agent's ``AceInfo`` grammar: ``[d[efault]:][u[ser]|g[roup]|m[ask]|o[ther]:]name:perms``."""
    invalid = f"{_ACL_PROBLEM} Invalid acl entry ({ace}). Entries look like u:bob:rw, g:staff:r-x or d:u:bob:rwx."
    parts = ace.split(":")[::-1]
    if not 2 <= len(parts) <= 4 or (len(parts) == 4 and parts[3] not in ("d", "default")):
        return invalid
    default = len(parts) == 4
    kind: str | None = None
    name = ""
    if len(parts) >= 3:
        if parts[2] in ("d", "default"):
            if default:
                return invalid
            default = True
        elif parts[2] in _ACE_TYPES:
            kind = _ACE_TYPES[parts[2]]
        else:
            return invalid
    who = _ACE_TYPES.get(parts[1]) if parts[1] in ("m", "mask", "o", "other") else None
    if who is not None and kind is None:
        kind = who
    else:
        kind = kind or "user"
        name = parts[1]
    if kind in ("mask", "other") and name:
        return invalid
    if not default and kind != "mask" and not name:
        return f"{_ACL_PROBLEM} Use mode to set the base acl entry ({ace}): ACL entries must name a user or group."
    perms = parts[0]
    if len(perms) == 1 and perms in "01234567":
        return None
    bad = next((char for char in perms if char not in "rwx-"), None)
    if bad is not None:
        return (
            f"{_FAILED} the access control list (ACL) named {ace} in the application specification file contains "
            f"an invalid character ({bad}). Permissions are one octal digit or the letters r, w, x and -."
        )
    return None


def _context(reader: _Reader, entry: _Entry) -> SELinuxContext | None:
    """SELinux context. The agent reads ``name`` for the SELinux user, the docs write ``user``: both are accepted."""
    key, node = entry
    if reader.is_null(node):
        return None
    found = reader.fields(node, ("name", "user", "type", "range"), "context")
    if found is None:
        return None
    if "name" in found and "user" in found:
        reader.report(found["user"][0], "give the SELinux user once: as name (the agent's key) or user (the docs')")
    kind = _optional_text(reader, found, "type")
    if not kind:
        shown = "{" + ", ".join(f"{k}: {_show(v)}" for k, (_, v) in found.items()) + "}"
        reader.report(
            key,
            f"{_FAILED} the application specification file specifies an invalid context type ({shown}). "
            "The context needs a type, e.g. 'type: httpd_sys_content_t'.",
        )
    selinux_range = _optional_text(reader, found, "range")
    if selinux_range is not None:
        try:
            _check_range(selinux_range)
        except ValueError as exc:
            reader.report(
                found["range"][1],
                f"{_FAILED} of a problem with the SELinux range specified ({selinux_range}) for the context "
                f"parameter in the permissions section of the application specification file: {exc}. "
                "Ranges look like s0, s0-s2 or s0:c0.c10,c12.",
            )
    user = _optional_text(reader, found, "name") or _optional_text(reader, found, "user")
    return SELinuxContext(kind or "", user, selinux_range)


def _check_range(text: str) -> None:
    """The agent's ``RangeInfo``: ``s<n>[-s<n>][:c<n>[.c<n>],...]``, categories 0-1023, none twice."""
    parts = _range_parts(text, ":")
    sensitivities = [_range_level(part, "s") for part in _range_parts(parts[0], "-")]
    if sensitivities != sorted(sensitivities):
        raise ValueError("the high sensitivity is lower than the low one")
    if len(parts) == 1:
        return
    categories: list[int] = []
    for part in parts[1].split(","):
        if "." in part:
            low, high = (_range_level(bound, "c") for bound in _range_parts(part, "."))
            if high < low:
                raise ValueError(f"invalid category range {part}")
            categories.extend(range(low, high + 1))
        else:
            categories.append(_range_level(part, "c"))
    if len(categories) != len(set(categories)):
        raise ValueError("duplicate categories")


def _range_parts(text: str, separator: str) -> list[str]:
    parts = text.split(separator, 1)
    if "" in parts:
        raise ValueError(f"invalid range part {text}")
    return parts


def _range_level(part: str, letter: str) -> int:
    digits = part[1:]
    level = int(digits) if part[:1] == letter and digits.isascii() and digits.isdigit() else -1
    if level < 0 or (letter == "c" and level > 1023):
        raise ValueError(f"invalid {'sensitivity' if letter == 's' else 'category'} {part}")
    return level


# ------------------------------------------------------------------------------------------------- Lambda and ECS
# Parsed by the service, not the agent. Keys may be written in PascalCase (the example page) or all lower case (the
# structure page); exactly one resource; hooks are a list of single-key maps naming a Lambda function.
_RESOURCE_KEYS = ("version", "Resources", "Hooks")
_LAMBDA_PROPERTIES = ("Name", "Alias", "CurrentVersion", "TargetVersion")
_ECS_PROPERTIES = ("TaskDefinition", "LoadBalancerInfo", "PlatformVersion", "NetworkConfiguration")
_ECS_PROPERTIES += ("CapacityProviderStrategy",)
_AWSVPC_KEYS = ("Subnets", "SecurityGroups", "AssignPublicIp")


def _parse_lambda(reader: _Reader, root: yaml.Node) -> LambdaAppSpec | None:
    top, properties = _resource(reader, root, "Lambda", "AWS::Lambda::Function", _LAMBDA_PROPERTIES)
    hooks = _function_hooks(reader, top, "Lambda", LAMBDA_HOOK_EVENTS)
    if properties is None:
        return None
    node, found = properties
    versions = [_lambda_version(reader, node, found, name) for name in ("CurrentVersion", "TargetVersion")]
    name = _required(reader, node, found, "Name", "Properties")
    alias = _required(reader, node, found, "Alias", "Properties")
    return LambdaAppSpec(name or "", alias or "", versions[0] or "", versions[1] or "", hooks)


def _parse_ecs(reader: _Reader, root: yaml.Node) -> EcsAppSpec | None:
    top, properties = _resource(reader, root, "ECS", "AWS::ECS::Service", _ECS_PROPERTIES, logical="TargetService")
    hooks = _function_hooks(reader, top, "ECS", ECS_HOOK_EVENTS)
    if properties is None:
        return None
    node, found = properties
    task_definition = _required(reader, node, found, "TaskDefinition", "Properties")
    container_name, container_port = None, None
    if "LoadBalancerInfo" not in found:
        reader.report(node, "Properties needs 'LoadBalancerInfo' with ContainerName and ContainerPort")
    else:
        info = found["LoadBalancerInfo"][1]
        info_found = reader.fields(info, ("ContainerName", "ContainerPort"), "LoadBalancerInfo", lower_too=True)
        if info_found is not None:
            owner = found["LoadBalancerInfo"][0]
            container_name = _required(reader, owner, info_found, "ContainerName", "LoadBalancerInfo")
            container_port = _container_port(reader, owner, info_found)
    network = _network(reader, found["NetworkConfiguration"][1]) if "NetworkConfiguration" in found else None
    strategy = (
        _capacity_strategy(reader, found["CapacityProviderStrategy"][1]) if "CapacityProviderStrategy" in found else ()
    )
    return EcsAppSpec(
        task_definition or "",
        container_name or "",
        container_port or 0,
        _optional_text(reader, found, "PlatformVersion"),
        network,
        strategy,
        hooks,
    )


def _resource(
    reader: _Reader,
    root: yaml.Node,
    platform: str,
    type_name: str,
    property_names: Sequence[str],
    *,
    logical: str | None = None,
) -> tuple[dict[str, _Entry] | None, tuple[yaml.Node, dict[str, _Entry]] | None]:
    """The top-level keys, and the one resource's ``Properties`` (node and known keys) when it has them."""
    hints = {key: _NOT_RESOURCES for key in ("os", "files", "permissions", "file_exists_behavior")}
    top = reader.fields(root, _RESOURCE_KEYS, "the AppSpec file", lower_too=True, hints=hints)
    if top is None:
        return None, None
    _check_version(reader, root, top.get("version"))
    what = f"the {platform} resource ({logical or 'the function'})"
    if "Resources" not in top:
        reader.report(root, f"the AppSpec file needs 'Resources', a list holding {what}")
        return top, None
    items = reader.sequence(top["Resources"][1], "Resources", f"'- {logical or 'myFunction'}:'")
    if items is None:
        return top, None
    if not items:
        reader.report(top["Resources"][1], f"Resources must hold {what}")
        return top, None
    kind = "TargetService" if logical else "Function"
    for extra in items[1:]:
        reader.report(extra, f"Only 1 {platform} resource ({kind}) supported in a deployment")
    entries = reader.mapping(items[0], "a resource")
    if not entries:
        if entries is not None:
            reader.report(items[0], f"Resources must hold {what}")
        return top, None
    for _, key, _ in entries[1:]:
        reader.report(key, f"Only 1 {platform} resource ({kind}) supported in a deployment")
    name, key, body = entries[0]
    if logical and name not in (logical, logical.lower()):
        reader.report(key, f"the {platform} resource must be named {logical}, not {name!r}")
    found = reader.fields(body, ("Type", "Properties"), f"resource {name}", lower_too=True)
    if found is None:
        return top, None
    if "Type" not in found:
        reader.report(body, f"resource {name} needs 'Type: {type_name}'")
    elif reader.value(found["Type"][1]) != type_name:
        given = _show(found["Type"][1])
        other = {"AWS::ECS::Service": "ecs", "AWS::Lambda::Function": "lambda"}.get(given)
        hint = f" (this looks like an AppSpec for {other}: validate it with platform {other})" if other else ""
        reader.report(found["Type"][1], f"{platform} resource Type must be {type_name}, not {given}{hint}")
    if "Properties" not in found:
        reader.report(body, f"resource {name} needs 'Properties'")
        return top, None
    key, node = found["Properties"]
    properties = reader.fields(node, property_names, f"the Properties of {name}", lower_too=True)
    return top, (key, properties) if properties is not None else None


def _lambda_version(reader: _Reader, owner: yaml.Node, found: Mapping[str, _Entry], name: str) -> str | None:
    """A Lambda version: "This value must be a valid positive integer" (given as text or as a number)."""
    if name not in found:
        reader.report(owner, f'Properties needs {name!r} (a Lambda version number such as "1")')
        return None
    number = _whole_number(reader, found[name][1])
    if number is None or number <= 0:
        reader.report(
            found[name][1],
            f'{name} must be a valid positive integer (a published Lambda version such as "2"), '
            f"not {_show(found[name][1]) or 'empty'}",
        )
        return None
    return str(number)


def _function_hooks(
    reader: _Reader, top: Mapping[str, _Entry] | None, platform: str, allowed: Sequence[LifecycleEvent]
) -> dict[LifecycleEvent, tuple[str, ...]]:
    hooks: dict[LifecycleEvent, tuple[str, ...]] = {}
    if top is None or "Hooks" not in top:
        return hooks
    example = f"'- {allowed[0]}: MyValidationFunction'"
    for item in reader.sequence(top["Hooks"][1], "Hooks", example) or ():
        entries = reader.mapping(item, "a hook")
        if entries is not None and len(entries) != 1:
            reader.report(item, f"each hook is a map with a single key, e.g. {example}")
        for name, key, value in entries or ():
            event = next((e for e in allowed if e.value == name), None)
            if event is None:
                names = " ".join(allowed)
                hint = _did_you_mean(name, allowed)
                reader.report(key, f"The hooks must be one of the {platform} supported hooks: [{names}]{hint}")
            elif event in hooks:
                reader.report(key, f"{name} is listed twice; each hook runs one function once per deployment")
            function = (reader.text(value, f"the function of {name}") or "").strip()
            if not function:
                reader.report(value, f"Value cannot be empty for hook: {name} (give a Lambda function name)")
            elif event is not None and event not in hooks:
                hooks[event] = (function,)
    return hooks


def _container_port(reader: _Reader, owner: yaml.Node, found: Mapping[str, _Entry]) -> int | None:
    if "ContainerPort" not in found:
        reader.report(owner, "LoadBalancerInfo needs 'ContainerPort', the container port traffic is routed to")
        return None
    node = found["ContainerPort"][1]
    value = reader.value(node)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    fix = f" (write {value.strip()} without quotes)" if isinstance(value, str) and value.strip().isdigit() else ""
    reader.report(node, f"ContainerPort must be a port number from 1 to 65535, not {_kind(node)}{fix}")
    return None


def _network(reader: _Reader, node: yaml.Node) -> dict[str, object] | None:
    """``NetworkConfiguration.AwsvpcConfiguration``: all three settings or none; as ECS's API spells it."""
    if reader.is_null(node):
        return None
    found = reader.fields(node, ("AwsvpcConfiguration",), "NetworkConfiguration", lower_too=True)
    if not found:
        if found is not None:
            reader.report(node, "NetworkConfiguration needs 'AwsvpcConfiguration'")
        return None
    vpc_node = found["AwsvpcConfiguration"][1]
    vpc = (
        reader.fields(vpc_node, _AWSVPC_KEYS, "AwsvpcConfiguration", lower_too=True)
        if not reader.is_null(vpc_node)
        else {}
    )
    if not vpc:
        return None
    missing = [name for name in _AWSVPC_KEYS if name not in vpc]
    if missing:
        reader.report(
            found["AwsvpcConfiguration"][0],
            "All or none of the settings under NetworkConfiguration must be specified: "
            f"add {' and '.join(missing)} (or remove the others to keep the service's current network settings)",
        )
    lists: dict[str, list[str]] = {}
    for name in ("Subnets", "SecurityGroups"):
        items = reader.sequence(vpc[name][1], name, f"'{name}: [\"...\"]'") if name in vpc else None
        texts = [(item, reader.text(item, f"an item of {name}")) for item in items or ()]
        for item, text in texts:
            if text is not None and not text.strip():
                reader.report(item, f"{name} cannot be empty strings")
        lists[name] = [text.strip() for _, text in texts if text and text.strip()]
        if items == [] and name in vpc:
            reader.report(vpc[name][1], f"{name} must list at least one")
    assign = reader.value(vpc["AssignPublicIp"][1]) if "AssignPublicIp" in vpc else None
    if "AssignPublicIp" in vpc and assign not in ("ENABLED", "DISABLED"):
        shown = _show(vpc["AssignPublicIp"][1])
        reader.report(vpc["AssignPublicIp"][1], f"AssignPublicIp must be ENABLED or DISABLED, not {shown or 'empty'}")
    config = {"subnets": lists["Subnets"], "securityGroups": lists["SecurityGroups"], "assignPublicIp": assign}
    return {"awsvpcConfiguration": config}


def _capacity_strategy(reader: _Reader, node: yaml.Node) -> tuple[dict[str, object], ...]:
    """``CapacityProviderStrategy``: Base and Weight default to 0; only one provider may have a Base."""
    strategy: list[dict[str, object]] = []
    with_base: str | None = None
    for item in reader.sequence(node, "CapacityProviderStrategy", "'- CapacityProvider: FARGATE'") or ():
        found = reader.fields(item, ("Base", "CapacityProvider", "Weight"), "a capacity provider", lower_too=True)
        if found is None:
            continue
        provider = _required(reader, item, found, "CapacityProvider", "a capacity provider")
        numbers: dict[str, int] = {}
        for name, most in (("Base", 100000), ("Weight", 1000)):
            value = reader.value(found[name][1]) if name in found else 0
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= most:
                reader.report(found[name][1], f"{name} must be a whole number from 0 to {most}")
                value = 0
            numbers[name] = value
        if numbers["Base"] > 0:
            if with_base is not None:
                reader.report(
                    found["Base"][1],
                    f"only one capacity provider may have a Base, and {with_base} already has one",
                )
            with_base = with_base or provider or "another provider"
        strategy.append({"capacityProvider": provider or "", "base": numbers["Base"], "weight": numbers["Weight"]})
    return tuple(strategy)


# ---------------------------------------------------------------------------------------------------- normalized


def normalized(spec: AppSpec) -> dict[str, object]:
    """The ``spec`` object of ``deploybot appspec validate --json`` (DESIGN §3.1): plain JSON values."""
    if isinstance(spec, ServerAppSpec):
        return {
            "version": 0.0,
            "os": spec.os,
            "files": [{"source": f.source, "destination": f.destination} for f in spec.files],
            "permissions": [_permission_dict(p) for p in spec.permissions],
            "file_exists_behavior": spec.file_exists_behavior,
            "hooks": {
                str(event): [{"location": s.location, "timeout": s.timeout, "runas": s.runas} for s in scripts]
                for event, scripts in spec.hooks.items()
            },
        }
    hooks = {str(event): list(functions) for event, functions in spec.hooks.items()}
    if isinstance(spec, LambdaAppSpec):
        return {
            "version": 0.0,
            "function_name": spec.function_name,
            "alias": spec.alias,
            "current_version": spec.current_version,
            "target_version": spec.target_version,
            "hooks": hooks,
        }
    return {
        "version": 0.0,
        "task_definition": spec.task_definition,
        "container_name": spec.container_name,
        "container_port": spec.container_port,
        "platform_version": spec.platform_version,
        "network_configuration": copy.deepcopy(dict(spec.network_configuration or {})) or None,
        "capacity_provider_strategy": [dict(item) for item in spec.capacity_provider_strategy],
        "hooks": hooks,
    }


def _permission_dict(permission: Permission) -> dict[str, object]:
    context = permission.context
    return {
        "object": permission.object,
        "pattern": permission.pattern,
        "except": list(permission.except_),
        "type": sorted(permission.types),
        "owner": permission.owner,
        "group": permission.group,
        "mode": permission.mode,
        "acls": list(permission.acls),
        "context": {"name": context.name, "type": context.type, "range": context.range} if context else None,
    }
