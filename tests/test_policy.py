"""Slack permissions per environment: listed users and user groups, "anyone" when unset, production closed."""

from __future__ import annotations

import pytest

from bot.policy import Permission, SlackPolicy
from engine import is_production
from engine.core.config.parse import parse_config

CONFIG = """
hosts:
  - {name: h1}
applications:
  web:
    revision: .
    environments: [staging, production]
    deployment_groups:
      staging:
        targets: {hosts: [h1]}
      production:
        targets: {hosts: [h1]}
        slack_deployers: [U0ALICE, S0OPS]
        slack_approvers: [U0BOSS]
  tool:
    revision: .
    environments: [dev, prod]
    deployment_groups:
      dev: {targets: {hosts: [h1]}, slack_rollbackers: [U0ALICE]}
      prod: {targets: {hosts: [h1]}}
"""

POLICY = SlackPolicy.from_config(parse_config(CONFIG, filename="t.yml"))


@pytest.mark.parametrize(
    ("permission", "app", "env", "user", "groups", "allowed", "reason"),
    [
        (Permission.DEPLOY, "web", "staging", "U0ANY", (), True, "anyone may deploy"),
        (Permission.ROLLBACK, "web", "staging", "U0ANY", (), True, "anyone may rollback"),
        (Permission.DEPLOY, "web", "production", "U0ALICE", (), True, "listed in slack_deployers"),
        (Permission.DEPLOY, "web", "production", "U0CAROL", ("S0OPS",), True, "is in <!subteam^S0OPS>"),
        (
            Permission.DEPLOY,
            "web",
            "production",
            "U0BOB",
            ("S0OTHER",),
            False,
            "only <@U0ALICE>, <!subteam^S0OPS> may deploy in web/production (slack_deployers)",
        ),
        (Permission.APPROVE, "web", "production", "U0ALICE", (), False, "only <@U0BOSS> may approve"),
        (Permission.APPROVE, "WEB", "Production", "U0BOSS", (), True, "listed in slack_approvers"),
        (
            Permission.ROLLBACK,
            "web",
            "production",
            "U0ALICE",
            (),
            False,
            "nobody may rollback in web/production from Slack until `slack_rollbackers` lists them",
        ),
        (Permission.DEPLOY, "tool", "prod", "U0ALICE", (), False, "production is closed by default"),
        (Permission.ROLLBACK, "tool", "dev", "U0BOB", (), False, "only <@U0ALICE> may rollback"),
        (Permission.DEPLOY, "tool", "qa", "U0ALICE", (), False, "tool/qa is not a configured environment"),
    ],
)
def test_decisions(
    permission: Permission, app: str, env: str, user: str, groups: tuple[str, ...], allowed: bool, reason: str
) -> None:
    decision = POLICY.decide(permission, app, env, user, groups)
    assert decision.allowed is allowed
    assert reason in decision.reason


def test_only_listed_user_groups_are_looked_up() -> None:
    assert POLICY.groups_to_check(Permission.DEPLOY, "web", "production") == ("S0OPS",)
    assert POLICY.groups_to_check(Permission.APPROVE, "web", "production") == ()
    assert POLICY.groups_to_check(Permission.DEPLOY, "web", "staging") == ()


@pytest.mark.parametrize(
    ("name", "production"),
    [("production", True), ("Prod", True), ("live", True), ("staging", False), ("preprod", False)],
)
def test_production_names(name: str, production: bool) -> None:
    assert is_production(name) is production
