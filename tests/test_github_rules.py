"""The pure rules of the GitHub front: deployment → GitHub status, the check gate, auto_deploy rules, which intents
a webhook makes and how they show in the queue, ``github:`` revisions, AppSpec annotations, the one-line description
``deploybot serve`` prints, and a seeded fuzz of the webhook parsers."""

from __future__ import annotations

import contextlib
import copy
import random
from typing import Any

import pytest
from fake_github import check_run_payload, deployment_payload, pull_request_payload, push_payload, status_payload

from bot.github import describe
from bot.github.checks import check_annotations as annotations
from bot.github.checks import check_run, validate
from bot.github.intents import CheckReport, Kind, check_report, intents_of_event, queue_entry
from bot.github.notifier import GitHubStatus, github_status
from bot.github.revisions import CommitRef, parse_github_revision
from bot.github.rules import MergeRule, Verdict, checks_verdict, merge_rules
from bot.settings import Settings
from engine.core.config.parse import parse_config
from engine.core.errors import Problem
from engine.core.model import Platform


def doc(status: str, **extra: Any) -> dict[str, Any]:
    return {"id": "d-1", "environment": "staging", "status": status, "rollback": {"of": None, "by": None}, **extra}


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (doc("Queued", queue_position=2), GitHubStatus("queued", "queued (position 2)")),
        (doc("WaitingApproval"), GitHubStatus("queued", "waiting for approval")),
        (
            doc("InProgress", targets=[{"status": "Succeeded"}, {"status": "InProgress"}]),
            GitHubStatus("in_progress", "1/2 hosts done"),
        ),
        (
            doc("InProgress", config="CodeDeployDefault.LambdaCanary10Percent5Minutes", traffic={"percent": 10}),
            GitHubStatus("in_progress", "canary 10 %"),
        ),
        (doc("Baking"), GitHubStatus("in_progress", "watching alarms after the deployment")),
        (doc("Succeeded"), GitHubStatus("success", "deployed to staging")),
        (
            doc("Failed", error={"message": "ValidateService failed on web-2"}, rollback={"of": None, "by": "d-2"}),
            GitHubStatus("failure", "rolled back: ValidateService failed on web-2"),
        ),
        (doc("Failed", error={"message": "x" * 300}), GitHubStatus("failure", "failed: " + "x" * 131 + "…")),
        (doc("Stopped", error={"message": "stopped by alice"}), GitHubStatus("error", "stopped: stopped by alice")),
        (doc("Succeeded", rollback={"of": "d-0", "by": None}), GitHubStatus("success", "rolled back d-0")),
    ],
)
def test_github_status_of_a_deployment(document: dict[str, Any], expected: GitHubStatus) -> None:
    assert github_status(document) == expected
    assert len(expected.description) <= 140


GREEN_RUN = {"name": "lint", "status": "completed", "conclusion": "success"}


@pytest.mark.parametrize(
    ("statuses", "runs", "expected"),
    [
        ([{"context": "ci", "state": "success"}], [GREEN_RUN], Verdict.GREEN),
        ([{"context": "ci", "state": "success"}], [{**GREEN_RUN, "conclusion": "skipped"}], Verdict.GREEN),
        ([{"context": "ci", "state": "pending"}], [GREEN_RUN], Verdict.PENDING),
        ([], [GREEN_RUN], Verdict.PENDING),  # a required context that has not reported yet
        ([{"context": "ci", "state": "error"}], [], Verdict.RED),
        ([{"context": "ci", "state": "success"}], [{**GREEN_RUN, "conclusion": "timed_out"}], Verdict.RED),
        (
            [{"context": "ci", "state": "success"}],
            [{**GREEN_RUN, "status": "queued", "conclusion": None}],
            Verdict.PENDING,
        ),
        # the newest status of a context wins (GitHub lists newest first)
        ([{"context": "ci", "state": "success"}, {"context": "ci", "state": "failure"}], [GREEN_RUN], Verdict.GREEN),
    ],
)
def test_checks_verdict(statuses: list[dict[str, Any]], runs: list[dict[str, Any]], expected: Verdict) -> None:
    verdict, why = checks_verdict(("ci", "lint"), statuses, runs)
    assert verdict is expected
    assert why


