"""Seeded fuzzing of both YAML formats through the doors that read them (issue 17, item 2).

Every AppSpec and config file of the repository (tests/data, examples/, config/) is mutated deterministically
(``random.Random(seed)``: byte flips, truncation, duplicated slices, inserted tags, deep nesting, alias bombs, odd
characters) and each mutant goes through the entry points users reach: ``deploybot appspec validate --json`` and
``deploybot config check --json`` (their ``run_*`` functions, in process, reading the file from disk), and for
AppSpecs the revision store the API's upload and ``plan`` use (a real bundle, a real SQLite store). Any exception
other than the format's own error fails the test, and so does any reported problem without a line and column inside
the file. The count and the time are printed (``pytest -s``); the count is bounded below, the time is reported,
not asserted (a loaded machine is slower, not wrong; pytest-timeout ends a hang).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.cli.appspec_cmd import run_validate
from bot.cli.config_cmd import run_check
from engine.adapters.clock import SystemClock
from engine.core.errors import AppSpecInvalid
from engine.core.model import Platform
from engine.runtime.revisions import RevisionStore
from engine.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
CASES_PER_FILE = 25
"""Mutants per corpus file: 63 files, so 1,575 mutants and 3,000 cases (each AppSpec mutant goes through two doors)."""

TAGS = (
    "!!bool ",
    "!!timestamp ",
    "!!int ",
    "!!float ",
    "!!null ",
    "!!str ",
    "!!binary ",
    "!!set ",
    "!!omap ",
    "!!map ",
    "!!seq ",
    "!!python/object:os.system ",
    "!!python/name:os.system ",
    "!custom ",
    "!<tag:yaml.org,2002:bool> ",
    "!!merge ",
    "!!value ",
)
ODD = ("\x00", "\t", "\x85", "\ufeff", "\u2028", "&", "*", "<<: ", "? ", "|", ">", "%", "@", "`", '"', "'", "\\")


def appspec_corpus() -> list[tuple[Path, Platform]]:
    files = [
        (path, Platform(path.parent.name))
        for path in sorted((ROOT / "tests" / "data" / "appspec").glob("*/*"))
        if path.suffix in (".yml", ".yaml", ".json")
    ]
    files.append((ROOT / "examples" / "hello" / "appspec.yml", Platform.SERVER))
    files.append((ROOT / "examples" / "aws" / "greeter-appspec.yml", Platform.LAMBDA))
    return files


def config_corpus() -> list[Path]:
    return sorted([*(ROOT / "tests" / "data" / "config").glob("*.yml"), *(ROOT / "config").glob("*.yml")])


# ---------------------------------------------------------------------------------------------------- mutations


def _flip(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data or b" ")
    for _ in range(rng.randint(1, 4)):
        index = rng.randrange(len(out))
        out[index] = rng.randrange(256) if rng.random() < 0.5 else out[index] ^ (1 << rng.randrange(8))
    return bytes(out)


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def _duplicate(rng: random.Random, data: bytes) -> bytes:
    start = rng.randrange(len(data) + 1)
    end = min(len(data), start + rng.randint(1, 200))
    at = rng.randrange(len(data) + 1)
    return data[:at] + data[start:end] + data[at:]


def _value_positions(data: bytes) -> list[int]:
    """Where a value starts: after ``: `` or ``- `` (so an inserted tag lands on a value)."""
    return [i + 2 for i in range(len(data) - 1) if data[i : i + 2] in (b": ", b"- ")] or [0]


def _tag(rng: random.Random, data: bytes) -> bytes:
    at = rng.choice(_value_positions(data))
    return data[:at] + rng.choice(TAGS).encode() + data[at:]


def _nest(rng: random.Random, data: bytes) -> bytes:
    depth = rng.choice((50, 99, 100, 101, 300, 5000))
    at = rng.choice(_value_positions(data))
    end = data.find(b"\n", at)
    end = len(data) if end < 0 else end
    value = data[at:end] or b"x"
    opening, closing = (b"[", b"]") if rng.random() < 0.5 else (b"{a: ", b"}")
    nested = opening * depth + value + closing * depth
    return data[:at] + nested + data[end:]


def _bomb(rng: random.Random, data: bytes) -> bytes:
    levels = rng.randint(3, 9)
    lines = ['x-l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"x-l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 10)}]")
    bomb = ("\n".join(lines) + "\n").encode()
    return bomb + data if rng.random() < 0.5 else data + b"\n" + bomb


def _odd(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.choice(ODD).encode() + data[at:]


def _indent(rng: random.Random, data: bytes) -> bytes:
    lines = data.split(b"\n")
    index = rng.randrange(len(lines))
    lines[index] = (b" " * rng.randint(1, 5) + lines[index]) if rng.random() < 0.5 else lines[index].lstrip()
    return b"\n".join(lines)


MUTATIONS: tuple[Callable[[random.Random, bytes], bytes], ...] = (
    _flip,
    _truncate,
    _duplicate,
    _tag,
    _tag,
    _nest,
    _bomb,
    _odd,
    _indent,
)


def mutants(path: Path, seed: int) -> list[bytes]:
    """``CASES_PER_FILE`` mutants of a file, the same every run (seeded by ``seed`` and the file's name)."""
    rng = random.Random(f"{seed}:{path.relative_to(ROOT)}")
    original = path.read_bytes()
    cases = []
    for _ in range(CASES_PER_FILE):
        data = original
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            data = rng.choice(MUTATIONS)(rng, data)
        cases.append(data)
    return cases


# ---------------------------------------------------------------------------------------------------- doors


def _quiet(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = run(args)
    return code, json.loads(stdout.getvalue())


def _check_located(errors: list[dict[str, Any]], data: bytes, what: str) -> None:
    lines = data.count(b"\n") + 2
    for error in errors:
        assert isinstance(error["line"], int) and 1 <= error["line"] <= lines, (what, error)
        assert isinstance(error["column"], int) and error["column"] >= 1, (what, error)
        assert error["message"], (what, error)


def _describe(path: Path, index: int, data: bytes) -> str:
    return f"{path.relative_to(ROOT)} mutant {index}: {data[:300]!r}"


async def _through_the_revision_store(revisions: RevisionStore, tmp: Path, data: bytes, platform: Platform) -> None:
    """The API's way in: a revision directory with this appspec.yml, stored as a bundle (or refused with problems)."""
    source = tmp / "revision"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir()
    (source / "appspec.yml").write_bytes(data)
    try:
        await revisions.add(source, platform=platform)
    except AppSpecInvalid as exc:
        errors = [{"line": p.line, "column": p.column, "message": p.message} for p in exc.problems]
        _check_located(errors, data, "revision store")
        assert errors


async def test_mutated_appspecs_and_configs_give_located_problems_never_a_traceback(tmp_path: Path) -> None:
    started = time.perf_counter()
    count = 0
    file = tmp_path / "mutant.yml"
    store = await SqliteStore.open(tmp_path / "var" / "deploybot.db")
    revisions = RevisionStore(store, tmp_path / "var" / "revisions", SystemClock())
    try:
        for path, platform in appspec_corpus():
            for index, data in enumerate(mutants(path, seed=17)):
                file.write_bytes(data)
                args = argparse.Namespace(file=str(file), platform=platform.value, json=True)
                code, document = _quiet(run_validate, args)
                assert code in (0, 1) and document["valid"] is (code == 0), _describe(path, index, data)
                _check_located(document["errors"], data, _describe(path, index, data))
                assert document["valid"] or document["errors"], _describe(path, index, data)
                await _through_the_revision_store(revisions, tmp_path, data, platform)
                count += 2
        for path in config_corpus():
            for index, data in enumerate(mutants(path, seed=17)):
                file.write_bytes(data)
                code, document = _quiet(run_check, argparse.Namespace(file=str(file), json=True))
                assert code in (0, 1) and document["valid"] is (code == 0), _describe(path, index, data)
                _check_located(document["errors"], data, _describe(path, index, data))
                count += 1
    finally:
        await store.close()
    elapsed = time.perf_counter() - started
    print(f"\nfuzzed {count} cases in {elapsed:.1f} s")  # reported, not asserted
    assert count >= 2000


@pytest.mark.parametrize("mutation", sorted(set(MUTATIONS), key=lambda m: m.__name__), ids=lambda m: m.__name__[1:])
def test_each_mutation_changes_the_file_deterministically(mutation: Callable[[random.Random, bytes], bytes]) -> None:
    original = (ROOT / "examples" / "hello" / "appspec.yml").read_bytes()
    first = [mutation(random.Random(seed), original) for seed in range(5)]
    assert first == [mutation(random.Random(seed), original) for seed in range(5)]
    assert any(data != original for data in first)


def test_the_corpus_is_every_appspec_and_config_of_the_repository() -> None:
    appspecs = {path.relative_to(ROOT).as_posix() for path, _ in appspec_corpus()}
    configs = {path.relative_to(ROOT).as_posix() for path in config_corpus()}
    assert {"examples/hello/appspec.yml", "tests/data/appspec/server/docs_example.yml"} <= appspecs
    assert {"config/deploybot.example.yml", "tests/data/config/full.yml"} <= configs
    assert len(appspecs) >= 50 and all(Path(ROOT / name).is_file() for name in appspecs | configs)
