"""Text answers (pure): who is asking and why they may not, who may approve, what is true now when a click is stale,
what came of a request already taken, and the read-only commands ``where`` and ``plan``, as Slack mrkdwn.

People are shown as Slack mentions (``<@U0123ABC>``, which Slack renders as the person's name), followed by their
deploybot user name when it differs; a refusal names who, what, and the rule of ``engine.may`` that decided.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.messages import ButtonState, deployment_line, duration_text, source_label, who
from bot.policy import actor_from_slack
from bot.slack.clicks import Change, Stale
from engine import Action, Decision, EngineConfig, EngineError, is_production, may

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


def slack_name(config: EngineConfig, user: str | None) -> str | None:
    """A deploybot user as the thread shows them: their Slack id (a mention) when they declare one, else the name."""
    if not user:
        return user
    declared = (config.users or {}).get(user)
    return declared.slack if declared is not None and declared.slack else user


def shown_user(config: EngineConfig, user: str | None) -> str:
    """``<@U0ALICE> (alice)`` for a declared user with a Slack id; the name alone otherwise."""
    name = slack_name(config, user)
    if not user or name == user:
        return who(user)
    return f"{who(name)} ({user})"


def approvers_to_mention(
    config: EngineConfig, application: str, environment: str, requester: str | None
) -> tuple[str, ...]:
    """Who to mention on a deployment waiting for approval: the people ``engine.may`` lets approve in its group
    (the group's ``approvers`` and the admins) who have a Slack id, but not the requester (who may not approve their
    own). A group without an ``approvers`` list outside production (anyone may approve) mentions nobody."""
    try:
        group = config.group(application, environment)
    except EngineError:
        return ()
    if not group.approvers and not is_production(group.environment):
        return ()
    if config.users is not None:
        candidates = [u.name for u in config.users.values() if u.slack]
    else:  # names are Slack ids: the listed ones (roles expanded) and the admins
        candidates = [*config.members(group.approvers), *config.members(config.server.admins)]
    found: list[str] = []
    for name in candidates:
        if name == requester or not may(config, name, Action.APPROVE, group).allowed:
            continue
        if config.users is not None:
            found.append(slack_name(config, name) or name)  # only users with a Slack id are candidates
        elif who(name) != name:  # without users, a name that is a Slack id
            found.append(name)
    return tuple(dict.fromkeys(found))


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
        if env.get("description"):
            line += f": {env['description']}"
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
        source = source_label(revision.get("source"))
        lines.append(f"Revision {_revision(revision)}" + (f" {source}" if source else ""))
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


# -- clicks that are no longer true, and requests already taken ------------------------------------------------------

NOTHING_TO = {
    "stop": "nothing to stop",
    "pause": "nothing to pause",
    "resume": "nothing to resume",
    "continue": "nothing to continue",
    "approve": "it is not waiting for approval",
    "reject": "it is not waiting for approval",
    "promote": "only a deployment that succeeded can be promoted",
    "rollback": "nothing to roll back yet",
}
DONE_AS = {  # an audit log entry -> what it did, as the answer says it
    "rollback.requested": "rolled back",
    "rollback.triggered": "rolled back automatically",
    "deployment.stop_requested": "stopped",
    "approval.granted": "approved",
    "approval.rejected": "rejected",
    "deployment.pause": "paused",
    "deployment.resume": "resumed",
}


def done_phrase(kind: str, actor: str) -> str:
    """``stopped by <@U0ALICE> (alice)`` (``actor`` already shown as a person)."""
    verb = DONE_AS.get(kind, kind)
    return verb if kind == "rollback.triggered" else f"{verb} by {actor}"


def stale_text(
    action: str,
    shown: ButtonState,
    stale: Stale,
    doc: Mapping[str, Any],
    pointed: Mapping[str, Any] | None,
    *,
    done: str | None = None,
    links: tuple[str, ...] = (),
) -> str:
    """The ephemeral answer to a click that no longer matches what its message showed: what is true now (``doc``:
    the clicked deployment; ``pointed``: the one the answer points at), who did it when known (``done``), links."""
    deployment_id, status = doc["id"], doc["status"]
    pointed = pointed or doc
    where = f"{doc['application']}/{doc['environment']}"
    running = str((pointed.get("revision") or {}).get("sha256") or "")[:12]
    match stale.change:
        case Change.ROLLED_BACK:
            text = f"`{deployment_id}` was already {done or 'rolled back'}: rollback `{pointed['id']}` is "
            text += f"{pointed['status']}. Nothing new started."
        case Change.SUPERSEDED:
            text = f"`{deployment_id}` no longer runs in {where}: `{pointed['id']}` came after it "
            text += f"({pointed['status']}). Nothing rolled back; roll back from the newest thread."
        case Change.OTHER_REVISION:
            text = f"{where} runs `{running}` now (`{pointed['id']}`), not `{(shown.sha256 or '')[:12]}` as this "
            text += "thread shows: nothing promoted. Promote from the newest thread."
        case Change.OLD_BUTTON:
            text = "This Promote button is from an older message that does not say which revision it promotes: "
            text += f"nothing promoted. {where} runs `{running}` now (`{pointed['id']}`); promote from its thread."
        case _ if done:
            text = f"`{deployment_id}` was already {done}: it is {status} now. Nothing done."
        case Change.STATUS_CHANGED:
            text = f"`{deployment_id}` is {status} now, not {shown.status} as the message showed. Nothing done."
        case Change.ALREADY_PAUSED:
            text = f"`{deployment_id}` is already paused."
        case Change.NOT_PAUSED:
            text = f"`{deployment_id}` is not paused: nothing to resume."
        case _:
            text = f"`{deployment_id}` is {status}: {NOTHING_TO.get(action, 'nothing to do')}."
    return ":information_source: " + text + (" " + " · ".join(links) if links else "")


def replay_text(asked: str, state: str, outcome: Mapping[str, Any] | None, doc: Mapping[str, Any] | None) -> str:
    """The answer to a request Slack sent again (a retry, or a replay of the same signed request): it was taken
    once already; say what came of it."""
    head = f":repeat: Already taken: {asked}"
    if state in ("pending", "running", "waiting"):
        return head + " is being done; nothing new started."
    text = str((outcome or {}).get("text") or "")
    if state == "failed":
        return head + f" could not be done; nothing new started. {text}".rstrip()
    if doc is not None:
        return head + f" started `{doc['id']}`; nothing new started. Now: {deployment_line(doc)}"
    return head + "; nothing new started." + (f" It was answered: {text}" if text else "")
