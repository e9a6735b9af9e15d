"""How the CLI shows deployments (no network): a live table of hosts by lifecycle events on a terminal, plain
one-line-per-change output when piped, and the static tables of ``status`` and ``history``.

Everything reads the deployment JSON of DESIGN §3.1 and tolerates missing keys, so an older or newer server
never crashes the display.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from engine import FINAL_STATUSES

_STYLE = {
    "Succeeded": "green",
    "Failed": "bold red",
    "Stopped": "red",
    "InProgress": "yellow",
    "Ready": "cyan",
    "Baking": "cyan",
    "WaitingApproval": "magenta",
    "Queued": "dim",
    "Created": "dim",
    "Pending": "dim",
    "Skipped": "dim",
    "Unknown": "magenta",
}
_SYMBOL = {"Succeeded": "✓", "Failed": "✗", "InProgress": "…", "Pending": "·", "Skipped": "-", "Unknown": "?"}
_WORDS = re.compile(r"[A-Z][a-z]*|[a-z]+|\d+")


def styled(status: str | None) -> Text:
    return Text(status or "?", style=_STYLE.get(status or "", ""))


def short_sha(revision: Mapping[str, Any] | None) -> str:
    sha = str((revision or {}).get("sha256") or "")
    return sha[:12] if sha else "-"


def when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "-"


def span(seconds: float | None) -> str:
    """``45 s``, ``12 min``, ``2 h 5 min``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{max(seconds, 0):.0f} s"
    total = round(seconds / 60)
    return f"{total} min" if total < 60 else f"{total // 60} h {total % 60} min"


def duration(deployment: Mapping[str, Any]) -> str:
    start, end = deployment.get("started_at") or deployment.get("created_at"), deployment.get("ended_at")
    return f"{end - start:.1f} s" if start and end else "-"


def _header_label(event: str) -> str:
    """``BeforeAllowTraffic`` → three short lines, so nine events fit an ordinary terminal."""
    return "\n".join(_WORDS.findall(event)) or event


def event_names(deployment: Mapping[str, Any]) -> list[str]:
    """Every lifecycle event of any target, in first-seen order (targets share one order per role)."""
    names: list[str] = []
    for target in deployment.get("targets") or ():
        for event in target.get("events") or ():
            if event.get("name") not in names:
                names.append(str(event.get("name")))
    return names


def headline(deployment: Mapping[str, Any]) -> Text:
    text = Text()
    text.append(str(deployment.get("id")), style="bold")
    text.append(f"  {deployment.get('application')} → {deployment.get('environment')}  ")
    text.append_text(styled(deployment.get("status")))
    text.append(f"  revision {short_sha(deployment.get('revision'))}  config {deployment.get('config') or '-'}")
    if deployment.get("traffic"):
        text.append(f"  traffic {deployment['traffic'].get('percent', 0)}%")
    if deployment.get("queue_position"):
        eta = deployment.get("eta_seconds")
        starts = f", starts in ~{span(eta)}" if eta is not None else ""
        text.append(f"  queued (#{deployment['queue_position']}{starts})", style="dim")
    if deployment.get("paused"):
        text.append("  paused", style="magenta")
    return text


def hint(deployment: Mapping[str, Any]) -> str | None:
    """What the person following a deployment may need to do next."""
    status, ident = deployment.get("status"), deployment.get("id")
    if deployment.get("paused"):
        return f"paused: `deploybot resume {ident}` to go on"
    if status == "Ready":
        return f"waiting to reroute traffic: `deploybot continue {ident}`"
    if status == "Baking":
        return f"baking before the next traffic step: `deploybot promote-now {ident}` skips the wait"
    waiting = (deployment.get("waiting_for") or {}).get("message")
    if status == "WaitingApproval":
        return f"{waiting or 'waiting for approval'}: `deploybot approve {ident}` (or `deploybot reject {ident}`)"
    if waiting:
        return str(waiting)
    return None


