"""One reader for YAML node trees (pure): every value keeps its line:column and every problem is collected.

Both YAML formats people write by hand (appspec.yml and the deploybot config) are read from PyYAML's node tree
(``yaml.compose``, never ``yaml.load``), because only nodes keep their marks and show keys given twice (the
constructor silently keeps the last one). ``NodeReader`` turns nodes into typed values and each failure into a
``Problem`` at the node it is about, then hands the caller a default so it can go on and find the rest: someone
fixing a file wants the whole list at once. Merge keys (``<<: *defaults``) work.

The typed getters word problems as "expected X, got Y"; a format may put its own wording on top (core/appspec
speaks the CodeDeploy agent's).

Hostile input is refused with a position, never a traceback: ``compose`` reads through a composer that enforces
``YamlLimits`` (the size of the text, the number of nodes counting each alias as the nodes it stands for, so a
"billion laughs" stops at the alias that crosses the limit, and the nesting depth, so no walk can recurse without
bound) and refuses explicit tags outside the safe set (``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``,
``!!timestamp``, ``!!map``, ``!!seq``) and explicitly tagged scalars it cannot read (``!!bool x``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.error import Mark
from yaml.events import AliasEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.core.errors import Problem

TAG = "tag:yaml.org,2002:"
NULL_TAG = TAG + "null"
MERGE_TAG = TAG + "merge"
UNREADABLE = object()
"""What ``NodeReader.value`` gives for a mapping, a list or a scalar it cannot read."""

_T = TypeVar("_T")
_D = TypeVar("_D")
_N = TypeVar("_N", int, float)
_SCALAR_TAGS = {TAG + name for name in ("null", "bool", "int", "float", "str", "timestamp")}
_KINDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false", "null": "null"}
_KINDS |= {"timestamp": "a date", "binary": "binary data", "set": "a set", "omap": "an ordered mapping"}
LARGEST_NUMBER = 1_000_000_000
"""The ceiling of a number whose key sets none: no count, size or duration deploybot reads comes near it, and it
keeps every value far from what a timedelta, a sleep or an SQLite integer can hold."""
_COLLECTION_TAGS = {TAG + "map", TAG + "seq"}
_CONSTRUCTOR = SafeConstructor()
"""PyYAML's safe constructor for single scalars; it is stateless for them (no document, no anchors)."""
_CONSTRUCT_ERRORS = (yaml.YAMLError, ValueError, LookupError, AttributeError, TypeError, OverflowError)
"""What PyYAML's scalar constructors raise for a value their tag does not fit (``!!bool x`` is a KeyError,
``!!timestamp x`` an AttributeError, ``!!int ""`` an IndexError)."""


@dataclass(frozen=True, slots=True)
class YamlLimits:
    """The most work one document may ask for; each is checked before or while composing, never after."""

    what: str = "document"
    """What the document is, for messages ("AppSpec", "config file")."""
    max_bytes: int = 2 * 1024 * 1024
    max_nodes: int = 200_000
    """Values, keys and collections, each alias counted as every node it stands for."""
    max_depth: int = 100
    """Collections inside collections, through aliases too."""


class YamlRefused(yaml.MarkedYAMLError):
    """A document the composer will not go on reading (a limit, a cycle); ``problem`` is the whole message."""


def shown_tag(tag: str) -> str:
    """A tag as people write it: ``!!bool`` rather than ``tag:yaml.org,2002:bool``."""
    return "!!" + tag.removeprefix(TAG) if tag.startswith(TAG) else tag


