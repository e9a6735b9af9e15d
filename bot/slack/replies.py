"""Text answers (pure): who is asking and why they may not, and the read-only commands ``where`` and ``plan``, as
Slack mrkdwn.

People are shown as Slack mentions (``<@U0123ABC>``, which Slack renders as the person's name), followed by their
deploybot user name when it differs; a refusal names who, what, and the rule of ``engine.may`` that decided.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.messages import duration_text, who
from bot.policy import actor_from_slack
from engine import Decision, EngineConfig

GATE_ICON = {"clear": ":white_check_mark:", "wait": ":hourglass_flowing_sand:", "refuse": ":no_entry:"}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who clicked or typed: their Slack user id and the deploybot user it maps to (None: not mapped)."""

    slack_id: str
    user: str | None

    @classmethod
    def of(cls, config: EngineConfig, slack_id: str) -> Caller:
        return cls(slack_id, actor_from_slack(config, slack_id))

    @property
    def shown(self) -> str:
        """``<@U0123ABC> (alice)``; just the mention when the Slack id is the name (no ``users`` section)."""
        mention = who(self.slack_id)
        return mention if self.user in (None, self.slack_id) else f"{mention} ({self.user})"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a caller may not: ``text`` answers them, ``reason`` is what the parent message shows after "refused"."""

    text: str
    reason: str


NOT_MAPPED = "not mapped to a deploybot user"


def not_mapped(caller: Caller, what: str) -> Refusal:
    """The refusal for a Slack user no ``users`` entry claims: what to add, and where."""
    text = (
        f":no_entry: {caller.shown} may not {what}: your Slack account is not mapped to a deploybot user; "
        f"ask an admin to add `slack: {caller.slack_id}` under users:"
    )
    return Refusal(text, NOT_MAPPED)


def rule_text(rule: str) -> str:
    """A rule of ``engine.may`` with the Slack user ids of a permission list shown as mentions (configs without
    ``users`` list Slack ids): ``app-production.deployers: <@U0ALICE>, @release``."""
    head, colon, listed = rule.partition(": ")
    if not colon or "." not in head:
        return rule
    return f"{head}: " + ", ".join(who(entry) for entry in listed.split(", "))


def refused(caller: Caller, what: str, decision: Decision) -> Refusal:
    """``:no_entry: <@U0BOB> (bob) may not deploy app to production (rule: app-production.deployers: alice)``."""
    reason = f"rule: {rule_text(decision.rule)}"
    return Refusal(f":no_entry: {caller.shown} may not {what} ({reason})", reason)


def _revision(revision: Mapping[str, Any] | None) -> str:
    if not revision:
        return "nothing"
    commit = revision.get("commit")
    return f"`{commit[:7]}`" if commit else f"`{str(revision.get('sha256') or '')[:12]}`"


def where_text(where: Mapping[str, Any]) -> str:
    """One line per environment, in promotion order: what runs, who put it there, what is in flight, locks."""
    lines = [f"*{where['application']}*"]
    for env in where["environments"]:
        line = f"• *{env['environment']}*: {_revision(env.get('revision'))}"
        if env.get("deployed_by"):
            line += f" by {who(env['deployed_by'])}"
        if env.get("deployment_id"):
            line += f" (`{env['deployment_id']}`)"
        if env.get("in_flight"):
            line += f" · in flight: `{env['in_flight']['id']}` {env['in_flight']['status']}"
        if env.get("waiting"):
            line += f" · {env['waiting']} waiting"
        lock = env.get("lock")
        if lock:
            line += f" · :lock: locked by {who(lock.get('owner'))}" + (
                f": {lock['reason']}" if lock.get("reason") else ""
            )
        lines.append(line)
    return "\n".join(lines)


def plan_text(plan: Mapping[str, Any]) -> str:
    """The dry run: gates, batches, traffic steps, where a rollback would go, ETA."""
    lines = [f"*Plan: {plan['application']} → {plan['environment']}* ({plan.get('config')})"]
    revision = plan.get("revision") or {}
    if revision:
        lines.append(f"Revision {_revision(revision)}" + (f" {revision['source']}" if revision.get("source") else ""))
    for gate in plan.get("gates") or []:
        lines.append(f"{GATE_ICON.get(gate.get('state', ''), '•')} {gate.get('gate')}: {gate.get('message', '')}")
    for index, batch in enumerate(plan.get("batches") or [], 1):
        lines.append(f"Batch {index}: {', '.join(batch)}")
    steps = plan.get("traffic_steps") or []
    if len(steps) > 1:
        lines.append("Traffic: " + " → ".join(f"{s['percent']}%" for s in steps))
    if plan.get("events"):
        lines.append("Events: " + " → ".join(plan["events"]))
    eta = (plan.get("eta") or {}).get("duration_seconds")
    if eta is not None:
        lines.append(f"ETA {duration_text(eta)}")
    if plan.get("problem"):
        lines.append(f":warning: {plan['problem']}")
    if plan.get("blocked"):
        lines.append(":no_entry: This deployment would be refused now.")
    return "\n".join(lines)
