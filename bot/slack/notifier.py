"""SlackNotifier: one Slack thread per deployment, its parent message edited in place as the deployment moves.

The engine calls ``deployment_changed`` after every persisted transition and waits for it, so that call only
records: the new version of the document, and the milestones (messages.milestones) since the version before.
One worker task per deployment does the talking: it posts the parent message once, posts milestone replies in
order, and edits the parent with ``chat.update`` at most once per ``min_edit_interval`` (coalescing whatever
happened meanwhile into one edit, and skipping edits that would change nothing). A 429 is retried after its
``Retry-After``; any other failure is logged and dropped — a notifier must never break or slow a deployment.

Where each parent message lives (channel id and ts) is kept in a small JSON file under the data directory, so a
restarted server keeps editing the same message instead of starting a second thread.

People are shown as Slack mentions: a deployment's ``created_by`` that is a declared user with a ``slack:`` id is
rendered as that id (``<@U…>``). A rollback is created by ``codeDeployRollback``; when someone asked for it in Slack,
ChatOps tells the notifier (``expect_rollback`` before the engine call, ``rollback_requested`` after), and the
threads show that person as who started it instead.

The parent message ends with a "View deployment" button to the deployment's page (a signed, expiring link from
``page_link``). The link is made once per thread: a fresh expiry on every render would make every edit look like a
change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.models.blocks import ButtonElement, MarkdownTextObject, SectionBlock
from slack_sdk.web.async_client import AsyncWebClient

from bot.messages import (
    MessageContext,
    MilestoneKind,
    deployment_blocks,
    fallback_text,
    milestones,
    rollback_finished_text,
    who,
)
from engine import FINAL_STATUSES, ROLLBACK_CREATOR, EngineConfig

log = logging.getLogger(__name__)

MAX_RATE_LIMIT_RETRIES = 5
PAGE_ACTION = "page.view"  # a URL button: Slack still sends the click, bot.slack.app only acknowledges it
PAGE_BLOCK = "deployment-page"


def page_block(url: str) -> dict[str, Any]:
    """A section linking to the deployment page: host-by-event grid, script output, traffic chart."""
    button = ButtonElement(text="View deployment", action_id=PAGE_ACTION, url=url)
    text = MarkdownTextObject(text=f"<{url}|Deployment page>: each host's events, script output, traffic")
    return SectionBlock(block_id=PAGE_BLOCK, text=text, accessory=button).to_dict()


def with_page_link(blocks: list[dict[str, Any]], url: str) -> list[dict[str, Any]]:
    """``blocks`` with the page link placed before the action buttons (or last when there are none)."""
    at = next((i for i, b in enumerate(blocks) if b.get("type") == "actions"), len(blocks))
    return [*blocks[:at], page_block(url), *blocks[at:]]


class ThreadStore:
    """deployment id -> (channel id, parent ts), in a JSON file replaced atomically on every new thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._threads: dict[str, list[str]] = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            self._threads = {}

    def get(self, deployment_id: str) -> tuple[str, str] | None:
        found = self._threads.get(deployment_id)
        return (found[0], found[1]) if found else None

    def put(self, deployment_id: str, channel: str, ts: str) -> None:
        self._threads[deployment_id] = [channel, ts]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self._threads, indent=0), encoding="utf-8")
        temporary.chmod(0o600)  # the data dir's files are deploybot's alone
        os.replace(temporary, self.path)


@dataclass
class _Thread:
    deployment_id: str
    doc: dict[str, Any]
    seen: Mapping[str, Any] | None  # the version milestones were last computed against
    channel: str | None = None
    ts: str | None = None
    replies: list[str] = field(default_factory=list)
    note: str | None = None
    rollbacks_announced: set[str] = field(default_factory=set)
    page_url: str | None = None  # made once, so the link (and its expiry) is the same in every edit
    posted: str | None = None  # JSON of the blocks last sent
    last_edit: float = float("-inf")
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    working: bool = False
    abandoned: bool = False  # no channel to post in: stay quiet
    task: asyncio.Task[None] | None = None