def construct_scalar(node: ScalarNode) -> tuple[object, str | None]:
    """A scalar of one of the safe tags as Python, or ``(UNREADABLE, why)``."""
    construct = yaml.SafeLoader.yaml_constructors.get(node.tag) if node.tag in _SCALAR_TAGS else None
    if construct is None:
        return UNREADABLE, f"unsupported YAML tag {shown_tag(node.tag)}: remove it"
    try:
        return construct(_CONSTRUCTOR, node), None
    except _CONSTRUCT_ERRORS as exc:
        if isinstance(exc, ValueError):
            return UNREADABLE, f"cannot read {node.value!r}: {exc}"
        return UNREADABLE, f"{node.value!r} is not a valid {shown_tag(node.tag)} value: fix it or remove the tag"


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader whose composer counts, measures depth and checks explicit tags as it goes.

    Each anchored node remembers how many nodes it stands for and how deep it goes, so an alias adds its whole
    expansion without being expanded. An alias to a node still being composed (a cycle) is refused: it would
    expand forever.
    """

    def __init__(self, text: str, limits: YamlLimits) -> None:
        super().__init__(text)
        self.limits = limits
        self.nodes = 0
        self.depth = 0
        self.deepest = 0
        self.expansions: dict[int, tuple[int, int]] = {}  # id(anchored node) -> (nodes, height)
        self.rejected: list[tuple[Node, str]] = []

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            anchored = self.anchors.get(event.anchor)
            if anchored is not None:
                size, height = self._expansion(anchored, str(event.anchor), event.start_mark)
                self._count(size, self.depth + height, event.start_mark, f"alias *{event.anchor}")
            return self._composed(parent, index)
        self._count(1, self.depth + 1, event.start_mark, "")
        start, outer_deepest = self.nodes, self.deepest
        self.depth += 1
        self.deepest = self.depth
        node = self._composed(parent, index)
        self.depth -= 1
        if event.anchor is not None:
            self.expansions[id(node)] = (self.nodes - start + 1, self.deepest - self.depth)
        self.deepest = max(outer_deepest, self.deepest)
        if event.tag not in (None, "!"):
            self._check_tag(node, isinstance(event, ScalarEvent))
        return node

    def _composed(self, parent: Node | None, index: Any) -> Node:
        node = super().compose_node(parent, index)
        assert node is not None  # PyYAML composes a node from every node event
        return node

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        """The scanner's ``[`` and ``{``: refused past the depth limit here already, because the scanner looks up to
        1,024 characters ahead for each open bracket (a possible key) and that look-ahead is quadratic."""
        if self.flow_level >= self.limits.max_depth:
            self._count(0, self.flow_level + 1, self.get_mark(), "")
        super().fetch_flow_collection_start(token_class)

    def _expansion(self, node: Node, anchor: str, mark: Any) -> tuple[int, int]:
        if id(node) not in self.expansions:
            message = f"alias *{anchor} is inside the node it refers to (a cycle): anchors cannot refer to themselves"
            raise YamlRefused(problem=message, problem_mark=mark)
        return self.expansions[id(node)]

    def _count(self, nodes: int, depth: int, mark: Any, through: str) -> None:
        self.nodes += nodes
        by = f" (through {through})" if through else ""
        limits = self.limits
        if self.nodes > limits.max_nodes:
            message = (
                f"the {limits.what} has more than {limits.max_nodes:,} values{by}: the limit for one {limits.what}"
            )
            raise YamlRefused(problem=message, problem_mark=mark)
        if depth > limits.max_depth:
            message = f"the {limits.what} nests deeper than {limits.max_depth} levels{by}: the nesting limit"
            raise YamlRefused(problem=message, problem_mark=mark)

    def _check_tag(self, node: Node, scalar: bool) -> None:
        if isinstance(node, ScalarNode) and scalar:
            _, why = construct_scalar(node)
            if why is not None:
                self.rejected.append((node, why))
        elif node.tag not in _COLLECTION_TAGS:
            self.rejected.append((node, f"unsupported YAML tag {shown_tag(node.tag)}: remove it"))


def compose_limited(text: str, limits: YamlLimits) -> tuple[Node | None, list[tuple[Node, str]]]:
    """The node tree of a one-document text and its scalars refused for their tags.

    Raises ``YamlRefused`` past a limit and ``yaml.YAMLError`` for a syntax error.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        line, column = _position_of_byte(text, limits.max_bytes)
        message = (
            f"the {limits.what} is {size:,} bytes, over the limit of {limits.max_bytes:,} bytes for one {limits.what}"
        )
        raise YamlRefused(problem=message, problem_mark=Mark("", limits.max_bytes, line - 1, column - 1, "", 0))
    loader = _LimitedLoader(text, limits)
    try:
        node: Node | None = loader.get_single_node()
        return node, loader.rejected
    finally:
        loader.dispose()


