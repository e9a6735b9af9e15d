"""Who may do what from Slack, per environment (pure).

Each deployment group may list Slack user ids (U…, W…) and user-group ids (S…) under ``slack_deployers``,
``slack_approvers`` and ``slack_rollbackers``. A list that is set is the whole truth for that permission. A list
left out means "anyone" — except in production, where it means "nobody": production must be opened on purpose.
Group membership is looked up by the caller (Slack's ``usergroups.users.list``) and passed in, so this stays pure.
The engine's own rules (approvers, locks, promotion order) still apply after this check.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from engine import EngineConfig, is_production


class Permission(enum.StrEnum):
    DEPLOY = "deploy"  # deploy, promote into, stop/pause/resume/continue, lock/unlock
    APPROVE = "approve"  # approve / reject a waiting deployment
    ROLLBACK = "rollback"  # roll back (button or command)


_CONFIG_KEY = {
    Permission.DEPLOY: "slack_deployers",
    Permission.APPROVE: "slack_approvers",
    Permission.ROLLBACK: "slack_rollbackers",
}


@dataclass(frozen=True, slots=True)
class EnvironmentRule:
    application: str
    environment: str
    production: bool
    allowed: Mapping[Permission, tuple[str, ...]]  # empty tuple: not configured


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str  # why not (or, when allowed, by which rule), in words for the chat


def mention(slack_id: str) -> str:
    """How Slack renders an id in text: users as @name, user groups as @group."""
    return f"<!subteam^{slack_id}>" if slack_id.startswith("S") else f"<@{slack_id}>"


@dataclass(frozen=True, slots=True)
class SlackPolicy:
    rules: Mapping[tuple[str, str], EnvironmentRule]  # (application, environment) in declared spelling

    @classmethod
    def from_config(cls, config: EngineConfig) -> SlackPolicy:
        rules = {}
        for app in config.applications.values():
            for env, group in app.groups.items():
                allowed = {perm: tuple(getattr(group, key, ())) for perm, key in _CONFIG_KEY.items()}
                rules[(app.name, env)] = EnvironmentRule(app.name, env, is_production(env), allowed)
        return cls(rules)

    def groups_to_check(self, permission: Permission, application: str, environment: str) -> tuple[str, ...]:
        """The user-group ids whose members would be allowed: the caller resolves membership of these only."""
        rule = self._rule(application, environment)
        return tuple(i for i in rule.allowed[permission] if i.startswith("S")) if rule else ()

    def decide(
        self,
        permission: Permission,
        application: str,
        environment: str,
        user: str,
        user_groups: Iterable[str] = (),
    ) -> Decision:
        rule = self._rule(application, environment)
        where = f"{application}/{environment}"
        if rule is None:
            return Decision(False, f"{where} is not a configured environment")
        listed = rule.allowed[permission]
        key = _CONFIG_KEY[permission]
        if not listed:
            if rule.production:
                return Decision(
                    False,
                    f"nobody may {permission} in {where} from Slack until `{key}` lists them "
                    "(production is closed by default)",
                )
            return Decision(True, f"{key} is not set for {where}: anyone may {permission}")
        if user in listed:
            return Decision(True, f"<@{user}> is listed in {key} of {where}")
        member_of = set(user_groups) & {i for i in listed if i.startswith("S")}
        if member_of:
            return Decision(True, f"<@{user}> is in {mention(sorted(member_of)[0])}, listed in {key} of {where}")
        who = ", ".join(mention(i) for i in listed)
        return Decision(False, f"only {who} may {permission} in {where} ({key})")

    def _rule(self, application: str, environment: str) -> EnvironmentRule | None:
        rule = self.rules.get((application, environment))
        if rule is not None:
            return rule
        wanted = (application.casefold(), environment.casefold())
        return next((r for (a, e), r in self.rules.items() if (a.casefold(), e.casefold()) == wanted), None)