CONFIG = """
hosts: [{name: h1}]
applications:
  web:
    environments: [Staging, prod]
    github: {repository: Acme/Web, auto_deploy: {branch: main, to: Staging, require_checks: [ci]}}
    deployment_groups: {Staging: {targets: {hosts: [h1]}}, prod: {targets: {hosts: [h1]}}}
  docs:
    environments: [prod]
    github: {repository: acme/web}
    deployment_groups: {prod: {targets: {hosts: [h1]}}}
"""


def test_merge_rules_match_repository_case_insensitively_and_the_branch_exactly() -> None:
    config = parse_config(CONFIG)
    assert merge_rules(config, "acme/web", "main") == [MergeRule("web", "Staging", "main", ("ci",), 1800.0)]
    assert merge_rules(config, "acme/web", "Main") == []
    assert merge_rules(config, "acme/other", "main") == []


def test_loader_rejects_a_timeout_without_checks_and_unknown_url_environments() -> None:
    from engine.core.errors import ConfigError

    bad = CONFIG.replace("require_checks: [ci]", "checks_timeout_minutes: 5").replace(
        "github: {repository: acme/web}", "github: {repository: acme/web, environment_urls: {qa: http://qa}}"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(bad)
    messages = [p.message for p in caught.value.problems]
    assert "checks_timeout_minutes needs require_checks" in messages
    assert any("unknown environment 'qa'" in m for m in messages)


@pytest.mark.parametrize(
    ("github", "people", "deploy_as"),
    [
        ("{repository: acme/web}", "", "github"),  # the default integration user
        ("{repository: acme/web, deploy_as: merge-bot}", "", "merge-bot"),
        ("{repository: acme/web, deploy_as: ci}", "users: {ci: {}}\n", "ci"),
    ],
)
def test_the_integration_user_merges_deploy_as(github: str, people: str, deploy_as: str) -> None:
    text = people + CONFIG.replace("github: {repository: acme/web}", f"github: {github}")
    assert parse_config(text).application("docs").github_deploy_as == deploy_as
    assert parse_config(CONFIG).application("web").github_deploy_as == "github"


@pytest.mark.parametrize(
    ("deploy_as", "people", "message"),
    [
        ("merge-bott", "users: {merge-bot: {}}\n", "unknown user 'merge-bott' (did you mean 'merge-bot'?)"),
        ("'@ci'", "roles: {ci: [x]}\n", "deploy_as names one user, not a role: '@ci'"),
        (
            "deploybot-admin",
            "",
            "'deploybot-admin' is the bootstrap admin: it may do everything and is never listed",
        ),
    ],
    ids=["unknown-user", "role", "bootstrap-admin"],
)
def test_loader_refuses_an_integration_user_that_cannot_be(deploy_as: str, people: str, message: str) -> None:
    from engine.core.errors import ConfigError

    text = people + CONFIG.replace(
        "github: {repository: acme/web}", f"github: {{repository: acme/web, deploy_as: {deploy_as}}}"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, filename="deploybot.yml")
    [problem] = caught.value.problems
    assert (problem.message, problem.path) == (message, "applications.docs.github.deploy_as")
    lines = text.splitlines()
    assert (problem.file, problem.line) == (
        "deploybot.yml",
        next(i for i, line in enumerate(lines, 1) if "deploy_as" in line),
    )


APPSPEC = """version: 0.0
os: linux
hooks:
  AfterInstall:
    - location: scripts/migrate.sh
"""


def test_validate_reports_hook_scripts_the_pull_request_deletes_at_their_line() -> None:
    problems = validate(APPSPEC, filename="appspec.yml", platform=Platform.SERVER, removed=["scripts/migrate.sh"])
    assert [(p.line, p.message) for p in problems] == [
        (5, "hook script scripts/migrate.sh is deleted by this pull request")
    ]
    assert validate(APPSPEC, filename="appspec.yml", platform=Platform.SERVER) == []


def test_check_run_annotations_carry_line_and_column() -> None:
    problems = [Problem("appspec.yml", 3, 7, "bad")]
    [annotation] = annotations(problems, "appspec.yml")
    assert (annotation["start_line"], annotation["end_line"], annotation["start_column"]) == (3, 3, 7)
    assert check_run("abc", "appspec.yml", problems)["conclusion"] == "failure"
    assert check_run("abc", "appspec.yml", [])["conclusion"] == "success"
    assert len(annotations([problems[0]] * 80, "appspec.yml")) == 50


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "GitHub: off"),
        ({"GITHUB_WEBHOOK_SECRET": "s"}, "GitHub: on (webhook POST /github/webhook, no credentials"),
        ({"GITHUB_WEBHOOK_SECRET": "s", "GITHUB_TOKEN": "t"}, "GitHub: on (webhook POST /github/webhook, token"),
        ({"GITHUB_TOKEN": "t"}, "GitHub: on (no webhook secret, token"),
    ],
)
def test_describe(environ: dict[str, str], expected: str) -> None:
    assert describe(Settings.from_env(environ), environ).startswith(expected)


