"""GitHubNotifier: every deployment of a GitHub-backed application mirrored as a GitHub deployment with statuses.

The Deployer calls ``deployment_changed`` inline after each persisted transition, so the notifier only enqueues;
one worker posts in order (queued → in_progress → success / failure / error), skipping repeats of the same state
and description. When a deployment succeeds, the GitHub deployment it replaced in that environment is marked
``inactive``. Which GitHub deployment belongs to which deploybot deployment is kept in a JSON file under the data
dir, so a restarted server keeps reporting on the same ones. Nothing here ever raises into the engine.

A GitHub deployment somebody else created (``deployment`` webhook) is *adopted*: ``expect`` is told before the
Deployer starts it, and the first deployment of that application, environment and commit reports on it.

A deployment started by a pull-request comment is *followed* (``follow_comment``): its one reply comment is edited
with ``comment_body`` (bot/github/pr_comments.py) whenever what it would say changes. Which reply belongs to which
deployment is kept in the same JSON file, so a restarted server goes on editing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.github.client import GitHubClient
from engine import Application, EngineConfig

log = logging.getLogger(__name__)

DESCRIPTION_LIMIT = 140
CommentBody = Callable[[Mapping[str, Any], Mapping[str, Any], str], str]
"""(what the reply answers, the deployment, its page link) → the reply comment's text."""
PAYLOAD_KEY = "deploybot"  # in the payload of the GitHub deployments deploybot creates (their webhooks are ignored)


@dataclass(frozen=True, slots=True)
class GitHubStatus:
    state: str  # queued | in_progress | success | failure | error | inactive
    description: str


def github_status(deployment: Mapping[str, Any]) -> GitHubStatus:
    """What a deploybot deployment looks like as a GitHub deployment status (pure)."""
    status = deployment.get("status")
    error = (deployment.get("error") or {}).get("message") or ""
    if status == "WaitingApproval":
        return GitHubStatus("queued", "waiting for approval")
    if status in ("Created", "Queued"):
        position = deployment.get("queue_position")
        return GitHubStatus("queued", f"queued (position {position})" if position else "queued")
    if status == "Succeeded":
        of = (deployment.get("rollback") or {}).get("of")
        return GitHubStatus(
            "success", _short(f"rolled back {of}" if of else f"deployed to {deployment['environment']}")
        )
    if status == "Failed":
        rolled_back = (deployment.get("rollback") or {}).get("by")
        return GitHubStatus("failure", _short(("rolled back: " if rolled_back else "failed: ") + (error or "failed")))
    if status == "Stopped":
        return GitHubStatus("error", _short(f"stopped: {error}" if error else "stopped"))
    return GitHubStatus("in_progress", _short(_progress(deployment)))


def _progress(deployment: Mapping[str, Any]) -> str:
    if deployment.get("status") == "Baking":
        return "watching alarms after the deployment"
    if deployment.get("status") == "Ready":
        return "ready: waiting to reroute traffic"
    traffic = deployment.get("traffic") or {}
    percent = traffic.get("percent") or 0
    if percent:
        config = str(deployment.get("config") or "").lower()
        kind = "canary" if "canary" in config else "linear" if "linear" in config else "traffic"
        return f"{kind} {percent} %"
    targets = deployment.get("targets") or []
    done = sum(1 for t in targets if t.get("status") in ("Succeeded", "Skipped"))
    return f"{done}/{len(targets)} hosts done" if targets else "in progress"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DESCRIPTION_LIMIT else text[: DESCRIPTION_LIMIT - 1] + "…"


