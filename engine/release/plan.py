"""The release side of ``plan`` (read only): the revision and its commits since what runs now, the gates a request
would meet, each event's scripts, waits, armed alarms, where a rollback would go, and an ETA from history.

Nothing here writes. A revision given as a path or ``git:REF`` is bundled in a scratch directory only to learn its
sha256, commit and AppSpec; locks are read without releasing expired ones, and no timer is started — so a dump of
every table is the same before and after a plan (tests/test_release_flow.py checks exactly that).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.bundles import AppSpecFile, build_bundle
from engine.core.appspec import normalized, parse_appspec
from engine.core.config.model import DeploymentGroup
from engine.core.errors import AppSpecInvalid, Problem, RevisionNotFound
from engine.core.lifecycle import TRAFFIC_EVENTS, ScriptSource, script_source
from engine.core.model import LifecycleEvent, Platform
from engine.core.requests import DeployRequest
from engine.core.s3_urls import checked_s3_revision_url
from engine.core.triggers import offline_hosts
from engine.ports import Store
from engine.release.context import ReleaseContext
from engine.release.promotion import Tenure, check_promotion, tenure
from engine.release.rules import ETA_SAMPLE, LockPolicy, durations_of, lock_message, median_duration, minutes

_MAX_COMMITS = 50


async def release_plan(
    flow: ReleaseContext, group: DeploymentGroup, request: DeployRequest, base: dict[str, Any]
) -> dict[str, Any]:
    """``base`` (batches, events, traffic steps, stages) completed with what the release flow knows."""
    store = flow.store
    now = flow.clock.now()
    rows = await store.list_deployments(group_name=group.name, limit=200)
    current = tenure(rows)
    gates: list[dict[str, Any]] = []
    wanted = request.revision
    if request.promoted_from:
        wanted, promotion_gate = await _promotion(flow, group, request, now)
        gates.append(promotion_gate)
    revision, appspec = await _revision(flow, group, wanted)
    running_appspec = None
    if current is not None:
        running_appspec = ((await store.get_revision(current.revision)) or {}).get("appspec")
    gates.append(await _lock_gate(flow, group, now))
    gates.append(await _approval_gate(flow, group, revision.get("sha256"), request.actor, now))
    gates.append(await _queue_gate(flow, group, rows, now))
    targets = [t for batch in base.get("batches") or () for t in batch] or [h.name for h in flow.config.targets(group)]
    offline = await offline_targets(flow.store, flow.config.server.agent_offline_after_seconds, group, targets, now)
    agents = agents_gate(group, offline, now)
    if agents["state"] == "refuse" or any(h["last_seen"] is not None for h in offline):
        gates.append(agents)  # shown with the gates; hosts never seen under "proceed" only in "agents"
    durations = durations_of(r for r in rows if r["status"] == "Succeeded")
    return {
        **base,
        "revision": revision,
        "current": await _current(store, current),
        "diff": await _diff(Path(flow.config.base_dir), current, revision, await _commit_of(store, current)),
        "gates": gates,
        "agents": agents,
        "blocked": any(g["state"] == "refuse" for g in gates),
        "hooks": _hooks(base, appspec, running_appspec),
        "waits": [
            {"name": s["name"], "kind": s["wait_kind"], "seconds": s["seconds"]}
            for s in base.get("stages", [])
            if s.get("kind") == "wait"
        ],
        "alarms": {
            "enabled": group.alarms.enabled,
            "armed": list(group.alarms.names) if group.alarms.enabled else [],
            "watch_minutes": group.watch_minutes,
        },
        "rollback": await _rollback_target(flow, group, rows, revision.get("sha256")),
        "eta": {
            "duration_seconds": median_duration(durations),
            "based_on": len(durations[:ETA_SAMPLE]),
            "starts_in_seconds": next(g for g in gates if g["gate"] == "queue").get("eta_seconds"),
        },
    }


async def _promotion(
    flow: ReleaseContext, group: DeploymentGroup, request: DeployRequest, now: float
) -> tuple[str | None, dict[str, Any]]:
    """The revision a promotion would carry, and the promotion gate (order, success, soak) it would meet."""
    config = flow.config
    app = config.application(group.application)
    source = app.environment(request.promoted_from or "")
    source_group = app.groups[source]
    current = tenure(await flow.store.list_deployments(group_name=source_group.name, limit=200))
    decision = check_promotion(
        application=app.name,
        environments=app.environments,
        source=source,
        target=group.environment,
        current=current,
        min_soak_seconds=source_group.min_soak_minutes * 60.0,
        now=now,
        is_admin=flow.is_admin(request.actor),
    )
    message = decision.reason if not decision.allowed else f"revision last succeeded in {source} may be promoted"
    gate = {
        "gate": "promotion",
        "state": "clear" if decision.allowed else "refuse",
        "message": message,
        "checks": [r.check for r in decision.refusals],
        "overridable": bool(decision.refusals) and all(r.overridable for r in decision.refusals),
    }
    return (f"sha256:{decision.revision}" if decision.revision else None), gate


async def _revision(flow: ReleaseContext, group: DeploymentGroup, wanted: str | None) -> tuple[dict[str, Any], Any]:
    """The revision a deployment would get, with its AppSpec, learnt without storing anything."""
    wanted = wanted or flow.config.application(group.application).revision
    if not wanted:
        return {"sha256": None, "source": None, "commit": None, "stored": False}, None
    if wanted.startswith("sha256:"):
        sha = wanted.removeprefix("sha256:")
        row = await flow.store.get_revision(sha)
        if row is None:
            raise RevisionNotFound(sha)
        stored = await flow.revisions.fetch(sha)  # a replica that lacks it brings it from the shared store
        return {"sha256": sha, "source": row["source"], "commit": row.get("commit"), "stored": stored}, row["appspec"]
    if wanted.startswith("s3://"):
        checked_s3_revision_url(wanted)
    if wanted.startswith(("s3://", "github:")):  # fetched when deployed, not for a plan: its AppSpec is unknown yet
        return {"sha256": None, "source": wanted, "commit": None, "stored": False}, None
    base = Path(flow.config.base_dir)
    source = wanted if wanted.startswith("git:") or Path(wanted).is_absolute() else str(base / wanted)
    platform = group.platform
    sha, commit, appspec = await asyncio.to_thread(_inspect, source, base, platform)
    row = await flow.store.get_revision(sha)
    stored = row is not None and await flow.revisions.fetch(sha)
    return {"sha256": sha, "source": wanted, "commit": commit, "stored": stored}, appspec


def _inspect(source: str, git_repo: Path, platform: Platform) -> tuple[str, str | None, dict[str, Any]]:
    def check(found: AppSpecFile | None) -> dict[str, Any]:
        """Before the bundle is packed: a revision without a valid AppSpec costs no packing."""
        if found is None:
            raise AppSpecInvalid([Problem("appspec.yml", 1, 1, "the revision has no appspec.yml at its root")])
        text = found.data.decode("utf-8", "replace")
        return normalized(parse_appspec(text, platform=platform, filename=found.name))

    with tempfile.TemporaryDirectory(prefix="deploybot-plan-") as scratch:
        built = build_bundle(source, Path(scratch), git_repo=git_repo, check=check)
        return built.sha256, built.commit, built.checked


async def _commit_of(store: Any, held: Tenure | None) -> str | None:
    if held is None:
        return None
    return ((await store.get_revision(held.revision)) or {}).get("commit")


async def _current(store: Any, held: Tenure | None) -> dict[str, Any] | None:
    if held is None:
        return None
    row = await store.get_revision(held.revision) or {}
    return {**held.as_dict(), "source": row.get("source"), "commit": row.get("commit")}


async def _diff(repo: Path, held: Tenure | None, revision: dict[str, Any], old_commit: str | None) -> dict[str, Any]:
    """Same bundle or not; when both sides came from git, the commits between them (newest first)."""
    new_sha, new_commit = revision.get("sha256"), revision.get("commit")
    commits = None
    if old_commit and new_commit and old_commit != new_commit:
        commits = await _git_log(repo, old_commit, new_commit)
    return {
        "from": held.revision if held else None,
        "to": new_sha,
        "same": held is not None and held.revision == new_sha,
        "commits": commits,
    }


async def _git_log(repo: Path, old: str, new: str) -> list[dict[str, str]] | None:
    try:
        process = await asyncio.create_subprocess_exec(
            *(
                "git",
                "-C",
                str(repo),
                "log",
                f"--max-count={_MAX_COMMITS}",
                "--format=%H%x1f%an%x1f%s",
                f"{old}..{new}",
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return None
    out, _ = await process.communicate()
    if process.returncode != 0:
        return None
    commits = []
    for line in out.decode("utf-8", "replace").splitlines():
        sha, author, subject = [*line.split("\x1f"), "", ""][:3]
        commits.append({"sha": sha, "author": author, "subject": subject})
    return commits


async def offline_targets(
    store: Store, offline_after: float, group: DeploymentGroup, targets: Sequence[str], now: float
) -> list[dict[str, Any]]:
    """The target hosts whose agents are offline or never seen (the agents table's ``last_seen``, on the engine
    Clock), each with when it was last heard from. Lambda and ECS targets have no agents: none."""
    if group.platform is not Platform.SERVER:
        return []
    heard = {
        row["name"]: row["last_seen"] for row in await store.get_agents(targets) if row.get("last_seen") is not None
    }
    seen: dict[str, float | None] = {
        name: float(heard[name]) if name in heard else None for name in dict.fromkeys(targets)
    }
    return [{"host": name, "last_seen": seen[name]} for name in offline_hosts(list(seen), seen, now, offline_after)]


def offline_message(offline: Sequence[Mapping[str, Any]], now: float) -> str:
    """``web-2 (last seen 3 min ago), web-3 (never seen)``."""
    return ", ".join(
        f"{h['host']} (never seen)"
        if h["last_seen"] is None
        else f"{h['host']} (last seen {minutes(now - h['last_seen'])} ago)"
        for h in offline
    )


def agents_gate(group: DeploymentGroup, offline: Sequence[Mapping[str, Any]], now: float) -> dict[str, Any]:
    """The agents a deployment would meet: all online, or which are not and what the group does about it."""
    if not offline:
        return {"gate": "agents", "state": "clear", "message": "every target's agent is online", "offline": []}
    hosts = offline_message(offline, now)
    if group.offline_hosts == "refuse":
        message = f"offline: {hosts}; this group refuses to deploy while a target is offline (offline_hosts: refuse)"
        state = "refuse"
    else:
        message = f"offline: {hosts}; the deployment would proceed and fail those hosts (offline_hosts: proceed)"
        state = "proceed"
    return {"gate": "agents", "state": state, "message": message, "offline": [dict(h) for h in offline]}


async def _lock_gate(flow: ReleaseContext, group: DeploymentGroup, now: float) -> dict[str, Any]:
    lock = await flow.blocking(group, watch_expiry=False)
    if lock is None:
        return {"gate": "lock", "state": "clear", "message": "not locked"}
    state = "refuse" if LockPolicy(group.lock_policy) is LockPolicy.REFUSE else "wait"
    message = lock_message(lock, group.application, group.environment, now)
    return {"gate": "lock", "state": state, "message": message, "lock": lock.as_dict()}


async def _approval_gate(
    flow: ReleaseContext, group: DeploymentGroup, revision: str | None, requester: str, now: float
) -> dict[str, Any]:
    if group.required_approvals <= 0:
        return {"gate": "approval", "state": "clear", "message": "no approval required"}
    policy = flow.approval_policy(group)
    state = await flow.approval_state(group, revision or "", requester, now)
    who = ", ".join(policy.approvers) if policy.approvers else "anyone but the requester"
    ttl = minutes(policy.ttl_seconds)
    if state.satisfied:
        message = f"approved by {', '.join(state.approved_by)} (approvals count for {ttl})"
    else:
        message = f"needs {state.missing} more approval(s) from {who} (each counts for {ttl}, for this revision)"
    return {
        "gate": "approval",
        "state": "clear" if state.satisfied else "wait",
        "message": message,
        **state.as_dict(policy),
    }


async def _queue_gate(
    flow: ReleaseContext, group: DeploymentGroup, rows: list[dict[str, Any]], now: float
) -> dict[str, Any]:
    running = next((r for r in rows if r["status"] in ("Created", "InProgress", "Ready", "Baking")), None)
    queued = sum(1 for r in rows if r["status"] == "Queued")
    eta = await flow.eta(group.name, queued + 1)
    if running is None and not queued:
        return {"gate": "queue", "state": "clear", "message": "the group is idle", "eta_seconds": eta}
    parts = []
    if running is not None:
        elapsed = now - (running["started_at"] or running["created_at"])
        parts.append(f"{running['id']} is running ({minutes(elapsed)})")
    if queued:
        parts.append(f"{queued} queued ahead")
    parts.append(f"would start in ~{minutes(eta)}" if eta is not None else "start time unknown (no history yet)")
    return {
        "gate": "queue",
        "state": "wait",
        "message": ", ".join(parts),
        "running": running["id"] if running else None,
        "queued_ahead": queued,
        "eta_seconds": eta,
    }


def _hooks(base: dict[str, Any], appspec: Any, running: Any) -> list[dict[str, Any]]:
    """Each event of the plan with the scripts it would run and whose they are (reference §4.5: the block-traffic
    hooks and ApplicationStop run the scripts of the revision already installed)."""
    out = []
    events = [*base.get("events", []), *base.get("original_events", [])]
    for name in dict.fromkeys(events):
        event = LifecycleEvent(name)
        if event in TRAFFIC_EVENTS:
            out.append({"event": name, "scripts": [], "scripts_from": "load balancer"})
            continue
        from_running = script_source(event) is not ScriptSource.CURRENT
        spec = running if from_running else appspec
        scripts = list(((spec or {}).get("hooks") or {}).get(name, []))
        owner = "running revision" if from_running else "new revision"
        out.append({"event": name, "scripts": scripts, "scripts_from": owner if scripts else None})
    return out


async def _rollback_target(
    flow: ReleaseContext, group: DeploymentGroup, rows: list[dict[str, Any]], new: str | None
) -> dict[str, Any]:
    """Where an automatic rollback of this deployment would go: the last good revision other than ``new``."""
    target = next((r for r in rows if r["status"] == "Succeeded" and r["revision_sha256"] != new), None)
    auto = group.auto_rollback
    result: dict[str, Any] = {"enabled": auto.enabled, "events": sorted(str(e) for e in auto.events), "to": None}
    if target is not None:
        sha = target["revision_sha256"]
        stored = await flow.store.get_revision(sha) is not None and await flow.revisions.fetch(sha)
        result["to"] = {"sha256": sha, "deployment_id": target["id"], "bundle_stored": stored}
    return result