class SlackNotifier:
    def __init__(
        self,
        client: AsyncWebClient,
        config: EngineConfig,
        state_file: Path,
        *,
        min_edit_interval: float = 1.0,
        channel_wait: float = 5.0,
        page_link: Callable[[str], str] | None = None,
    ) -> None:
        self.client = client
        self.page_link = page_link  # deployment id -> the page's URL (bot.pages.links.page_url)
        self.config = config
        self.store = ThreadStore(state_file)
        self.min_edit_interval = min_edit_interval
        self.channel_wait = channel_wait
        self.rate_limited = 0  # 429 answers seen (and waited out)
        self._threads: dict[str, _Thread] = {}
        self._channel_hints: dict[str, str] = {}
        self._hinted = asyncio.Condition()
        self._last_commit: dict[tuple[str, str], str] = {}
        # Who asked for a rollback in Slack: by the rollback's id, by the id of the deployment it will roll back
        # (a running one stopped with rollback), and by group while the engine call that creates it runs.
        self._requesters: dict[str, str] = {}
        self._requesters_of: dict[str, str] = {}
        self._expected_rollbacks: dict[tuple[str, str], str] = {}

    # -- the engine's side (engine.ports.Notifier) -----------------------------------------------------------

    async def deployment_changed(self, deployment: Mapping[str, Any]) -> None:
        try:
            self._record(dict(deployment))
        except Exception:  # never into the engine
            log.exception("slack notifier could not record %s", deployment.get("id"))

    def _record(self, doc: dict[str, Any]) -> None:
        thread = self._threads.get(doc["id"])
        if thread is None:
            self._claim_rollback(doc)
            known = self.store.get(doc["id"])
            # After a restart the thread already told the story so far: continue from here, replay nothing.
            thread = _Thread(doc["id"], doc, seen=doc if known else None)
            if known:
                thread.channel, thread.ts = known
            self._threads[doc["id"]] = thread
            self._announce_rollback(doc)
        for milestone in milestones(thread.seen, doc):
            if milestone.kind is MilestoneKind.ROLLBACK_STARTED:
                rollback_id = str(doc["rollback"]["by"])  # the milestone exists because the rollback has an id
                if rollback_id in thread.rollbacks_announced:
                    continue
                thread.rollbacks_announced.add(rollback_id)
            thread.replies.append(milestone.text)
        thread.seen = thread.doc = doc
        if doc["status"] == "Succeeded" and (doc.get("revision") or {}).get("commit"):
            self._last_commit[(doc["application"], doc["environment"])] = doc["revision"]["commit"]
        if doc["status"] in FINAL_STATUSES and (doc.get("rollback") or {}).get("of"):
            self._reply_to(doc["rollback"]["of"], rollback_finished_text(doc))
        self._wake(thread)

    def _announce_rollback(self, doc: Mapping[str, Any]) -> None:
        """A new rollback deployment: say so in the thread of the deployment it rolls back."""
        original_id = (doc.get("rollback") or {}).get("of")
        original = self._threads.get(original_id) if original_id else None
        if original is None or doc["id"] in original.rollbacks_announced:
            return
        original.rollbacks_announced.add(doc["id"])
        original.doc = {**original.doc, "rollback": {**(original.doc.get("rollback") or {}), "by": doc["id"]}}
        original.replies.append(f":rewind: Rollback started: `{doc['id']}` by {who(self._shown_actor(doc))}")
        self._wake(original)

    def _reply_to(self, deployment_id: str, text: str) -> None:
        thread = self._threads.get(deployment_id)
        if thread is not None:
            thread.replies.append(text)
            self._wake(thread)

    def _claim_rollback(self, doc: Mapping[str, Any]) -> None:
        """A new rollback someone asked for in Slack: remember them as its requester."""
        rolls_back = (doc.get("rollback") or {}).get("of")
        if not rolls_back or doc.get("created_by") != ROLLBACK_CREATOR or doc["id"] in self._requesters:
            return
        requester = self._requesters_of.pop(rolls_back, None) or self._expected_rollbacks.pop(
            (doc["application"], doc["environment"]), None
        )
        if requester is not None:
            self._requesters[doc["id"]] = requester

    def _shown_actor(self, doc: Mapping[str, Any]) -> str | None:
        """Who started the deployment, as the thread shows them: the Slack requester of a rollback, and a declared
        user as their Slack id (a mention) when they have one."""
        actor = self._requesters.get(doc["id"]) or doc.get("created_by")
        user = (self.config.users or {}).get(actor or "")
        return user.slack if user is not None and user.slack else actor

    # -- the Slack app's side --------------------------------------------------------------------------------

    def expect_rollback(self, application: str, environment: str, requester: str) -> None:
        """``requester`` is asking the engine to roll this group back now: the rollback it creates is theirs."""
        self._expected_rollbacks[(application, environment)] = requester

    def forget_rollback(self, application: str, environment: str) -> None:
        self._expected_rollbacks.pop((application, environment), None)

    def rollback_requested(self, result: Mapping[str, Any], requester: str) -> None:
        """What the engine answered a rollback with: the rollback deployment itself, or the running deployment it
        stopped (whose rollback the engine creates once it has stopped)."""
        if (result.get("rollback") or {}).get("of"):
            self._requesters.setdefault(result["id"], requester)
            thread = self._threads.get(result["id"])
            if thread is not None:
                self._wake(thread)  # re-render "Started by"
        elif not (result.get("rollback") or {}).get("by"):
            self._requesters_of[result["id"]] = requester
        else:
            self._requesters.setdefault(result["rollback"]["by"], requester)

    async def hint_channel(self, deployment_id: str, channel: str) -> None:
        """Where to open the thread when the application names no ``slack_channel`` (the command's channel)."""
        async with self._hinted:
            self._channel_hints[deployment_id] = channel
            self._hinted.notify_all()

    async def note(self, deployment: Mapping[str, Any], text: str, *, reply: bool = True) -> None:
        """Show on the parent message who clicked what and what happened (and say it in the thread)."""
        try:
            self._record(dict(deployment))
            thread = self._threads[deployment["id"]]
            thread.note = text
            if reply:
                thread.replies.append(text)
            self._wake(thread)
        except Exception:
            log.exception("slack notifier could not note on %s", deployment.get("id"))

    def thread_of(self, deployment_id: str) -> tuple[str, str] | None:
        thread = self._threads.get(deployment_id)
        if thread is not None and thread.channel and thread.ts:
            return thread.channel, thread.ts
        return self.store.get(deployment_id)

    async def idle(self, timeout: float = 10.0) -> None:
        """Until every queued post and edit is done (tests; shutdown)."""
        async with asyncio.timeout(timeout):
            while any(t.working or t.wake.is_set() or t.replies for t in self._threads.values()):
                await asyncio.sleep(0.02)

    async def close(self, grace: float = 2.0) -> None:
        with contextlib.suppress(TimeoutError):
            await self.idle(grace)
        tasks = [t.task for t in self._threads.values() if t.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the workers -----------------------------------------------------------------------------------------

    def _wake(self, thread: _Thread) -> None:
        if thread.abandoned:
            thread.replies.clear()
            return
        thread.wake.set()
        if thread.task is None or thread.task.done():
            thread.task = asyncio.ensure_future(self._work(thread))

    async def _work(self, thread: _Thread) -> None:
        try:
            while True:
                await thread.wake.wait()
                thread.wake.clear()
                thread.working = True
                if thread.ts is None and not await self._open(thread):
                    thread.abandoned = True
                    thread.replies.clear()
                    return
                await self._post_replies(thread)
                await self._edit(thread)
                await self._post_replies(thread)
                thread.working = False
                if not thread.wake.is_set() and thread.doc["status"] in FINAL_STATUSES:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("slack thread of %s failed", thread.deployment_id)
        finally:
            thread.working = False

    async def _channel_for(self, thread: _Thread) -> str | None:
        doc = thread.doc
        with contextlib.suppress(Exception):
            channel = self.config.application(doc["application"]).slack_channel
            if channel:
                return channel
        async with self._hinted:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._hinted.wait_for(lambda: doc["id"] in self._channel_hints), self.channel_wait
                )
        return self._channel_hints.get(doc["id"])

    async def _open(self, thread: _Thread) -> bool:
        channel = await self._channel_for(thread)
        if channel is None:
            log.info(
                "no Slack channel for %s (set slack_channel on %s)", thread.deployment_id, thread.doc["application"]
            )
            return False
        blocks = self._render(thread)
        answer = await self._call(
            "chat_postMessage", channel=channel, text=fallback_text(thread.doc), blocks=blocks, unfurl_links=False
        )
        if answer is None:
            return False
        thread.channel, thread.ts = str(answer["channel"]), str(answer["ts"])
        thread.posted, thread.last_edit = json.dumps(blocks), time.monotonic()
        self.store.put(thread.deployment_id, thread.channel, thread.ts)
        return True

    async def _post_replies(self, thread: _Thread) -> None:
        while thread.replies:
            text = thread.replies.pop(0)
            await self._call("chat_postMessage", channel=thread.channel, thread_ts=thread.ts, text=text)

    async def _edit(self, thread: _Thread) -> None:
        if json.dumps(self._render(thread)) == thread.posted:
            return
        delay = thread.last_edit + self.min_edit_interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # coalesce: whatever arrives meanwhile goes into this one edit
        blocks = self._render(thread)
        thread.last_edit = time.monotonic()
        answer = await self._call(
            "chat_update", channel=thread.channel, ts=thread.ts, text=fallback_text(thread.doc), blocks=blocks
        )
        thread.last_edit = time.monotonic()
        if answer is not None:
            thread.posted = json.dumps(blocks)

    def _render(self, thread: _Thread) -> list[dict[str, Any]]:
        doc = thread.doc
        repository = next_env = None
        with contextlib.suppress(Exception):
            app = self.config.application(doc["application"])
            repository = app.github_repository
            next_env = app.next_environment(doc["environment"])
        context = MessageContext(
            github_repository=repository,
            previous_commit=self._last_commit.get((doc["application"], doc["environment"])),
            next_environment=next_env,
            note=thread.note,
        )
        blocks = deployment_blocks({**doc, "created_by": self._shown_actor(doc)}, context)
        if self.page_link is None:
            return blocks
        if thread.page_url is None:
            try:
                thread.page_url = self.page_link(thread.deployment_id)
            except Exception:  # a message without the link beats no message
                log.exception("no page link for %s", thread.deployment_id)
                return blocks
        return with_page_link(blocks, thread.page_url)

    async def _call(self, method: str, **kwargs: Any) -> dict[str, Any] | None:
        """One Web API call; waits out 429s (Retry-After), logs and swallows anything else."""
        for _ in range(MAX_RATE_LIMIT_RETRIES):
            try:
                response = await getattr(self.client, method)(**kwargs)
                return dict(response.data) if isinstance(response.data, dict) else {}
            except SlackApiError as exc:
                if exc.response.status_code != 429:
                    log.warning("Slack %s failed: %s", method, exc.response.get("error"))
                    return None
                self.rate_limited += 1
                headers = exc.response.headers or {}
                retry_after = headers.get("Retry-After") or headers.get("retry-after") or "1"
                await asyncio.sleep(float(retry_after))
            except Exception as exc:
                log.warning("Slack %s failed: %s: %s", method, type(exc).__name__, exc)
                return None
        log.warning("Slack %s still rate limited after %d tries; dropped", method, MAX_RATE_LIMIT_RETRIES)
        return None
