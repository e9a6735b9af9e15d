"""core/yamlnode.py: the node reader both YAML formats share: positions, typed values, merge keys, repeats, hints."""

from __future__ import annotations

import datetime
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from yaml.nodes import MappingNode, Node

from engine.core.yamlnode import (
    UNREADABLE,
    NodeReader,
    YamlLimits,
    did_you_mean,
    merged_entries,
    repeated_keys,
)


def node_of(text: str) -> Node:
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    assert node is not None
    return node


def value_node(text: str) -> Node:
    """The value of the only key of a one-line mapping (so positions are on line 1)."""
    root = node_of(text)
    assert isinstance(root, MappingNode)
    return root.value[0][1]


def problems(reader: NodeReader) -> list[tuple[int, int, str, str]]:
    return [(p.line, p.column, p.message, p.path) for p in reader.sorted_problems()]


Read = Callable[[NodeReader, Node], Any]
TYPED: dict[str, tuple[str, Read, object, list[tuple[int, int, str, str]]]] = {
    "string": ("k: web", lambda r, n: r.string(n, "k"), "web", []),
    "empty string": ("k: ''", lambda r, n: r.string(n, "k"), None, [(1, 4, "expected a non-empty string", "k")]),
    "number as string": (
        "k: 12",
        lambda r, n: r.string(n, "k"),
        None,
        [(1, 4, "expected a string, got an integer", "k")],
    ),
    "integer": ("k: 0x10", lambda r, n: r.integer(n, "k"), 16, []),
    "integer too big": (
        "k: 70000",
        lambda r, n: r.integer(n, "k", 1, 65535),
        None,
        [(1, 4, "expected a value between 1 and 65535, got 70000", "k")],
    ),
    "float is a number": ("k: 2.5", lambda r, n: r.number(n, "k"), 2.5, []),
    "NaN is not a number": (
        "k: .nan",
        lambda r, n: r.number(n, "k"),
        None,
        [(1, 4, "expected a finite number, got .nan", "k")],
    ),
    "infinity is not a number": (
        "k: .inf",
        lambda r, n: r.number(n, "k", 1),
        None,
        [(1, 4, "expected a finite number, got .inf", "k")],
    ),
    "1e308 is past the default ceiling": (
        "k: 1.0e+308",
        lambda r, n: r.number(n, "k"),
        None,
        [(1, 4, "expected a value between 0 and 1000000000, got 1e+308", "k")],
    ),
    "an integer without a ceiling gets the default one": (
        "k: 99999999999999999999999",
        lambda r, n: r.integer(n, "k"),
        None,
        [(1, 4, "expected a value between 0 and 1000000000, got 99999999999999999999999", "k")],
    ),
    "boolean": ("k: yes", lambda r, n: r.boolean(n, "k"), True, []),
    "list is not a boolean": (
        "k: [a]",
        lambda r, n: r.boolean(n, "k"),
        None,
        [(1, 4, "expected true or false, got a list", "k")],
    ),
    "choice with a hint": (
        "k: in_place",
        lambda r, n: r.choice(n, "k", ("in-place", "blue-green")),
        None,
        [(1, 4, "expected one of in-place, blue-green, got 'in_place' (did you mean 'in-place'?)", "k")],
    ),
    "strings, repeats reported": (
        "k: [a, b, a]",
        lambda r, n: r.strings(n, "k"),
        ("a", "b"),
        [(1, 11, "'a' is listed twice", "k[2]")],
    ),
    "null list is empty": ("k: ~", lambda r, n: r.items(n, "k"), [], []),
    "mapping is not a list": (
        "k: {a: 1}",
        lambda r, n: r.items(n, "k"),
        [],
        [(1, 4, "expected a list, got a mapping", "k")],
    ),
    "string map": (
        "k: {env: prod, n: 1}",
        lambda r, n: r.string_map(n, "k"),
        {"env": "prod"},
        [(1, 19, "expected a string, got an integer", "k.n")],
    ),
    "plain value": ("k: {a: [1, x]}", lambda r, n: r.plain(n, "k"), {"a": [1, "x"]}, []),
    "unreadable scalar": (
        "k: !!int 0x_",
        lambda r, n: r.integer(n, "k"),
        None,
        [(1, 4, "cannot read '0x_': invalid literal for int() with base 16: ''", "k")],
    ),
}