def _position_of_byte(text: str, offset: int) -> tuple[int, int]:
    """Line and column (1-based) of the character holding byte ``offset`` of the UTF-8 text."""
    index = len(text.encode("utf-8", "surrogatepass")[:offset].decode("utf-8", "ignore"))
    before = text[:index]
    return before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1


class Entry(NamedTuple):
    """A mapping entry: the key node (for "unknown key" problems), the value node and its dotted key path."""

    key: Node
    value: Node
    path: str = ""


def position(node: Node) -> tuple[int, int]:
    """Where a node starts, 1-based (PyYAML's marks are 0-based)."""
    return node.start_mark.line + 1, node.start_mark.column + 1


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == NULL_TAG


def kind(node: Node) -> str:
    """The type of a node in words: "a mapping", "a list", "an integer", ..."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _KINDS.get(node.tag.removeprefix(TAG), f"a {node.tag} value")


def quoted(node: Node) -> str:
    """A node for a message: a scalar quoted as written, "empty" for null, "a mapping" or "a list" otherwise."""
    if isinstance(node, MappingNode | SequenceNode):
        return kind(node)
    return "empty" if node.tag == NULL_TAG else repr(node.value)


def as_written(node: Node) -> str:
    """A scalar exactly as the user wrote it (``0755``, not 493); other nodes as ``quoted`` gives them."""
    return str(node.value) if isinstance(node, ScalarNode) else quoted(node)


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def did_you_mean(
    word: str, choices: Iterable[str], *, cutoff: float = 0.6, ignore_case: bool = False, list_known: bool = False
) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to ``word``; with ``list_known`` a short list otherwise.

    A choice that differs only in case, ``_`` or ``-`` always matches. ``ignore_case`` compares lower-cased
    spellings when looking for a close one.
    """
    options = [str(choice) for choice in choices]
    match = {_folded(option): option for option in options}.get(_folded(word))
    if match is None and ignore_case:
        lowered = {option.lower(): option for option in options}
        close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=cutoff)
        match = lowered[close[0]] if close else None
    elif match is None:
        match = next(iter(difflib.get_close_matches(word, options, n=1, cutoff=cutoff)), None)
    if match:
        return f" (did you mean {match!r}?)"
    return f"; known: {', '.join(options)}" if list_known and 0 < len(options) <= 12 else ""


def _folded(word: str) -> str:
    return word.casefold().replace("_", "-")


def merged_entries(node: MappingNode, _resolving: frozenset[int] = frozenset()) -> list[tuple[Node, Node]]:
    """A mapping's entries with ``<<`` merge keys resolved (YAML 1.1's merge key type).

    Keys written in the mapping win over merged ones, and an earlier source wins over a later one
    (``<<: [*a, *b]``). Merged entries come first, then the mapping's own, keys given twice included (whether the
    first or the last counts is the caller's rule). Raises ``yaml.MarkedYAMLError``, worded as PyYAML words it,
    for a merge value that is not a mapping or a list of mappings.
    """
    own = [(key, value) for key, value in node.value if key.tag != MERGE_TAG]
    if len(own) == len(node.value) or id(node) in _resolving:
        return own
    sources: list[MappingNode] = []
    for key, value in node.value:
        if key.tag != MERGE_TAG:
            continue
        if isinstance(value, MappingNode):
            sources.append(value)
        elif isinstance(value, SequenceNode):
            for source in value.value:
                if not isinstance(source, MappingNode):
                    found = f"expected a mapping for merging, but found {source.id}"
                    raise ConstructorError("while constructing a mapping", node.start_mark, found, source.start_mark)
                sources.append(source)
        else:
            found = f"expected a mapping or list of mappings for merging, but found {value.id}"
            raise ConstructorError("while constructing a mapping", node.start_mark, found, value.start_mark)
    taken = {key.value for key, _ in own if isinstance(key, ScalarNode)}
    merged: list[tuple[Node, Node]] = []
    for source in sources:
        for key, value in merged_entries(source, _resolving | {id(node)}):
            name = key.value if isinstance(key, ScalarNode) else None
            if name is None or name not in taken:
                merged.append((key, value))
            if name is not None:
                taken.add(name)
    return merged + own