# ------------------------------------------------------------------------------------------------ intents of events

SHA = "a" * 40
MERGE_KEY = f"github:merge:acme/web:web:Staging:{SHA}"


@pytest.mark.parametrize(
    ("event", "payload", "keys"),
    [
        ("push", push_payload("Acme/Web", "main", SHA), [MERGE_KEY]),
        ("pull_request", pull_request_payload("acme/web", 7, "c" * 40, action="closed", merge_sha=SHA), [MERGE_KEY]),
        ("push", push_payload("acme/web", "dev", SHA), []),
        ("push", {**push_payload("acme/web", "main", SHA), "ref": "refs/tags/v1"}, []),
        ("push", {**push_payload("acme/web", "main", "0" * 40)}, []),
        ("push", push_payload("acme/web", "main", "not-a-sha"), []),
        ("pull_request", pull_request_payload("acme/web", 7, SHA, action="closed"), []),
        ("deployment", deployment_payload("acme/web", SHA, "PROD", github_id=9), ["github:deployment:acme/web:9"]),
        ("deployment", deployment_payload("acme/web", SHA, "qa"), []),
        ("status", status_payload("acme/web", SHA, "ci", "success"), []),
    ],
    ids=[
        "push",
        "merged-pr",
        "other-branch",
        "tag",
        "zero-sha",
        "bad-sha",
        "closed-pr",
        "deployment",
        "unknown-env",
        "status",
    ],
)
def test_the_intents_a_delivery_makes(event: str, payload: dict[str, Any], keys: list[str]) -> None:
    intents = intents_of_event(parse_config(CONFIG), event, payload, now=100.0)
    assert [i.key for i in intents] == keys


def test_a_merge_intent_keeps_its_rule_and_deadline_and_acts_as_the_integration_user() -> None:
    [merge] = intents_of_event(parse_config(CONFIG), "push", push_payload("acme/web", "main", SHA), now=100.0)
    assert (merge.kind, merge.scope, merge.actor) == (Kind.MERGE, "web/Staging", "github")
    assert merge.payload["require_checks"] == ["ci"]
    assert merge.payload["deadline"] == 100.0 + 1800.0
    assert merge.payload["pushed_by"] == "octocat"


@pytest.mark.parametrize(
    ("event", "payload", "expected"),
    [
        ("status", status_payload("a/b", SHA, "ci", "success"), CheckReport("a/b", SHA, True, "status ci success")),
        ("status", status_payload("a/b", SHA, "ci", "failure"), CheckReport("a/b", SHA, False, "status ci failure")),
        (
            "check_run",
            check_run_payload("a/b", SHA, "lint", "neutral"),
            CheckReport("a/b", SHA, True, "check run lint neutral"),
        ),
        (
            "check_run",
            check_run_payload("a/b", SHA, "lint", None),
            CheckReport("a/b", SHA, False, "check run lint queued"),
        ),
        ("status", status_payload("a/b", SHA, "deploybot/auto-deploy/prod", "success"), None),  # our own
        ("push", push_payload("a/b", "main", SHA), None),
    ],
)
def test_check_reports(event: str, payload: dict[str, Any], expected: CheckReport | None) -> None:
    assert check_report(event, payload) == expected


