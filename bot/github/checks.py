"""The AppSpec check on pull requests: validate appspec.yml as it is at the PR's head and report it on GitHub.

Runs when a pull request changes the AppSpec or one of the hook scripts it names. The result is a check run named
``deploybot/appspec`` with one annotation per problem (the validator's line and column); a token that may not
create check runs (check runs are for GitHub Apps) gets a commit status with the first problem instead.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from gidgethub import BadRequest
from gidgethub.abc import GitHubAPI

from engine import AppSpecInvalid, Platform, Problem, ServerAppSpec, parse_appspec

log = logging.getLogger(__name__)

CHECK_NAME = "deploybot/appspec"
APPSPEC_FILES = ("appspec.yml", "appspec.yaml")
MAX_ANNOTATIONS = 50  # GitHub's limit per request


def validate(text: str, *, filename: str, platform: Platform, removed: Sequence[str] = ()) -> list[Problem]:
    """The validator's problems, plus one per hook script the pull request deletes (pure)."""
    try:
        spec = parse_appspec(text, platform=platform, filename=filename)
    except AppSpecInvalid as exc:
        return list(exc.problems)
    problems = []
    for location in sorted(set(hook_locations(spec)) & set(removed)):
        line = next((n for n, row in enumerate(text.splitlines(), 1) if location in row), 1)
        problems.append(Problem(filename, line, 1, f"hook script {location} is deleted by this pull request"))
    return problems


def hook_locations(spec: object) -> tuple[str, ...]:
    if not isinstance(spec, ServerAppSpec):
        return ()
    return tuple(script.location.lstrip("./") for scripts in spec.hooks.values() for script in scripts)


def _hooks_of(text: str, path: str, platform: Platform) -> tuple[str, ...]:
    try:
        return hook_locations(parse_appspec(text, platform=platform, filename=path))
    except AppSpecInvalid:
        return ()


def check_annotations(problems: Sequence[Problem], path: str) -> list[dict[str, Any]]:
    """A check run's annotations: one per problem, at its line and column (GitHub takes at most 50 a request)."""
    return [
        {
            "path": path,
            "start_line": problem.line,
            "end_line": problem.line,
            "start_column": problem.column,
            "end_column": problem.column,
            "annotation_level": "failure",
            "message": problem.message,
            "title": f"{path}:{problem.line}:{problem.column}",
        }
        for problem in problems[:MAX_ANNOTATIONS]
    ]


def check_run(head_sha: str, path: str, problems: Sequence[Problem]) -> dict[str, Any]:
    if problems:
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        summary = "\n".join(f"- `{p.file}:{p.line}:{p.column}` {p.message}" for p in problems)
        output = {"title": f"{path}: {count}", "summary": summary, "annotations": check_annotations(problems, path)}
    else:
        output = {"title": f"{path} is valid", "summary": f"`deploybot appspec validate {path}` found no problem."}
    return {
        "name": CHECK_NAME,
        "head_sha": head_sha,
        "status": "completed",
        "conclusion": "failure" if problems else "success",
        "output": output,
    }


async def read_file(gh: GitHubAPI, repository: str, path: str, ref: str) -> str | None:
    """A file's text at ``ref``; None when it does not exist there."""
    try:
        answer = await gh.getitem(f"/repos/{repository}/contents/{path}?ref={ref}")
    except BadRequest as exc:
        if exc.status_code == 404:
            return None
        raise
    if not isinstance(answer, Mapping) or answer.get("type", "file") != "file":
        return None
    return base64.b64decode(answer.get("content") or "").decode("utf-8", errors="replace")


async def check_pull_request(
    gh: GitHubAPI, repository: str, pull: Mapping[str, Any], *, platform: Platform = Platform.SERVER
) -> dict[str, Any] | None:
    """Validate the PR head's AppSpec when the PR touches it or its hook scripts; returns what was posted."""
    head = str(pull["head"]["sha"])
    changed: dict[str, str] = {}
    async for item in gh.getiter(f"/repos/{repository}/pulls/{pull['number']}/files"):
        changed[item["filename"]] = item.get("status", "modified")
        if item.get("previous_filename"):
            changed[item["previous_filename"]] = "removed"
    path, text = None, None
    for name in APPSPEC_FILES:
        text = await read_file(gh, repository, name, head)
        if text is not None:
            path = name
            break
    removed = [name for name, status in changed.items() if status == "removed"]
    if path is None or text is None:
        deleted = next((name for name in APPSPEC_FILES if changed.get(name) == "removed"), None)
        if deleted is None:
            return None
        path, problems = deleted, [Problem(deleted, 1, 1, "this pull request deletes the AppSpec")]
    else:
        if path not in changed and not set(_hooks_of(text, path, platform)) & set(changed):
            return None
        problems = validate(text, filename=path, platform=platform, removed=removed)
    return await post_result(gh, repository, head, path, problems)


async def post_result(
    gh: GitHubAPI, repository: str, head_sha: str, path: str, problems: Sequence[Problem]
) -> dict[str, Any]:
    body = check_run(head_sha, path, problems)
    try:
        await gh.post(f"/repos/{repository}/check-runs", data=body)
        return body
    except BadRequest as exc:
        if exc.status_code not in (403, 404):
            raise
        log.info("check runs unavailable on %s (HTTP %s): posting a commit status", repository, exc.status_code)
    first = problems[0] if problems else None
    status = {
        "state": "failure" if first else "success",
        "context": CHECK_NAME,
        "description": (f"{path}:{first.line}:{first.column}: {first.message}" if first else f"{path} is valid")[:140],
    }
    await gh.post(f"/repos/{repository}/statuses/{head_sha}", data=status)
    return status