class GitHubNotifier:
    def __init__(
        self,
        client: GitHubClient,
        config: EngineConfig,
        *,
        state_file: Path,
        public_url: str,
        page_link: Callable[[str], str] | None = None,
        comment_body: CommentBody | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.state_file = state_file
        self.public_url = public_url.rstrip("/")
        # The deployment's page (a signed link, so whoever reads the status can open it); the API URL otherwise.
        self.page_link = page_link or (lambda deployment_id: f"{self.public_url}/api/v1/deployments/{deployment_id}")
        self.comment_body = comment_body
        self._state = _load(state_file)
        self._expected: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._queue: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    # -- the Notifier port -----------------------------------------------------------------------------------

    def follows(self, group: str) -> bool:
        return True  # which deployments came from GitHub shows in their documents

    async def deployment_changed(self, deployment: Mapping[str, Any]) -> None:
        self._queue.put_nowait(dict(deployment))

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._worker = asyncio.ensure_future(self._run())

    async def close(self, *, drain_seconds: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), drain_seconds)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def idle(self) -> None:
        """Wait until everything enqueued so far has been posted (tests, shutdown)."""
        await self._queue.join()

    def expect(self, application: str, environment: str, sha256: str, *, repository: str, github_id: int) -> None:
        """The next deployment of this revision there reports on GitHub deployment ``github_id``."""
        self._expected[(application, environment, sha256)] = {"repository": repository, "github_id": github_id}

    def follow_comment(
        self, deployment_id: str, *, repository: str, reply_id: int, asked: Mapping[str, Any], body: str = ""
    ) -> None:
        """Edit reply comment ``reply_id`` as deployment ``deployment_id`` moves (``asked``: what it answers, for
        ``comment_body``; ``body``: what it says now)."""
        entry = {"repository": repository, "reply_id": reply_id, "asked": dict(asked), "body": body}
        self._state["comments"][deployment_id] = entry
        self._save()

    def forget(self, application: str, environment: str, sha256: str) -> None:
        self._expected.pop((application, environment, sha256), None)

    def reported(self, deployment_id: str) -> str | None:
        """The last state posted for a deploybot deployment (None before its GitHub deployment exists)."""
        entry = self._state["deployments"].get(deployment_id)
        return str(entry["state"]) if entry and entry.get("state") else None

    def github_id(self, deployment_id: str) -> int | None:
        entry = self._state["deployments"].get(deployment_id)
        return int(entry["github_id"]) if entry else None

    # -- the worker ------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            document = await self._queue.get()
            try:
                await self._post(document)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not report deployment %s to GitHub", document.get("id"))
            finally:
                self._queue.task_done()

    async def _post(self, deployment: Mapping[str, Any]) -> None:
        try:
            await self._edit_reply(deployment)
        except asyncio.CancelledError:
            raise
        except Exception:  # the GitHub deployment's status still goes out
            log.exception("could not edit the reply comment of deployment %s", deployment.get("id"))
        app = self.config.applications.get(str(deployment.get("application")))
        revision = deployment.get("revision") or {}
        entry = self._state["deployments"].get(deployment["id"])
        if app is None or not app.github_repository:
            return
        if entry is None:
            key = (app.name, str(deployment["environment"]), str(revision.get("sha256")))
            if key not in self._expected and not revision.get("commit"):
                return  # a revision without a commit (a directory): nothing to attach a GitHub deployment to
            entry = await self._open(deployment, app.github_repository, self._expected.pop(key, None), app)
        wanted = github_status(deployment)
        if (entry.get("state"), entry.get("description")) == (wanted.state, wanted.description):
            return
        await self._status(entry, wanted, deployment["id"])
        if wanted.state == "success":
            await self._replace(entry)
        self._save()

    async def _open(
        self, deployment: Mapping[str, Any], repository: str, adopted: dict[str, Any] | None, app: Application
    ) -> dict[str, Any]:
        """Adopt the expected GitHub deployment or create one; its first status is always ``queued``."""
        environment = str(deployment["environment"])
        if adopted is not None:
            entry = {**adopted, "environment": environment}
        else:
            gh = await self.client.api(repository)
            created = await gh.post(
                f"/repos/{repository}/deployments",
                data={
                    "ref": deployment["revision"]["commit"],
                    "environment": environment,
                    "description": _short(deployment.get("description") or f"deploybot {deployment['id']}"),
                    "auto_merge": False,
                    "required_contexts": [],  # deploybot's own gate (require_checks) already ran
                    "payload": {PAYLOAD_KEY: {"deployment_id": deployment["id"]}},
                    "production_environment": environment == app.environments[-1],
                },
            )
            entry = {"repository": repository, "github_id": int(created["id"]), "environment": environment}
        self._state["deployments"][deployment["id"]] = entry
        self._save()
        if github_status(deployment).state != "queued":
            await self._status(entry, GitHubStatus("queued", "queued"), deployment["id"])
        return entry

    async def _edit_reply(self, deployment: Mapping[str, Any]) -> None:
        followed = self._state["comments"].get(deployment["id"])
        if followed is None or self.comment_body is None:
            return
        body = self.comment_body(followed["asked"], deployment, self.page_link(deployment["id"]))
        if body == followed.get("body"):
            return
        repository = str(followed["repository"])
        gh = await self.client.api(repository)
        await gh.patch(f"/repos/{repository}/issues/comments/{followed['reply_id']}", data={"body": body})
        followed["body"] = body
        self._save()

    async def _status(self, entry: dict[str, Any], status: GitHubStatus, deployment_id: str) -> None:
        repository, environment = entry["repository"], entry["environment"]
        data: dict[str, Any] = {
            "state": status.state,
            "description": status.description,
            "environment": environment,
            "log_url": self.page_link(deployment_id),
        }
        app = next((a for a in self.config.applications.values() if a.github_repository == repository), None)
        url = app.github_environment_urls.get(environment) if app else None
        if url:
            data["environment_url"] = url
        gh = await self.client.api(repository)
        await gh.post(f"/repos/{repository}/deployments/{entry['github_id']}/statuses", data=data)
        entry["state"], entry["description"] = status.state, status.description

    async def _replace(self, entry: dict[str, Any]) -> None:
        key = f"{entry['repository'].lower()}|{entry['environment']}"
        previous = self._state["active"].get(key)
        self._state["active"][key] = entry["github_id"]
        if previous is None or int(previous) == int(entry["github_id"]):
            return
        gh = await self.client.api(entry["repository"])
        await gh.post(
            f"/repos/{entry['repository']}/deployments/{previous}/statuses",
            data={"state": "inactive", "environment": entry["environment"], "description": "replaced"},
        )

    def _save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.state_file.with_suffix(".tmp")
        partial.write_text(json.dumps(self._state, indent=1, sort_keys=True), encoding="utf-8")
        partial.chmod(0o600)  # the data dir's files are deploybot's alone
        os.replace(partial, self.state_file)


def _load(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        state = {}
    return {
        "deployments": dict(state.get("deployments") or {}),
        "active": dict(state.get("active") or {}),
        "comments": dict(state.get("comments") or {}),
    }