def repeated_keys(node: MappingNode) -> list[tuple[Node, Node]]:
    """The keys a mapping gives again, each with the key it repeats (merge keys are not repeats)."""
    first: dict[str, Node] = {}
    repeats: list[tuple[Node, Node]] = []
    for key, _ in node.value:
        if isinstance(key, ScalarNode) and key.tag != MERGE_TAG:
            if key.value in first:
                repeats.append((key, first[key.value]))
            first.setdefault(key.value, key)
    return repeats


def syntax_position(exc: yaml.YAMLError, text: str) -> tuple[int, int]:
    """Where a YAML syntax error is, 1-based: its problem mark, its context mark, the bad character, or 1:1."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        return (mark.line + 1, mark.column + 1) if mark else (1, 1)
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[: exc.position]
        return before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
    return 1, 1


def json_tabs_to_spaces(text: str) -> str:
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


class NodeReader:
    """Typed access to YAML nodes; every failure becomes a Problem, and the caller gets a default to go on with."""

    limits = YamlLimits()
    """What ``compose`` allows; a format sets its own (class attribute or ``limits=``)."""

    def __init__(self, filename: str, limits: YamlLimits | None = None) -> None:
        self.filename = filename
        self.problems: list[Problem] = []
        self._unreadable: set[int] = set()
        if limits is not None:
            self.limits = limits

    # ------------------------------------------------------------------------------------------------ problems

    def report(self, node: Node, message: str, path: str = "") -> None:
        """A problem at ``node``, unless the node could not be read at all (that problem explains this one)."""
        if id(node) not in self._unreadable:
            self.report_at(*position(node), message, path)

    def report_unreadable(self, node: Node, message: str, path: str = "") -> None:
        self.report(node, message, path)
        self._unreadable.add(id(node))

    def report_at(self, line: int, column: int, message: str, path: str = "") -> None:
        self.problems.append(Problem(self.filename, line, column, message, path))

    def expect(self, node: Node, expected: str, path: str) -> None:
        self.report(node, f"expected {expected}, got {kind(node)}", path)

    def sorted_problems(self) -> list[Problem]:
        return sorted(self.problems, key=lambda problem: (problem.line, problem.column))

    # ------------------------------------------------------------------------------------------------ documents

    def compose(self, text: str, describe: Callable[[yaml.YAMLError], str], *, json_tabs: bool = False) -> Node | None:
        """The node tree of a one-document text; None when it is empty or, with a problem reported, invalid.

        ``describe`` words a syntax error. ``json_tabs`` accepts JSON with tabs between tokens (JSON allows
        them, YAML does not). A document past ``self.limits`` is one problem, worded here; scalars refused for
        their tags are reported and read as unreadable.
        """
        try:
            root, rejected = compose_limited(text, self.limits)
        except YamlRefused as exc:
            self.report_at(*syntax_position(exc, text), str(exc.problem))
            return None
        except yaml.YAMLError as exc:
            problem = str(getattr(exc, "problem", ""))
            if json_tabs and "'\\t'" in problem and text.lstrip("\ufeff \r\n").startswith(("{", "[")):
                return self.compose(json_tabs_to_spaces(text), describe)
            self.report_at(*syntax_position(exc, text), describe(exc))
            return None
        for node, why in rejected:
            self.report_unreadable(node, why)
        return root

    def check_duplicates(self, node: Node, path: str = "", seen: set[int] | None = None) -> None:
        """Report repeated mapping keys anywhere in the tree (merge keys are not repeats)."""
        seen = set() if seen is None else seen
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                self.check_duplicates(item, f"{path}[{index}]", seen)
        elif isinstance(node, MappingNode):
            for key, first in repeated_keys(node):
                line = first.start_mark.line + 1
                self.report(key, f"duplicate key {key.value!r} (first given on line {line})", join(path, key.value))
            for key, value in node.value:
                self.check_duplicates(value, join(path, str(key.value) if isinstance(key, ScalarNode) else ""), seen)

    # ------------------------------------------------------------------------------------------------ values

    def value(self, node: Node, path: str = "") -> object:
        """The Python value of a scalar as YAML 1.1 reads it (``0755`` is 493); ``UNREADABLE`` otherwise."""
        if not isinstance(node, ScalarNode):
            return UNREADABLE
        value, why = construct_scalar(node)
        if why is not None:
            self.report_unreadable(node, why, path)
        return value

    def plain(self, node: Node, path: str) -> object:
        """Any YAML value as plain Python (lists, mappings and all); None after a problem.

        Built here from the nodes (scalars through ``value``), not by PyYAML's constructor, so the same tags are
        refused everywhere and every problem has its position. Depth is bounded by the composer's limits.
        """
        if isinstance(node, ScalarNode):
            value = self.value(node, path)
            return None if value is UNREADABLE else value
        if isinstance(node, SequenceNode):
            return [self.plain(item, f"{path}[{index}]") for index, item in enumerate(node.value)]
        if not isinstance(node, MappingNode):
            return None
        try:
            pairs = merged_entries(node)
        except yaml.MarkedYAMLError as exc:
            self.report(node, f"cannot read value: {exc.problem}", path)
            return None
        mapping: dict[object, object] = {}
        for key, value in pairs:
            name = self.value(key, path) if isinstance(key, ScalarNode) else UNREADABLE
            if name is UNREADABLE:
                self.report(key, f"cannot read value: a key must be a plain value, not {kind(key)}", path)
                return None
            mapping[name] = self.plain(value, join(path, str(name)))
        return mapping

    def scalar(self, node: Node, path: str, kinds: Collection[str], expected: str) -> object:
        """A scalar of one of the YAML ``kinds`` ("str", "int", ...); None after a problem."""
        if not (isinstance(node, ScalarNode) and node.tag.removeprefix(TAG) in kinds):
            self.expect(node, expected, path)
            return None
        value = self.value(node, path)
        return None if value is UNREADABLE else value

    # The typed getters below narrow with isinstance only for the type checker: a scalar of the YAML kinds they ask
    # for is always constructed as the matching Python type (str → str, int → int, float → float, bool → bool).

    def string(self, node: Node, path: str) -> str | None:
        value = self.scalar(node, path, {"str"}, "a string")
        if value == "":
            self.report(node, "expected a non-empty string", path)
            return None
        return value if isinstance(value, str) else None

    def url(self, node: Node, path: str) -> str | None:
        """An http:// or https:// URL with a host."""
        value = self.string(node, path)
        if value is not None and not (urlsplit(value).scheme in ("http", "https") and urlsplit(value).netloc):
            self.report(node, f"expected an http:// or https:// URL, got {value!r}", path)
            return None
        return value

    def integer(self, node: Node, path: str, low: int = 0, high: int = LARGEST_NUMBER) -> int | None:
        value = self.scalar(node, path, {"int"}, "an integer")
        return self._within(node, path, value, low, high) if isinstance(value, int) else None

    def number(self, node: Node, path: str, low: float = 0, high: float = LARGEST_NUMBER) -> float | None:
        value = self.scalar(node, path, {"int", "float"}, "a number")
        return self._within(node, path, float(value), low, high) if isinstance(value, int | float) else None

    def _within(self, node: Node, path: str, value: _N, low: float, high: float) -> _N | None:
        if not math.isfinite(value):
            self.report(node, f"expected a finite number, got {as_written(node)}", path)
            return None
        if not low <= value <= high:
            self.report(node, f"expected a value between {low} and {high}, got {value}", path)
            return None
        return value

    def boolean(self, node: Node, path: str) -> bool | None:
        value = self.scalar(node, path, {"bool"}, "true or false")
        return value if isinstance(value, bool) else None

    def choice(self, node: Node, path: str, choices: Collection[str]) -> str | None:
        value = self.scalar(node, path, {"str"}, f"one of {', '.join(choices)}")
        if not isinstance(value, str):
            return None
        if value not in choices:
            hint = did_you_mean(value, choices)
            self.report(node, f"expected one of {', '.join(choices)}, got {value!r}{hint}", path)
            return None
        return value

    # ------------------------------------------------------------------------------------------------ collections

    def named(self, node: Node, path: str, allowed: Collection[str] | None = None) -> dict[str, Entry]:
        """A mapping from string keys to entries; null is empty; the last of repeated keys wins (reported apart)."""
        if is_null(node):
            return {}
        if not isinstance(node, MappingNode):
            self.expect(node, "a mapping", path)
            return {}
        try:
            pairs = merged_entries(node)
        except yaml.MarkedYAMLError as exc:
            self.report(node, f"bad merge key: {exc.problem}", path)
            return {}
        entries: dict[str, Entry] = {}
        for key, value in pairs:
            if not (isinstance(key, ScalarNode) and key.tag == TAG + "str"):
                self.report(key, f"expected a string key, got {kind(key)} (quote it)", path)
                continue
            if allowed is not None and key.value not in allowed:
                hint = did_you_mean(key.value, allowed) or f"; expected one of: {', '.join(sorted(allowed))}"
                self.report(key, f"unknown key {key.value!r}{hint}", join(path, key.value))
                continue
            entries[key.value] = Entry(key, value, join(path, key.value))
        return entries

    def fields(
        self, node: Node, path: str, allowed: Collection[str], required: Collection[str] = ()
    ) -> dict[str, Entry]:
        """A mapping with a fixed set of keys; null counts as an empty mapping unless some keys are required."""
        if required and is_null(node):
            self.expect(node, "a mapping", path)
        entries = self.named(node, path, allowed=allowed)
        for key in required:
            if key not in entries and isinstance(node, MappingNode):
                self.report(node, f"missing required key {key!r}", join(path, key))
        return entries

    def items(self, node: Node, path: str) -> list[tuple[Node, str]]:
        """A list's items with their paths; null counts as an empty list."""
        if is_null(node):
            return []
        if not isinstance(node, SequenceNode):
            self.expect(node, "a list", path)
            return []
        return [(item, f"{path}[{index}]") for index, item in enumerate(node.value)]

    def strings(self, node: Node, path: str) -> tuple[str, ...]:
        """A list of distinct non-empty strings."""
        values: list[str] = []
        for item, item_path in self.items(node, path):
            value = self.string(item, item_path)
            if value is not None and value in values:
                self.report(item, f"{value!r} is listed twice", item_path)
            elif value is not None:
                values.append(value)
        return tuple(values)

    def string_map(self, node: Node, path: str) -> dict[str, str]:
        pairs = {key: self.string(entry.value, entry.path) for key, entry in self.named(node, path).items()}
        return {key: value for key, value in pairs.items() if value is not None}

    def get(
        self, entries: Mapping[str, Entry], key: str, read: Callable[..., _T | None], default: _D, *args: object
    ) -> _T | _D:
        """``read`` the value under ``key``; absent, null or invalid values give ``default`` (which may be of
        another type than what ``read`` gives, e.g. None, or 0 for a number)."""
        entry = entries.get(key)
        if entry is None or is_null(entry.value):
            return default
        value = read(entry.value, entry.path, *args)
        return default if value is None else value
