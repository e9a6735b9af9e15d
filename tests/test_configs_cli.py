"""``deploybot configs list`` / ``configs explain`` run as real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.core.configs import BUILTIN_CONFIGS

ROOT = Path(__file__).resolve().parent.parent
P = "CodeDeployDefault."


def deploybot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", "configs", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_list_text_groups_every_builtin_by_platform() -> None:
    result = deploybot("list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    headers = [line for line in lines if not line.startswith(" ")]
    assert headers == ["server:", "lambda:", "ecs:"]
    for name, config in BUILTIN_CONFIGS.items():
        (row,) = [line for line in lines if line.split()[:1] == [name]]
        section = max(i for i, line in enumerate(lines) if line in headers and i < lines.index(row))
        assert lines[section] == f"{config.compute_platform}:"
    assert "one host at a time" in result.stdout and "the server default" in result.stdout


def test_list_json() -> None:
    result = deploybot("list", "--json")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)["configs"]
    assert [e["name"] for e in entries] == list(BUILTIN_CONFIGS)
    by_name = {e["name"]: e for e in entries}
    assert by_name[P + "OneAtATime"]["default"] is True
    assert by_name[P + "HalfAtATime"]["minimum_healthy_hosts"] == {"type": "FLEET_PERCENT", "value": 50}
    assert by_name[P + "LambdaLinear10PercentEvery1Minute"]["traffic_steps"][0] == {"percent": 10, "wait_seconds": 60}
    assert all(e["meaning"] for e in entries)


def test_explain_half_at_a_time_on_nine_hosts() -> None:
    result = deploybot("explain", P + "HalfAtATime", "--hosts", "9")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "minimum healthy   5 (50% of 9, rounded up)" in out
    assert "hosts at once     up to 4" in out
    assert "batches           3: 4, 4, 1" in out


def test_explain_json_short_name() -> None:
    result = deploybot("explain", "OneAtATime", "--hosts", "10", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["name"] == P + "OneAtATime" and data["kind"] == "hosts"
    assert data["minimum_healthy_hosts"] == {"type": "MOST_CONCURRENCY", "value": 1}
    assert (data["minimum_healthy_count"], data["max_concurrent"], data["startable"]) == (9, 1, True)


@pytest.mark.parametrize(
    ("spec", "minimum", "at_once"),
    [("HOST_COUNT:6", 6, 3), ("fleet_percent:40", 4, 5)],
)
def test_explain_ad_hoc_min_healthy(spec: str, minimum: int, at_once: int) -> None:
    data = json.loads(deploybot("explain", "--min-healthy", spec, "--hosts", "9", "--json").stdout)
    assert (data["minimum_healthy_count"], data["max_concurrent"]) == (minimum, at_once)


def test_explain_cannot_start_is_an_answer_not_an_error() -> None:
    result = deploybot("explain", "--min-healthy", "FLEET_PERCENT:95", "--hosts", "10")
    assert result.returncode == 0, result.stderr
    assert "cannot start      HEALTH_CONSTRAINTS_INVALID: 10 of 10 hosts must stay healthy" in result.stdout
    data = json.loads(deploybot("explain", "AllAtOnce", "--hosts", "0", "--json").stdout)
    assert (data["startable"], data["problem"]) == (False, "NO_INSTANCES")


def test_explain_traffic_config_needs_no_hosts() -> None:
    result = deploybot("explain", P + "ECSCanary10Percent5Minutes")
    assert result.returncode == 0, result.stderr
    assert "10% on the new version, then wait 5 minutes" in result.stdout
    assert "100% on the new version" in result.stdout
    data = json.loads(deploybot("explain", "--traffic", "linear:30:2", "--json").stdout)
    assert [s["percent"] for s in data["traffic_steps"]] == [30, 60, 90, 100]
    assert data["traffic_minutes"] == 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("explain", "OneAtATme", "--hosts", "3"), f"did you mean {P}OneAtATime"),
        (("explain", "Nothing-like-it", "--hosts", "3"), "see `deploybot configs list`"),
        (("explain", "HalfAtATime"), "--hosts N is required"),
        (("explain", "HalfAtATime", "--hosts", "-1"), "--hosts must be 0 or more"),
        (("explain", "--hosts", "3"), "give a configuration NAME"),
        (("explain", "AllAtOnce", "--min-healthy", "HOST_COUNT:1", "--hosts", "3"), "not both"),
        (("explain", "--min-healthy", "SOME:3", "--hosts", "3"), "--min-healthy wants"),
        (("explain", "--min-healthy", "FLEET_PERCENT:100", "--hosts", "3"), "FLEET_PERCENT must be 0-99"),
        (("explain", "--traffic", "canary:10"), "--traffic wants"),
        (("explain", "--traffic", "linear:10:400"), "the limit is 2880"),
    ],
)
def test_bad_input_exits_2_with_usage(args: tuple[str, ...], message: str) -> None:
    result = deploybot(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: deploybot configs explain")
    assert message in result.stderr
    assert result.stdout == ""
