"""``deploybot appspec validate``, run as a real subprocess: exit codes, ``FILE:LINE:COL: message`` lines, --json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

from engine.core import yamlnode
from engine.core.appspec import normalized, parse_appspec
from engine.core.errors import AppSpecInvalid

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "appspec"


def deploybot(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "bot", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("name", "platform"),
    [("server/docs_example.yml", "server"), ("lambda/docs_example.json", "lambda"), ("ecs/docs_example.yml", "ecs")],
)
def test_valid_file_exits_0(name: str, platform: str) -> None:
    result = deploybot("appspec", "validate", CORPUS / name, "--platform", platform)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{CORPUS / name}: valid {platform} AppSpec\n"


def test_default_platform_is_server() -> None:
    result = deploybot("appspec", "validate", CORPUS / "server/minimal.yml", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["platform"] == "server"


def test_invalid_file_prints_every_problem_as_file_line_column() -> None:
    path = CORPUS / "server/many_problems.yml"
    result = deploybot("appspec", "validate", path)
    assert (result.returncode, result.stdout) == (1, "")
    lines = result.stderr.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [
        f"{path}:2:10",
        f"{path}:3:5",
        f"{path}:6:18",
        f"{path}:8:3",
        f"{path}:12:11",
        f"{path}:13:23",
    ]
    assert lines[0].startswith(f"{path}:2:10: The deployment failed because an invalid version value (1.0)")
    assert "tabs" not in result.stderr


def test_json_for_a_valid_file_holds_the_normalized_spec() -> None:
    path = CORPUS / "server/docs_example.yml"
    result = deploybot("appspec", "validate", path, "--json")
    assert (result.returncode, result.stderr) == (0, "")
    document = json.loads(result.stdout)
    assert document == {
        "valid": True,
        "platform": "server",
        "errors": [],
        "spec": normalized(parse_appspec(path.read_text())),
    }
    assert document["spec"]["hooks"]["ValidateService"] == [
        {"location": "Scripts/MonitorService.sh", "timeout": 3600, "runas": "codedeployuser"}
    ]


def test_json_for_an_invalid_file_lists_the_errors_and_exits_1() -> None:
    path = CORPUS / "lambda/docs_example.yml"
    result = deploybot("appspec", "validate", path, "--platform", "ecs", "--json")
    assert (result.returncode, result.stderr) == (1, "")
    document = json.loads(result.stdout)
    assert list(document) == ["valid", "platform", "errors", "spec"]
    assert (document["valid"], document["platform"], document["spec"]) == (False, "ecs", None)
    with pytest.raises(AppSpecInvalid) as caught:
        parse_appspec(path.read_text(), platform="ecs")
    assert document["errors"] == [
        {"line": p.line, "column": p.column, "message": p.message} for p in caught.value.problems
    ]
    assert document["errors"][0] == {
        "line": 4,
        "column": 5,
        "message": "the ECS resource must be named TargetService, not 'myLambdaFunction'",
    }


def test_a_file_that_is_not_utf8_is_invalid_at_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "appspec.yml"
    path.write_bytes(b"version: 0.0\nos: li\xffnux\n")
    result = deploybot("appspec", "validate", path)
    assert result.returncode == 1
    assert result.stderr == f"{path}:2:7: the file is not UTF-8 text: save it as UTF-8\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("appspec", "validate", "no/such/appspec.yml"), "cannot read no/such/appspec.yml: No such file or directory"),
        (("appspec", "validate", "no/such/appspec.yml", "--json"), "cannot read no/such/appspec.yml"),
        (("appspec", "validate", "tests"), "cannot read tests: Is a directory"),
        (("appspec", "validate", "tests/data/appspec/server/minimal.yml", "--platform", "k8s"), "invalid choice"),
        (("appspec", "validate"), "the following arguments are required: FILE"),
        (("appspec",), "usage: deploybot appspec"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...], message: str) -> None:
    result = deploybot(*args)
    assert (result.returncode, result.stdout) == (2, "")
    assert message in result.stderr


# ---------------------------------------------------------------------------------------------------- hostile files

BILLION_LAUGHS = (
    'version: 0.0\nos: linux\nx: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    + "".join(
        f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]\n" for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
    )
)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("version: 0.0\nos: !!bool x\n", "2:5: 'x' is not a valid !!bool value: fix it or remove the tag"),
        ("version: 0.0\nos: !!timestamp x\n", "2:5: 'x' is not a valid !!timestamp value: fix it or remove the tag"),
        (
            "version: 0.0\nos: !!python/object/apply:os.system [id]\n",
            "2:5: unsupported YAML tag !!python/object/apply:os.system",
        ),
        ("version: 0.0\nos: " + "[" * 5000 + "]" * 5000 + "\n", "2:105: the AppSpec nests deeper than 100 levels"),
        (BILLION_LAUGHS, "7:8: the AppSpec has more than 20,000 values (through alias *d)"),
        ("version: 0.0\nos: &o\n  k: *o\n", "3:6: alias *o is inside the node it refers to (a cycle)"),
    ],
    ids=["bool-tag", "timestamp-tag", "python-tag", "5000-deep", "billion-laughs", "alias-cycle"],
)
def test_hostile_files_give_file_line_col_not_a_traceback(tmp_path: Path, text: str, line: str) -> None:
    path = tmp_path / "a.yml"
    path.write_text(text)
    result = deploybot("appspec", "validate", path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(f"{path}:{line}")
    assert "Traceback" not in result.stderr


def never_parsed(*_: object) -> NoReturn:
    """Stands in for the YAML loader where a text must be refused before it is parsed."""
    raise AssertionError("the YAML parser was started on a text over the size limit")


def test_a_4_mb_appspec_of_300000_keys_is_refused_in_well_under_a_second_naming_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "version: 0.0\nos: linux\nhooks:\n" + "".join(f"  Key{index}: value\n" for index in range(300_000))
    assert len(text) > 4_000_000
    monkeypatch.setattr(yamlnode, "_LimitedLoader", never_parsed)  # quick because refused before any parsing
    with pytest.raises(AppSpecInvalid) as caught:
        parse_appspec(text)
    [problem] = caught.value.problems
    assert problem.message == f"the AppSpec is {len(text):,} bytes, over the limit of 262,144 bytes for one AppSpec"
    path = tmp_path / "appspec.yml"
    path.write_text(text)
    result = deploybot("appspec", "validate", path, "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["errors"] == [
        {"line": problem.line, "column": problem.column, "message": problem.message}
    ]