def deployment_table(deployment: Mapping[str, Any]) -> Table:
    """Hosts down, lifecycle events across, one status symbol per cell."""
    names = event_names(deployment)
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    table.add_column("host", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for name in names:
        table.add_column(_header_label(name), justify="center")
    for target in deployment.get("targets") or ():
        cells: dict[str, Text] = {}
        for event in target.get("events") or ():
            status = str(event.get("status"))
            cells[str(event.get("name"))] = Text(_SYMBOL.get(status, status), style=_STYLE.get(status, ""))
        row: list[RenderableType] = [str(target.get("name")), styled(target.get("status"))]
        table.add_row(*row, *(cells.get(name, Text("")) for name in names))
    return table


def deployment_view(deployment: Mapping[str, Any]) -> Group:
    parts: list[RenderableType] = [headline(deployment)]
    if deployment.get("targets"):
        parts.append(deployment_table(deployment))
    if (next_step := hint(deployment)) is not None:
        parts.append(Text(next_step, style="cyan"))
    return Group(*parts)


def failure_report(deployment: Mapping[str, Any]) -> list[str]:
    """The error, then each failed event with the end of its log (what a person needs to fix it)."""
    lines: list[str] = []
    error = deployment.get("error") or {}
    if error:
        lines.append(f"error: {error.get('code') or 'Error'}: {error.get('message') or ''}".rstrip())
    for target in deployment.get("targets") or ():
        for event in target.get("events") or ():
            if event.get("status") != "Failed":
                continue
            code = f" (error code {event['error_code']})" if event.get("error_code") else ""
            lines.append(f"--- {target.get('name')} {event.get('name')} failed{code}: {event.get('message') or ''}")
            tail = str(event.get("log_tail") or "").rstrip()
            lines.extend(f"    {line}" for line in tail.splitlines() if tail)
    return lines


def summary(deployment: Mapping[str, Any]) -> str:
    status = deployment.get("status")
    mark = "✓" if status == "Succeeded" else "✗" if status in FINAL_STATUSES else "•"
    return f"{mark} {deployment.get('id')} {status} after {duration(deployment)}"


class Progress:
    """Shows each new version of a deployment: redrawn in place on a terminal, as change lines otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._live: Live | None = None
        self._seen: dict[tuple[str, str], str] = {}
        self._status: str | None = None

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self._live = Live(console=self.console, refresh_per_second=8, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def update(self, deployment: Mapping[str, Any]) -> None:
        if self._live is not None:
            self._live.update(deployment_view(deployment), refresh=True)
            return
        for line in self.changes(deployment):
            self.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def changes(self, deployment: Mapping[str, Any]) -> Iterable[str]:
        """Plain lines for what changed since the previous version: a new status first, a final one last."""
        lines: list[str] = []
        for target in deployment.get("targets") or ():
            for event in target.get("events") or ():
                key = (str(target.get("name")), str(event.get("name")))
                event_status = str(event.get("status"))
                if event_status == "Pending" or self._seen.get(key) == event_status:
                    continue
                self._seen[key] = event_status
                lines.append(f"  {key[0]} {key[1]} {event_status}")
        status = str(deployment.get("status"))
        if status != self._status:
            self._status = status
            headline = [
                f"{deployment.get('id')} {deployment.get('application')} → {deployment.get('environment')}: {status}"
            ]
            if (next_step := hint(deployment)) is not None:
                headline.append(f"  {next_step}")
            lines = [*lines, *headline] if status in FINAL_STATUSES else [*headline, *lines]
        return lines


def deployments_table(deployments: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    columns = ("id", "application", "environment", "status", "revision", "config", "by", "created", "took", "rollback")
    for column in columns:
        table.add_column(column, no_wrap=True)
    for d in deployments:
        table.add_row(
            str(d.get("id")),
            str(d.get("application")),
            str(d.get("environment")),
            styled(d.get("status")),
            short_sha(d.get("revision")),
            str(d.get("config") or "-"),
            str(d.get("created_by") or "-"),
            when(d.get("created_at")),
            duration(d),
            _rollback_link(d.get("rollback") or {}),
        )
    return table


GITHUB_KINDS = frozenset({"merge", "github-deployment"})
"""Queue entries (``GET /api/v1/queue``) that are GitHub requests not yet started, not deployments."""


def github_waiting_table(entries: Sequence[Mapping[str, Any]]) -> Table:
    """Merges (and GitHub deployments) the server holds before they become deployments: which commit, where,
    waiting for what, since when."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("commit", "application", "environment", "status", "waiting for", "since", "next look"):
        table.add_column(column, no_wrap=True)
    for entry in entries:
        table.add_row(
            str(entry.get("id")),
            str(entry.get("application")),
            str(entry.get("environment")),
            Text(str(entry.get("status")), style="magenta"),
            str((entry.get("waiting_for") or {}).get("message") or "-"),
            when(entry.get("since")),
            when(entry.get("next_look_at")),
        )
    return table


def _rollback_link(rollback: Mapping[str, Any]) -> str:
    links = [f"of {rollback['of']}" if rollback.get("of") else "", f"by {rollback['by']}" if rollback.get("by") else ""]
    return ", ".join(link for link in links if link) or "-"


def plan_view(result: Mapping[str, Any]) -> Group:
    """The dry run: which hosts go together, what runs on each, and the traffic steps."""
    plan = result.get("plan") or result
    parts: list[RenderableType] = []
    config = plan.get("config") or {}
    config_name = config.get("name") if isinstance(config, Mapping) else config
    parts.append(
        Text(
            f"{plan.get('application')} → {plan.get('environment')} (group {plan.get('group')}), "
            f"config {config_name}, at least {plan.get('minimum_healthy')} healthy host(s)"
        )
    )
    for number, batch in enumerate(plan.get("batches") or (), start=1):
        parts.append(Text(f"  batch {number}: {', '.join(map(str, batch))}"))
    if plan.get("events"):
        parts.append(Text(f"  events: {' → '.join(map(str, plan['events']))}"))
    for step in plan.get("traffic_steps") or ():
        if isinstance(step, Mapping):
            parts.append(Text(f"  traffic {step.get('percent')}%, then wait {step.get('wait_seconds')} s"))
    if plan.get("startable") is False:
        parts.append(Text(f"cannot start: {plan.get('problem')}", style="bold red"))
    parts.extend(release_plan_lines(result))
    return Group(*parts)


_GATE_STYLE = {"clear": "green", "wait": "yellow", "refuse": "bold red"}


def release_plan_lines(result: Mapping[str, Any]) -> list[Text]:
    """The release side of a plan: revision and diff, gates, scripts, waits, alarms, rollback target, ETA."""
    lines: list[Text] = []
    revision, current = result.get("revision"), result.get("current")
    if isinstance(revision, Mapping):
        stored = "" if revision.get("stored") else " (not stored yet)"
        lines.append(Text(f"revision {short_sha(revision)} from {revision.get('source')}{stored}"))
    if isinstance(current, Mapping):
        lines.append(
            Text(f"  now running {short_sha(current)} since {when(current.get('since'))} (by {current.get('by')})")
        )
    elif "current" in result:
        lines.append(Text("  nothing runs there yet"))
    diff = result.get("diff") or {}
    if diff.get("same"):
        lines.append(Text("  the same bundle already runs there"))
    for commit in diff.get("commits") or ():
        lines.append(Text(f"  + {str(commit.get('sha'))[:10]} {commit.get('subject')} ({commit.get('author')})"))
    for gate in result.get("gates") or ():
        line = Text(f"gate {gate.get('gate')}: ")
        line.append(str(gate.get("state")), style=_GATE_STYLE.get(str(gate.get("state")), ""))
        line.append(f" — {gate.get('message')}")
        lines.append(line)
    for hook in result.get("hooks") or ():
        scripts = ", ".join(str(s.get("location", s)) if isinstance(s, Mapping) else str(s) for s in hook["scripts"])
        if scripts:
            lines.append(Text(f"  {hook['event']}: {scripts} ({hook.get('scripts_from')})"))
    for wait in result.get("waits") or ():
        lines.append(Text(f"  wait {wait.get('name')} ({wait.get('kind')}): {span(wait.get('seconds'))}"))
    alarms = result.get("alarms") or {}
    if alarms:
        armed = ", ".join(alarms.get("armed") or ()) or "none"
        watch = f", watched {alarms.get('watch_minutes')} min after success" if alarms.get("watch_minutes") else ""
        lines.append(Text(f"alarms armed: {armed}{watch}"))
    rollback = result.get("rollback") or {}
    if rollback:
        target = rollback.get("to")
        where = "nowhere (no earlier success)"
        if target:
            kept = "bundle stored" if target.get("bundle_stored") else "bundle MISSING"
            where = f"{short_sha(target)} of {target.get('deployment_id')} ({kept})"
        auto = "automatic" if rollback.get("enabled") else "manual only"
        lines.append(Text(f"rollback ({auto}) would return to {where}"))
    eta = result.get("eta") or {}
    if eta:
        took = span(eta.get("duration_seconds"))
        lines.append(
            Text(f"ETA: starts in ~{span(eta.get('starts_in_seconds'))}, takes ~{took} ({eta.get('based_on')} runs)")
        )
    return lines
