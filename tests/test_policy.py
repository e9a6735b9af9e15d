"""Who is asking at the Slack and GitHub doors (bot.policy), and how the Slack door words a refusal
(bot.slack.replies): pure, table-driven. The rule itself is engine.may (tests/test_policy_core.py); the doors are
exercised through signed requests in tests/test_slack_policy.py and tests/test_github_webhooks.py."""

from __future__ import annotations

import pytest

from bot.policy import actor_from_github, actor_from_slack
from bot.slack.replies import Caller, not_mapped, refused, rule_text
from engine import Action, Decision, EngineConfig
from engine.core.config.parse import parse_config

HOSTS = "hosts: [{name: h1}]\n"
WITH_USERS = parse_config(
    "users:\n  alice: {slack: U0ALICE, github: Alice-GH}\n  bob: {slack: W0BOB}\n  carol: {}\n" + HOSTS
)
FREE_FORM = parse_config(HOSTS)


@pytest.mark.parametrize(
    ("config", "slack_id", "user"),
    [
        (WITH_USERS, "U0ALICE", "alice"),
        (WITH_USERS, "W0BOB", "bob"),  # enterprise-grid ids too
        (WITH_USERS, "U0MALLORY", None),  # nobody declares it: the door refuses
        (WITH_USERS, "u0alice", None),  # Slack ids are exact
        (FREE_FORM, "U0ALICE", "U0ALICE"),  # no users section: the Slack id is the name
        (FREE_FORM, "", None),
    ],
    ids=["mapped", "mapped-W", "unmapped", "case", "free-form", "empty"],
)
def test_a_slack_id_acts_as(config: EngineConfig, slack_id: str, user: str | None) -> None:
    assert actor_from_slack(config, slack_id) == user


@pytest.mark.parametrize(
    ("config", "login", "user"),
    [
        (WITH_USERS, "Alice-GH", "alice"),
        (WITH_USERS, "alice-gh", "alice"),  # GitHub ignores the case of logins
        (WITH_USERS, "octocat", None),
        (FREE_FORM, "octocat", "octocat"),
        (FREE_FORM, "deploybot-admin", None),  # a GitHub account with the bootstrap admin's name is nobody
        (FREE_FORM, "Deploybot-Admin", None),
    ],
    ids=["mapped", "any-case", "unmapped", "free-form", "bootstrap-admin-name", "bootstrap-admin-any-case"],
)
def test_a_github_login_acts_as(config: EngineConfig, login: str, user: str | None) -> None:
    assert actor_from_github(config, login) == user


@pytest.mark.parametrize(
    ("caller", "shown"),
    [
        (Caller("U0ALICE", "alice"), "<@U0ALICE> (alice)"),
        (Caller("U0ALICE", "U0ALICE"), "<@U0ALICE>"),
        (Caller("U0MALLORY", None), "<@U0MALLORY>"),
    ],
)
def test_callers_are_shown_as_a_mention_and_their_name(caller: Caller, shown: str) -> None:
    assert caller.shown == shown
    assert Caller.of(WITH_USERS, "U0ALICE") == Caller("U0ALICE", "alice")


@pytest.mark.parametrize(
    ("rule", "text"),
    [
        ("app-production.deployers: U0ALICE, @ops", "app-production.deployers: <@U0ALICE>, @ops"),
        ("app-production.approvers: alice, bob", "app-production.approvers: alice, bob"),
        ("app-production has no deployers list: production needs one", None),
        ("only admins may freeze deployments (server.admins)", None),
        ("WEB-staging has no deployers list: anyone may deploy", None),  # a group name is not a Slack id
    ],
)
def test_slack_ids_in_a_rule_become_mentions(rule: str, text: str | None) -> None:
    assert rule_text(rule) == (text or rule)


def test_refusals_say_who_what_and_the_rule() -> None:
    decision = Decision(False, "bob", Action.DEPLOY, "app-production", "app-production.deployers: alice, @release")
    refusal = refused(Caller("U0BOB", "bob"), "deploy app to production", decision)
    assert refusal.text == (
        ":no_entry: <@U0BOB> (bob) may not deploy app to production (rule: app-production.deployers: alice, @release)"
    )
    assert refusal.reason == "rule: app-production.deployers: alice, @release"
    unmapped = not_mapped(Caller("U0MALLORY", None), "approve `d-AAAAAAAAA`")
    assert unmapped.text == (
        ":no_entry: <@U0MALLORY> may not approve `d-AAAAAAAAA`: your Slack account is not mapped to a deploybot "
        "user; ask an admin to add `slack: U0MALLORY` under users:"
    )
    assert unmapped.reason == "not mapped to a deploybot user"
