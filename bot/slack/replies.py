"""Text answers to the read-only commands (pure): ``where`` and ``plan`` as Slack mrkdwn."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.messages import duration_text, who

GATE_ICON = {"clear": ":white_check_mark:", "wait": ":hourglass_flowing_sand:", "refuse": ":no_entry:"}


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