@pytest.mark.parametrize("case", sorted(TYPED))
def test_typed_getters_give_a_value_or_a_located_problem(case: str) -> None:
    text, read, expected, expected_problems = TYPED[case]
    reader = NodeReader("f.yml")
    assert read(reader, value_node(text)) == expected
    assert problems(reader) == expected_problems


def test_fields_reports_unknown_missing_and_non_string_keys() -> None:
    reader = NodeReader("f.yml")
    node = value_node("server:\n  listn: a\n  1: b\n  extra: c\n")
    entries = reader.fields(node, "server", ("listen", "port"), required=("listen",))
    assert entries == {}
    assert problems(reader) == [
        (2, 3, "unknown key 'listn' (did you mean 'listen'?)", "server.listn"),
        (2, 3, "missing required key 'listen'", "server.listen"),
        (3, 3, "expected a string key, got an integer (quote it)", "server"),
        (4, 3, "unknown key 'extra'; expected one of: listen, port", "server.extra"),
    ]


def test_get_gives_the_default_for_absent_null_and_invalid_values() -> None:
    reader = NodeReader("f.yml")
    entries = reader.named(node_of("a: ~\nb: x\nc: 5\n"), "")
    assert [reader.get(entries, key, reader.integer, 7) for key in ("a", "b", "c", "missing")] == [7, 7, 5, 7]
    assert problems(reader) == [(2, 4, "expected an integer, got a string", "b")]


def test_merge_keys_own_keys_win_then_the_earlier_source() -> None:
    text = "a: &a {x: 1, y: 1}\nb: &b {x: 2, z: 2}\nc:\n  <<: [*a, *b]\n  y: 3\n"
    reader = NodeReader("f.yml")
    c = reader.named(node_of(text), "")["c"].value
    assert reader.plain(c, "c") == {"x": 1, "y": 3, "z": 2}
    assert {key: reader.value(entry.value) for key, entry in reader.named(c, "c").items()} == {"x": 1, "z": 2, "y": 3}
    assert problems(reader) == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("k:\n  <<: 3\n  a: 1\n", "expected a mapping or list of mappings for merging, but found scalar"),
        ("k:\n  <<: [{a: 1}, [2]]\n", "expected a mapping for merging, but found sequence"),
    ],
)
def test_bad_merge_values_are_worded_as_pyyaml_words_them(text: str, problem: str) -> None:
    node = value_node(text)
    with pytest.raises(yaml.MarkedYAMLError) as caught:
        merged_entries(node)  # type: ignore[arg-type]
    assert caught.value.problem == problem
    reader = NodeReader("f.yml")
    assert reader.named(node, "k") == {}
    assert problems(reader) == [(2, 3, f"bad merge key: {problem}", "k")]


def test_a_merge_cycle_ends() -> None:
    node = value_node("k: &a\n  <<: *a\n  b: 1\n")
    assert [key.value for key, _ in merged_entries(node)] == ["b"]  # type: ignore[arg-type]


def test_repeated_keys_are_found_everywhere_but_merge_keys_are_not_repeats() -> None:
    text = "x: &d {a: 1}\nk:\n  - <<: *d\n    <<: *d\n    b: 1\n    b: 2\n"
    root = node_of(text)
    assert repeated_keys(root) == []  # type: ignore[arg-type]
    reader = NodeReader("f.yml")
    reader.check_duplicates(root)
    assert problems(reader) == [(6, 5, "duplicate key 'b' (first given on line 5)", "k[0].b")]


