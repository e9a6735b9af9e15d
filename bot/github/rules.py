"""The pure rules of the GitHub front: which applications a repository feeds, which environments a merge goes to,
and whether a commit's required checks let it deploy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from engine import Application, EngineConfig

GREEN_CONCLUSIONS = frozenset({"success", "neutral", "skipped"})
RED_STATES = frozenset({"failure", "error", "cancelled", "timed_out", "action_required", "stale", "startup_failure"})
STATUS_CONTEXT = "deploybot/auto-deploy"
OWN_CONTEXT_PREFIX = "deploybot/"  # deploybot's own statuses and check runs: never a reason to look at a merge again
CHECKS_TIMEOUT_SECONDS = 1800.0


@dataclass(frozen=True, slots=True)
class MergeRule:
    application: str
    environment: str
    branch: str
    require_checks: tuple[str, ...] = ()
    checks_timeout_seconds: float = CHECKS_TIMEOUT_SECONDS


def applications_of(config: EngineConfig, repository: str) -> list[Application]:
    return [a for a in config.applications.values() if (a.github_repository or "").lower() == repository.lower()]


def merge_rules(config: EngineConfig, repository: str, branch: str | None = None) -> list[MergeRule]:
    """The auto_deploy rules a merge into ``branch`` of ``repository`` triggers (every branch's when None)."""
    rules = []
    for app in applications_of(config, repository):
        auto = app.auto_deploy or {}
        if auto.get("to") and auto.get("branch") and (branch is None or auto.get("branch") == branch):
            # The config parser made these a tuple of strings and a number (engine's Application.auto_deploy).
            checks = auto.get("require_checks") or ()
            minutes = auto.get("checks_timeout_minutes") or 30.0
            rules.append(
                MergeRule(
                    app.name,
                    app.environment(str(auto["to"])),
                    str(auto.get("branch")),
                    tuple(str(c) for c in checks) if isinstance(checks, tuple | list) else (),
                    float(minutes) * 60.0 if isinstance(minutes, int | float) else CHECKS_TIMEOUT_SECONDS,
                )
            )
    return rules


class Verdict(StrEnum):
    GREEN = "green"
    RED = "red"
    PENDING = "pending"


def checks_verdict(
    required: Sequence[str], statuses: Sequence[Mapping[str, Any]], check_runs: Sequence[Mapping[str, Any]]
) -> tuple[Verdict, str]:
    """Green when every required context is green, red as soon as one is red, else pending."""
    waiting = []
    for name in required:
        state = _state_of(name, statuses, check_runs)
        if state in RED_STATES:
            return Verdict.RED, f"check {name} is {state}"
        if state != "success":
            waiting.append(name)
    if waiting:
        return Verdict.PENDING, "waiting for " + ", ".join(waiting)
    return Verdict.GREEN, "all required checks passed"


def _state_of(name: str, statuses: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]]) -> str:
    status = next((s for s in statuses if s.get("context") == name), None)  # newest first, as GitHub lists them
    if status is not None:
        return str(status.get("state"))
    run = next((r for r in runs if r.get("name") == name), None)
    if run is None:
        return "missing"
    if run.get("status") != "completed":
        return "pending"
    conclusion = str(run.get("conclusion"))
    return "success" if conclusion in GREEN_CONCLUSIONS else conclusion
