"""engine/core/policy.py: who may do what, over action x caller x environment, with the exact rule that decided."""

from __future__ import annotations

import itertools

import pytest

from engine.core.config.model import DeploymentGroup, EngineConfig
from engine.core.config.parse import parse_config
from engine.core.policy import BOOTSTRAP_ADMIN, Action, Decision, admins, is_production, may
from engine.release.rules import ApprovalPolicy

CONFIG = parse_config(
    """
users:
  root: {}      # admin
  alice: {}     # listed deployer
  rita: {}      # deployer through @release
  april: {}     # approver
  rob: {}       # rollbacker
  uma: {}       # listed nowhere
roles:
  release: [rita]
server: {admins: [root]}
hosts: [{name: h1}]
applications:
  hello:
    environments: [staging, production]
    deployment_groups:
      staging: {targets: {hosts: [h1]}}
      production: {targets: {hosts: [h1]}}
  shop:
    environments: [qa, production]
    deployment_groups:
      qa: {targets: {hosts: [h1]}, deployers: [alice]}
      production:
        targets: {hosts: [h1]}
        deployers: [alice, '@release']
        approvers: [april]
        rollbackers: [rob]
""",
    filename="t.yml",
)
STAGING = CONFIG.group("hello", "staging")  # every list unset
PRODUCTION = CONFIG.group("hello", "production")  # every list unset
LISTED = CONFIG.group("shop", "production")  # every list set

CALLERS = ("root", BOOTSTRAP_ADMIN, "alice", "rita", "april", "rob", "uma", None)
MEMBERS = frozenset({"alice", "rita", "april", "rob", "uma"})  # the callers who are not admins
DEPLOYERS = frozenset({"alice", "rita"})
ADMINS_ONLY = {
    Action.FREEZE: "only admins may freeze deployments (server.admins)",
    Action.ADMIN: "only admins may administer deploybot (server.admins)",
}

# (group name, action) -> (the rule that decides for the non-admin callers, which of them it allows)
RULES: dict[tuple[str, Action], tuple[str, frozenset[str]]] = {
    ("hello-staging", Action.DEPLOY): ("hello-staging has no deployers list: anyone may deploy", MEMBERS),
    ("hello-staging", Action.CONTROL): ("hello-staging has no deployers list: anyone may control deployments", MEMBERS),
    ("hello-staging", Action.ROLLBACK): (
        "hello-staging has no rollbackers or deployers list: anyone may roll back",
        MEMBERS,
    ),
    ("hello-staging", Action.APPROVE): ("hello-staging has no approvers list: anyone may approve", MEMBERS),
    ("hello-staging", Action.LOCK): ("hello-staging has no deployers list: anyone may lock environments", MEMBERS),
    ("hello-production", Action.DEPLOY): ("hello-production has no deployers list: production needs one", frozenset()),
    ("hello-production", Action.CONTROL): ("hello-production has no deployers list: production needs one", frozenset()),
    ("hello-production", Action.ROLLBACK): (
        "hello-production has no rollbackers or deployers list: production needs one",
        frozenset(),
    ),
    ("hello-production", Action.APPROVE): ("hello-production has no approvers list: production needs one", frozenset()),
    ("hello-production", Action.LOCK): ("hello-production has no deployers list: production needs one", frozenset()),
    ("shop-production", Action.DEPLOY): ("shop-production.deployers: alice, @release", DEPLOYERS),
    ("shop-production", Action.CONTROL): ("shop-production.deployers: alice, @release", DEPLOYERS),
    ("shop-production", Action.ROLLBACK): ("shop-production.rollbackers: rob", frozenset({"rob"})),
    ("shop-production", Action.APPROVE): ("shop-production.approvers: april", frozenset({"april"})),
    ("shop-production", Action.LOCK): ("shop-production.deployers: alice, @release", DEPLOYERS),
}
RULES |= {
    (group.name, action): (rule, frozenset())
    for group in (STAGING, PRODUCTION, LISTED)
    for action, rule in ADMINS_ONLY.items()
}
VERBS = {
    Action.DEPLOY: "deploy",
    Action.CONTROL: "control deployments",
    Action.ROLLBACK: "roll back",
    Action.APPROVE: "approve",
    Action.LOCK: "lock environments",
    Action.FREEZE: "freeze deployments",
    Action.ADMIN: "administer deploybot",
}


def expected(caller: str | None, group: DeploymentGroup, action: Action) -> tuple[bool, str]:
    if caller is None:
        return False, f"anonymous callers may not {VERBS[action]}"
    if caller == BOOTSTRAP_ADMIN:
        return True, "bootstrap admin (deploybot-admin)"
    if caller == "root":
        return True, "admin (server.admins)"
    rule, allowed = RULES[(group.name, action)]
    return caller in allowed, rule