@pytest.mark.parametrize(
    ("word", "choices", "options", "expected"),
    [
        ("Deployment_Config", ["deployment-config"], {}, " (did you mean 'deployment-config'?)"),
        ("timout", ["timeout", "runas"], {}, " (did you mean 'timeout'?)"),
        ("BEFOREINSTAL", ["BeforeInstall"], {}, ""),
        ("BEFOREINSTAL", ["BeforeInstall"], {"ignore_case": True}, " (did you mean 'BeforeInstall'?)"),
        ("zzz", ["web-1", "web-2"], {"list_known": True}, "; known: web-1, web-2"),
        ("zzz", ["web-1"], {}, ""),
    ],
)
def test_did_you_mean(word: str, choices: list[str], options: dict[str, Any], expected: str) -> None:
    assert did_you_mean(word, choices, **options) == expected


@pytest.mark.parametrize(
    ("text", "json_tabs", "expected"),
    [
        ("a: b: c\n", False, [(1, 5, "ScannerError", "")]),
        ("a: 1\nb: x\x07\n", False, [(2, 5, "ReaderError", "")]),
        ('{\n\t"a": "\t1"\n}\n', True, []),
        ('{\n\t"a": 1\n}\n', False, [(2, 1, "ScannerError", "")]),
    ],
)
def test_compose_locates_syntax_errors(text: str, json_tabs: bool, expected: list[tuple[int, int, str, str]]) -> None:
    reader = NodeReader("f.yml")
    root = reader.compose(text, lambda exc: type(exc).__name__, json_tabs=json_tabs)
    assert problems(reader) == expected
    assert (root is None) == bool(expected)
    if json_tabs:
        assert reader.plain(root, "") == {"a": "\t1"}  # type: ignore[arg-type]


def test_an_unreadable_value_is_reported_once() -> None:
    reader = NodeReader("f.yml")
    node = value_node("k: !custom x")
    assert reader.value(node) is UNREADABLE
    reader.report(node, "a later problem about the same value")
    assert problems(reader) == [(1, 4, "unsupported YAML tag !custom: remove it", "")]


# ---------------------------------------------------------------------------------------------------- hostile input

LIMITS = YamlLimits(what="test file", max_bytes=64 * 1024, max_nodes=200, max_depth=10)
"""Ten levels: the root mapping is the first, a value in it (a scalar too) the second."""


def composed(text: str, limits: YamlLimits = LIMITS) -> tuple[Node | None, list[tuple[int, int, str, str]]]:
    reader = NodeReader("f.yml", limits)
    root = reader.compose(text, lambda exc: f"syntax: {type(exc).__name__}")
    return root, problems(reader)


def composed_with_peak(text: str) -> tuple[Node | None, list[tuple[int, int, str, str]], int]:
    """``composed``, and the most memory it held at once (bytes, tracemalloc): a bound on its work that, unlike a
    stopwatch, no load on the machine can move."""
    tracemalloc.start()
    try:
        root, found = composed(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return root, found, peak


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("k: !!bool x\n", (1, 4, "'x' is not a valid !!bool value: fix it or remove the tag")),
        ("k: !!timestamp x\n", (1, 4, "'x' is not a valid !!timestamp value: fix it or remove the tag")),
        ('k: !!int ""\n', (1, 4, "'' is not a valid !!int value: fix it or remove the tag")),
        ("k: !!int 0x_\n", (1, 4, "cannot read '0x_': invalid literal for int() with base 16: ''")),
        ("k: !!python/object:os.system {}\n", (1, 4, "unsupported YAML tag !!python/object:os.system: remove it")),
        ("k: !!python/name:os.system x\n", (1, 4, "unsupported YAML tag !!python/name:os.system: remove it")),
        ("k: !!binary aGk=\n", (1, 4, "unsupported YAML tag !!binary: remove it")),
        ("k: !!set {a}\n", (1, 4, "unsupported YAML tag !!set: remove it")),
        ("k: !!str [a]\n", (1, 4, "unsupported YAML tag !!str: remove it")),
        ("k: !custom x\n", (1, 4, "unsupported YAML tag !custom: remove it")),
    ],
)
def test_tags_outside_the_safe_set_and_bad_tagged_scalars_are_located(
    text: str, expected: tuple[int, int, str]
) -> None:
    root, found = composed(text)
    assert root is not None
    assert found == [(*expected, "")]


