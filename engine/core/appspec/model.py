"""AppSpec files for the server, Lambda and ECS platforms: parse and validate strictly, errors with line:column (pure).

The value types below are the contract the agent and the runner use; the parser fills them.

Policy (reference §0): a revision is refused before any host is touched if either the agent or the User Guide would
refuse it: quoted ``version``, ``os`` case, reserved or unknown hook names, relative destinations, two sources onto
one file, unquoted ``0755`` modes, more than 3600 s of explicit timeouts in one event, and so on. Unknown keys are
errors too (the agent ignores them, so a typo like ``hook:`` would silently drop every script). Messages reuse the
agent's wording and add the fix. ``EcsAppSpec.network_configuration`` and ``capacity_provider_strategy`` are kept in
the ECS API's own shape (``{"awsvpcConfiguration": {"subnets", "securityGroups", "assignPublicIp"}}``,
``{"capacityProvider", "base", "weight"}``) so an adapter can pass them on unchanged.

This module holds the value types, the entry points and ``AppSpecReader`` (the AppSpec wording on top of
engine.core.yamlnode's reader). The section rules are in engine.core.appspec.server (os, files, hooks),
engine.core.appspec.permissions (server permissions) and engine.core.appspec.serverless (Lambda and ECS).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.core.model import LifecycleEvent
from engine.core.yamlnode import (
    UNREADABLE,
    Entry,
    NodeReader,
    YamlLimits,
    as_written,
    did_you_mean,
    is_null,
    merged_entries,
    quoted,
    repeated_keys,
)


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

FAILED = "The deployment failed because"
"""How the agent starts a problem with the AppSpec file; the rules below reuse its wording."""


APPSPEC_LIMITS = YamlLimits(what="AppSpec", max_bytes=256 * 1024, max_nodes=20_000, max_depth=100)
"""The most an AppSpec may ask of the parser. Real ones are a few KiB; these refuse a 4 MB file of 300,000 keys
before it is parsed (size) and a small file whose aliases expand (nodes) in a fraction of a second."""


class AppSpecReader(NodeReader):
    """engine.core.yamlnode's reader with the AppSpec wording: problems name the section and say how to fix them."""

    limits = APPSPEC_LIMITS

    def mapping(self, node: Node, what: str) -> list[tuple[str, Node, Node]] | None:
        """The entries of a mapping node, keys as text; reports a non-mapping and repeated keys (the first counts)."""
        if not isinstance(node, MappingNode):
            self.report(node, f"{what} must be a mapping (key: value lines), not {quoted(node)}")
            return None
        try:
            pairs = merged_entries(node)
        except yaml.MarkedYAMLError as exc:
            self.report(node, yaml_message(exc))
            return None
        repeats = repeated_keys(node)
        for key, _ in repeats:
            self.report(key, f"{key.value!r} is given twice in {what}; keep one")
        skipped = {id(key) for key, _ in repeats}
        entries: list[tuple[str, Node, Node]] = []
        for key, value in pairs:
            if not isinstance(key, ScalarNode):
                self.report(key, f"the keys of {what} must be plain names, not {quoted(key)}")
            elif id(key) not in skipped:
                entries.append((key.value, key, value))
        return entries

    def known_keys(
        self,
        node: Node,
        names: Sequence[str],
        what: str,
        *,
        lower_too: bool = False,
        hints: Mapping[str, str] | None = None,
    ) -> dict[str, Entry] | None:
        """A mapping's known keys by canonical name; unknown keys are problems (a typo must not be ignored).

        ``lower_too`` also accepts the all-lower-case spelling (``currentversion``) the Lambda/ECS docs use.
        """
        entries = self.mapping(node, what)
        if entries is None:
            return None
        spelled = {name: name for name in names}
        if lower_too:
            spelled |= {name.lower(): name for name in names}
        found: dict[str, Entry] = {}
        for key_text, key, value in entries:
            name = spelled.get(key_text)
            if name is None:
                hint = (hints or {}).get(key_text.lower()) or spelling_hint(key_text, names)
                self.report(key, f"unknown key {key_text!r} in {what}{hint}; known keys: {', '.join(names)}")
            elif name in found:
                self.report(key, f"{name} is given twice in {what} (as {found[name].key.value} and {key_text})")
            else:
                found[name] = Entry(key, value)
        return found

    def sequence(self, node: Node, what: str, example: str) -> list[Node] | None:
        """The items of a list node; an empty value (``files:``) is an empty list, as for the agent."""
        if is_null(node):
            return []
        if not isinstance(node, SequenceNode):
            self.report(node, f"{what} must be a list (lines starting with '- ', e.g. {example}), not {quoted(node)}")
            return None
        return list(node.value)

    def text(self, node: Node, what: str) -> str | None:
        """A scalar as text. Numbers and dates keep what was written (a file named 2024 stays "2024")."""
        value = self.value(node)
        if value is None:
            return None
        if value is UNREADABLE or isinstance(value, bool):
            shown = quoted(node) if value is UNREADABLE else f"true/false ({node.value})"
            self.report_unreadable(node, f"{what} must be text, not {shown}; put it in quotes if it is meant as text")
            return None
        return value if isinstance(value, str) else str(node.value)

    def required(self, owner: Node, found: Mapping[str, Entry], name: str, what: str) -> str | None:
        """A required, non-empty text value of ``found``; reported at the owning mapping when missing."""
        if name not in found:
            self.report(owner, f"{what} needs {name!r}")
            return None
        text = (self.text(found[name].value, name) or "").strip()
        if not text:
            self.report(found[name].value, f"{name} must not be empty")  # not repeated for an unreadable value
        return text or None

    def optional_text(self, found: Mapping[str, Entry], name: str) -> str | None:
        text = self.text(found[name].value, name) if name in found else None
        return text.strip() if text is not None else None

    def whole_number(self, node: Node) -> int | None:
        """An integer written as a number or as digits in quotes (``"300"``), as the agent's ``to_i`` reads it."""
        value = self.value(node)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*\+?[0-9]+\s*", value):
            return int(value)
        return None


def spelling_hint(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'X'?)`` for a name close to one of ``choices`` in any case, or nothing."""
    return did_you_mean(word, choices, cutoff=0.7, ignore_case=True)


def yaml_message(exc: yaml.YAMLError) -> str:
    """A YAML syntax error in words, with the fix for the most common one (tabs)."""
    if isinstance(exc, yaml.reader.ReaderError):
        return f"YAML syntax error: {exc.reason} (#x{exc.character:04x})"
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"YAML syntax error: {exc}"
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


def check_version(reader: AppSpecReader, root: Node, entry: Entry | None) -> None:
    """``version`` must be the number 0.0 (the agent compares with ``[0.0].include?``, so ``"0.0"`` fails)."""
    message = (
        f"{FAILED} an invalid version value ({{}}) was entered in the application specification file. "
        'Make sure your AppSpec file specifies "0.0" as the version, and then try again.'
    )
    if entry is None:
        reader.report(root, message.format("") + " Add `version: 0.0` (a number, without quotes).")
        return
    node = entry.value
    value = reader.value(node)
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return
    fix = " Write `version: 0.0`."
    if isinstance(value, str) and value.strip() in ("0.0", "0"):
        fix = f' The quoted "{value}" is text, not a number: write `version: 0.0` without quotes.'
    reader.report(node, message.format(as_written(node)) + fix)