@pytest.mark.parametrize(
    ("group", "action", "caller"),
    list(itertools.product((STAGING, PRODUCTION, LISTED), Action, CALLERS)),
    ids=lambda value: getattr(value, "name", None) or str(value),
)
def test_every_action_for_every_caller_everywhere(group: DeploymentGroup, action: Action, caller: str | None) -> None:
    # FREEZE and ADMIN have no group ("*"); asking with one changes nothing.
    for asked in (group, None) if action in ADMINS_ONLY else (group,):
        decision = may(CONFIG, caller, action, asked)
        allowed, rule = expected(caller, group, action)
        target = asked.name if asked is not None else "*"
        assert decision == Decision(allowed, caller, action, target, rule)


@pytest.mark.parametrize(
    ("caller", "action", "group", "allowed", "rule"),
    [
        # A rollback falls back to the deployers when no rollbackers are set.
        ("alice", Action.ROLLBACK, CONFIG.group("shop", "qa"), True, "shop-qa.deployers: alice"),
        ("uma", Action.ROLLBACK, CONFIG.group("shop", "qa"), False, "shop-qa.deployers: alice"),
        # With a users section, a name it does not declare is nobody, even where anyone may.
        ("zed", Action.DEPLOY, STAGING, False, "zed is not a declared user"),
        ("Alice", Action.DEPLOY, LISTED, False, "Alice is not a declared user"),
        ("", Action.DEPLOY, STAGING, False, "anonymous callers may not deploy"),
        # A group action without a group is refused to everyone but the admins.
        ("alice", Action.DEPLOY, None, False, "deploy needs a deployment group"),
        ("root", Action.DEPLOY, None, True, "admin (server.admins)"),
    ],
)
def test_edge_cases(caller: str, action: Action, group: DeploymentGroup | None, allowed: bool, rule: str) -> None:
    decision = may(CONFIG, caller, action, group)
    assert (decision.allowed, decision.rule) == (allowed, rule)


FREE_FORM = parse_config(
    """
roles: {ops: [Pat]}
server: {admins: ['@ops']}
applications:
  fn:
    platform: lambda
    environments: [dev, live]
    deployment_groups: {dev: {}, live: {deployers: [ci-bot]}}
"""
)


@pytest.mark.parametrize(
    ("caller", "action", "environment", "allowed", "rule"),
    [
        ("anyone", Action.DEPLOY, "dev", True, "fn-dev has no deployers list: anyone may deploy"),
        ("ci-bot", Action.DEPLOY, "live", True, "fn-live.deployers: ci-bot"),
        ("anyone", Action.DEPLOY, "live", False, "fn-live.deployers: ci-bot"),
        ("anyone", Action.APPROVE, "live", False, "fn-live has no approvers list: production needs one"),
        ("Pat", Action.FREEZE, "live", True, "admin (server.admins)"),  # an admin through a role
        ("pat", Action.FREEZE, "live", False, "only admins may freeze deployments (server.admins)"),
        (BOOTSTRAP_ADMIN, Action.ADMIN, "live", True, "bootstrap admin (deploybot-admin)"),
    ],
)
def test_names_are_free_form_without_a_users_section(
    caller: str, action: Action, environment: str, allowed: bool, rule: str
) -> None:
    decision = may(FREE_FORM, caller, action, FREE_FORM.group("fn", environment))
    assert (decision.allowed, decision.rule) == (allowed, rule)


def approval_policy(config: EngineConfig, group: DeploymentGroup) -> ApprovalPolicy:
    """The release flow's approval rule for a group, with the lists expanded as the flow must build it."""
    return ApprovalPolicy(group.required_approvals, config.members(group.approvers), admins(config))


@pytest.mark.parametrize("group", [STAGING, PRODUCTION, LISTED], ids=lambda group: group.name)
@pytest.mark.parametrize("caller", [c for c in CALLERS if c is not None])
def test_the_door_and_the_release_flow_agree_on_approvers(group: DeploymentGroup, caller: str) -> None:
    # The door is never more generous than the flow; where approvers are listed, the two say the same. (With no
    # approvers listed, the flow lets anyone but the requester approve, and the door closes production.)
    door = may(CONFIG, caller, Action.APPROVE, group).allowed
    flow = approval_policy(CONFIG, group).may_approve(caller)
    assert door <= flow
    if group.approvers:
        assert door == flow


@pytest.mark.parametrize(
    ("name", "production"),
    [("production", True), ("Prod", True), ("PRD", True), ("live", True), ("staging", False), ("preprod", False)],
)
def test_production_names(name: str, production: bool) -> None:
    assert is_production(name) is production