def test_safe_tags_are_read() -> None:
    root, found = composed("a: !!bool yes\nb: !!int '7'\nc: !!str 1\nd: !!timestamp 2024-01-02\ne: !!map {}\n")
    assert found == []
    reader = NodeReader("f.yml")
    assert reader.plain(root, "") == {"a": True, "b": 7, "c": "1", "d": datetime.date(2024, 1, 2), "e": {}}  # type: ignore[arg-type]


def test_a_refused_scalar_is_reported_once_and_read_as_unreadable() -> None:
    reader = NodeReader("f.yml")
    root = reader.compose("k: !!bool x\n", str)
    assert isinstance(root, MappingNode)
    assert reader.boolean(root.value[0][1], "k") is None
    assert reader.plain(root, "") == {"k": None}
    assert problems(reader) == [(1, 4, "'x' is not a valid !!bool value: fix it or remove the tag", "")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("k: " + "[" * 5000 + "]" * 5000, (1, 14, "the test file nests deeper than 10 levels: the nesting limit")),
        (
            "k: " + "{a: " * 5000 + "1" + "}" * 5000,
            (1, 37, "the test file nests deeper than 10 levels: the nesting limit"),
        ),
        (
            "".join(f"{'  ' * level}k:\n" for level in range(12)),
            (10, 19, "the test file nests deeper than 10 levels: the nesting limit"),
        ),
        (
            "a: &a [[[[[[[[x]]]]]]]]\nb: [[*a]]\n",
            (2, 6, "the test file nests deeper than 10 levels (through alias *a): the nesting limit"),
        ),
    ],
    ids=["flow-lists", "flow-mappings", "block-mappings", "through-an-alias"],
)
def test_nesting_past_the_depth_limit_is_one_located_problem(text: str, expected: tuple[int, int, str]) -> None:
    root, found = composed(text)
    assert root is None
    assert found == [(*expected, "")]


def test_a_billion_laughs_stops_at_the_alias_that_crosses_the_node_limit() -> None:
    text = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    text += "".join(
        f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]\n" for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
    )
    root, found, peak = composed_with_peak(text)
    assert peak < 1_000_000  # bytes: stopped where it crossed, not after expanding (~10^9 values, no machine has that)
    assert root is None
    assert found == [
        (3, 8, "the test file has more than 200 values (through alias *b): the limit for one test file", "")
    ]


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    root, found = composed("a: &a\n  b: *a\n")
    assert root is None
    assert found == [
        (2, 6, "alias *a is inside the node it refers to (a cycle): anchors cannot refer to themselves", "")
    ]


def test_a_document_past_the_size_limit_is_refused_before_it_is_read() -> None:
    text = "a: 1\n" + "".join(f"k{index}: v\n" for index in range(300_000))
    root, found, peak = composed_with_peak(text)
    assert peak < 2 * len(text) + 1_000_000  # composing it would allocate ~100 times its size (~1 KB a line)
    assert root is None
    assert found == [
        (7406, 6, f"the test file is {len(text):,} bytes, over the limit of 65,536 bytes for one test file", "")
    ]


def test_the_node_limit_counts_values_keys_and_collections() -> None:
    assert composed("[" + ", ".join(["x"] * 199) + "]")[1] == []
    root, found = composed("[" + ", ".join(["x"] * 200) + "]")
    assert (root, found) == (
        None,
        [(1, 599, "the test file has more than 200 values: the limit for one test file", "")],
    )
