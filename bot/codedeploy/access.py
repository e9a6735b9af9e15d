"""Who may call what on the CodeDeploy API: each access key is one deploybot user, and each operation asks
``engine.may`` (the one policy every door asks) before it changes anything.

Who: with a ``users`` section, a key is the user whose ``aws_access_key_id`` it is; failing that, the ACTOR its
DEPLOYBOT_AWS_KEYS entry names, when that is a declared user; any other key is refused for every operation, reads
included. Without a ``users`` section the ACTOR is the caller's name, free-form, as before. The signature proves
the caller holds the key's secret (DEPLOYBOT_AWS_KEYS); the config only says whose key it is. No key acts as the
bootstrap admin: that name belongs to the API token in the data directory.

What: every operation declares an ``Access`` next to its name (the ``OPERATIONS`` of each operation group): a read
needs an identified caller and nothing more; anything else names the ``Action`` the policy is asked about and where
its deployment group comes from. A refusal is ``AccessDeniedException`` saying who, what, where and the rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from bot.codedeploy.shapes import ApiError
from bot.codedeploy.sigv4 import AccessKey
from engine import BOOTSTRAP_ADMIN, Action, Decision, EngineConfig

ACCESS_DENIED = "AccessDenied"


class Target(StrEnum):
    """Where an operation's deployment group comes from (what ``may`` is asked about)."""

    NONE = "none"  # a read: no group, no Action
    REGISTRY = "none (target *)"  # what is registered (configurations, revisions, instances): ADMIN, no group
    GROUP = "applicationName + deploymentGroupName"
    DEPLOYMENT = "deploymentId's group"
    HOOK = "the hook execution's deployment's group"  # deploymentId, else the waiting execution's own


@dataclass(frozen=True, slots=True)
class Access:
    """What an operation needs: ``action`` None for a read (any identified caller), else ``may(action)`` on the
    group ``target`` names. ``rollback_flag``: a request member that, when true, asks ROLLBACK instead."""

    action: Action | None
    target: Target = Target.NONE
    rollback_flag: str | None = None

    def describe(self) -> str:
        """The action as the docs' table shows it, e.g. ``CONTROL (ROLLBACK with autoRollbackEnabled)``."""
        if self.action is None:
            return "read: any user"
        words = self.action.name
        return f"{words} ({Action.ROLLBACK.name} with {self.rollback_flag})" if self.rollback_flag else words


READ = Access(None)
ADMIN = Access(Action.ADMIN, Target.REGISTRY)


class AccessDenied(ApiError):
    """``AccessDeniedException``: an unmapped key, or the policy's refusal (``decision``, when there is one)."""

    def __init__(self, message: str, decision: Decision | None = None) -> None:
        super().__init__(ACCESS_DENIED, message)
        self.decision = decision


def user_of(config: EngineConfig, key: AccessKey) -> str:
    """The deploybot user a verified access key acts as; raises AccessDenied when it is nobody's."""
    if config.users is None:
        user: str | None = key.actor
    else:
        user = config.user_by_access_key(key.access_key)
        if user is None and key.actor in config.users:
            user = key.actor
    if user is None:
        raise AccessDenied(
            f"access key {key.access_key} is not mapped to a deploybot user: give a user of the config's users "
            f"section aws_access_key_id: {key.access_key}, or name a declared user as its ACTOR in DEPLOYBOT_AWS_KEYS"
        )
    if user == BOOTSTRAP_ADMIN:
        raise AccessDenied(
            f"access key {key.access_key} names {BOOTSTRAP_ADMIN}, the data directory's API token: give the key a "
            "user of its own (one listed in server.admins may do everything)"
        )
    return user


def key_problems(config: EngineConfig, keys: Mapping[str, AccessKey]) -> list[str]:
    """What an operator should hear at startup about DEPLOYBOT_AWS_KEYS against the ``users`` section: keys that will
    be refused, keys that act as someone other than their ACTOR, users whose key id cannot sign."""
    if config.users is None:
        return [
            f"access key {k.access_key} names {BOOTSTRAP_ADMIN}: it will be refused"
            for k in keys.values()
            if k.actor == BOOTSTRAP_ADMIN
        ]
    problems = []
    for key in keys.values():
        mapped = config.user_by_access_key(key.access_key)
        if mapped is None and key.actor not in config.users:
            problems.append(
                f"access key {key.access_key} (ACTOR {key.actor}) is not mapped to a deploybot user: it will be refused"
            )
        elif mapped is not None and mapped != key.actor:
            problems.append(f"access key {key.access_key} acts as {mapped} (users.{mapped}), not its ACTOR {key.actor}")
    for user in config.users.values():
        if user.aws_access_key_id and user.aws_access_key_id not in keys:
            problems.append(
                f"users.{user.name}.aws_access_key_id {user.aws_access_key_id} is not in DEPLOYBOT_AWS_KEYS: "
                "no request can be signed with it"
            )
    return problems


def denial(operation: str, decision: Decision) -> AccessDenied:
    """``User: alice is not authorized to perform: codedeploy:CreateDeployment on hello-production (rule)``."""
    return AccessDenied(
        f"User: {decision.actor} is not authorized to perform: codedeploy:{operation} on {decision.target} "
        f"({decision.rule})",
        decision,
    )
