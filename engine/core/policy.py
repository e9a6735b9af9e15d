"""Who may do what, the one rule every door asks (pure).

Each door (the API and CLI, Slack, GitHub, the CodeDeploy API, the pages) first turns its caller into one user name
(``EngineConfig.user_by_slack`` and friends, an API token's owner, or None when it cannot), then asks
``may(config, actor, action, group)``. The answer is a ``Decision``: allowed or not, and which rule decided, as data
the door words and the audit log keeps. The rule:

- an anonymous caller (None) may do nothing; with a ``users`` section, neither may a name it does not declare;
- the bootstrap admin (``BOOTSTRAP_ADMIN``, the API token in the data directory) and ``server.admins`` may do
  everything; FREEZE and ADMIN are theirs alone;
- otherwise the group's list for the action decides (DEPLOY, CONTROL, LOCK: ``deployers``; ROLLBACK: ``rollbackers``,
  else ``deployers``; APPROVE: ``approvers``), with ``@role`` entries expanded through ``roles``;
- a list that is not set means anyone, except in production (``is_production``), where it means nobody but the
  admins: production is opened on purpose.

The release flow's own approval rules (required approvals, "the requester may not approve their own", approval
lifetime) still apply after this check: ``may(APPROVE)`` only says whether someone may act as an approver at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from engine.core.config.model import DeploymentGroup, EngineConfig

BOOTSTRAP_ADMIN = "deploybot-admin"
"""Who the API token in the data directory (var/api-token) acts as; a reserved name no config may declare."""

PRODUCTION_NAMES = frozenset({"production", "prod", "prd", "live"})
"""Environment names (any case) whose unset permission lists mean "nobody but admins"."""


class Action(StrEnum):
    """What a caller asks to do; each door maps its commands onto one of these before asking ``may``."""

    DEPLOY = "deploy"  # start a deployment, promote into the group
    CONTROL = "control"  # stop, pause, resume, continue, promote a traffic step of a deployment
    ROLLBACK = "rollback"  # roll a group back
    APPROVE = "approve"  # approve or reject a deployment waiting for approval
    LOCK = "lock"  # lock or unlock one environment
    FREEZE = "freeze"  # lock or unlock every environment ("*")
    ADMIN = "admin"  # tokens, override promotion checks, registrations and configs through the CodeDeploy API


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to "may ``actor`` do ``action`` to ``target``" (a group name, or "*" for no group). ``rule`` names
    what decided, e.g. ``"hello-production.deployers: alice, @release"``, for the door to show and the log to keep."""

    allowed: bool
    actor: str | None
    action: Action
    target: str
    rule: str


VERBS: dict[Action, str] = {
    Action.DEPLOY: "deploy",
    Action.CONTROL: "control deployments",
    Action.ROLLBACK: "roll back",
    Action.APPROVE: "approve",
    Action.LOCK: "lock environments",
    Action.FREEZE: "freeze deployments",
    Action.ADMIN: "administer deploybot",
}
_ADMINS_ONLY = frozenset({Action.FREEZE, Action.ADMIN})


def is_production(environment: str) -> bool:
    """Whether an environment counts as production, by its name (any case)."""
    return environment.casefold() in PRODUCTION_NAMES


def admins(config: EngineConfig) -> tuple[str, ...]:
    """Everyone who may do everything: the bootstrap admin and ``server.admins`` with its roles expanded (what the
    release flow's ApprovalPolicy must be given, so that it agrees with ``may``)."""
    return (BOOTSTRAP_ADMIN, *config.members(config.server.admins))


def is_admin(config: EngineConfig, actor: str | None) -> bool:
    """May ``actor`` do everything (what the release flow's freeze, override and lock checks must ask)?"""
    return bool(actor) and actor in admins(config)


def permission_list(group: DeploymentGroup, action: Action) -> tuple[str, tuple[str, ...]]:
    """Which of the group's lists decides ``action`` (its key, as the rule names it) and that list as written
    (empty: not set), so a door can also show who may.

    A rollback falls back to the deployers when no ``rollbackers`` are set. FREEZE and ADMIN have no list.
    """
    if action is Action.APPROVE:
        return "approvers", group.approvers
    if action is Action.ROLLBACK:
        if group.rollbackers:
            return "rollbackers", group.rollbackers
        return ("deployers", group.deployers) if group.deployers else ("rollbackers or deployers", ())
    if action in _ADMINS_ONLY:
        raise ValueError(f"{action} is for admins only and has no list")
    return "deployers", group.deployers


def may(config: EngineConfig, actor: str | None, action: Action, group: DeploymentGroup | None) -> Decision:
    """May ``actor`` (a user name, None when the door could not tell who asks) do ``action`` to ``group`` (None for
    what has no group: FREEZE, ADMIN)?"""
    target = group.name if group is not None else "*"
    verb = VERBS[action]

    def decided(allowed: bool, rule: str) -> Decision:
        return Decision(allowed, actor, action, target, rule)

    if not actor:
        return decided(False, f"anonymous callers may not {verb}")
    if actor == BOOTSTRAP_ADMIN:
        return decided(True, f"bootstrap admin ({BOOTSTRAP_ADMIN})")
    if config.users is not None and actor not in config.users:
        return decided(False, f"{actor} is not a declared user")
    if is_admin(config, actor):
        return decided(True, "admin (server.admins)")
    if action in _ADMINS_ONLY:
        return decided(False, f"only admins may {verb} (server.admins)")
    if group is None:
        return decided(False, f"{action} needs a deployment group")
    key, listed = permission_list(group, action)
    if listed:
        return decided(actor in config.members(listed), f"{group.name}.{key}: {', '.join(listed)}")
    if is_production(group.environment):
        return decided(False, f"{group.name} has no {key} list: production needs one")
    return decided(True, f"{group.name} has no {key} list: anyone may {verb}")