def test_a_waiting_merge_in_the_queue_says_what_it_waits_for_and_since_when() -> None:
    row = {
        "key": MERGE_KEY,
        "kind": "merge",
        "state": "waiting",
        "actor": "github",
        "created_at": 100.0,
        "not_before": 115.0,
        "payload": {"repository": "acme/web", "sha": SHA, "application": "web", "environment": "Staging"},
        "outcome": {"waiting": "checks", "message": "waiting for ci"},
    }
    entry = queue_entry(row)
    assert (entry["id"], entry["status"], entry["since"]) == ("acme/web@aaaaaaa", "WaitingForChecks", 100.0)
    assert entry["waiting_for"] == {"message": "waiting for ci"}
    assert queue_entry({**row, "state": "running", "outcome": None})["status"] == "Preparing"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"github:acme/api@{SHA}", CommitRef("acme/api", SHA)),
        ("github:Acme/my.repo@ABCDEF1", CommitRef("Acme/my.repo", "abcdef1")),
        ("github:acme/api", "is not github:OWNER/REPO@SHA"),
        ("github:acme@abcdef1", "is not a GitHub repository"),
        ("github:acme/api@main", "is not a commit SHA"),
        ("github:acme/api@abc", "is not a commit SHA"),
    ],
)
def test_github_revisions(text: str, expected: CommitRef | str) -> None:
    if isinstance(expected, CommitRef):
        assert parse_github_revision(text) == expected
        return
    with pytest.raises(ValueError, match=expected):
        parse_github_revision(text)


JUNK: tuple[Any, ...] = (
    None,
    True,
    0,
    -1,
    2**70,
    1.5,
    "",
    "x",
    "refs/heads/main",
    "0" * 40,
    SHA,
    [],
    [1],
    {},
    {"a": 1},
)


def _mutate(rng: random.Random, value: Any) -> Any:
    """``value`` with some of its parts replaced by junk of any JSON type, or dropped."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            roll = rng.random()
            if roll < 0.1:
                continue
            out[key] = rng.choice(JUNK) if roll < 0.3 else _mutate(rng, item)
        return out
    if isinstance(value, list):
        return [_mutate(rng, item) for item in value]
    return rng.choice(JUNK) if rng.random() < 0.3 else value


def test_the_webhook_parsers_take_any_json_without_a_traceback() -> None:
    config = parse_config(CONFIG)
    bases = [
        ("push", push_payload("acme/web", "main", SHA)),
        ("pull_request", pull_request_payload("acme/web", 7, SHA, action="closed", merge_sha=SHA)),
        ("deployment", deployment_payload("acme/web", SHA, "prod")),
        ("status", status_payload("acme/web", SHA, "ci", "success")),
        ("check_run", check_run_payload("acme/web", SHA, "ci", "success")),
        ("check_suite", {"check_suite": {"head_sha": SHA, "status": "completed"}, "repository": {"full_name": "x"}}),
    ]
    rng = random.Random(1616)
    made = 0
    for _ in range(3000):
        event, base = rng.choice(bases)
        payload = _mutate(rng, copy.deepcopy(base))
        made += len(intents_of_event(config, event, payload, now=0.0))
        check_report(event, payload)
        text = "github:" + "".join(rng.choice("ab/@.-_0123456789fF \n") for _ in range(rng.randrange(20)))
        with contextlib.suppress(ValueError):  # its own refusal is fine; anything else is a bug
            parse_github_revision(text)
    assert made > 0  # some mutants still were merges: the fuzz reached past the first checks
