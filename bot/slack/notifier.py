"""SlackNotifier: one Slack thread per deployment, its parent message edited in place as the deployment moves.

The engine calls ``deployment_changed`` after every persisted transition and waits for it, so that call only
records: the new version of the document, and the milestones (messages.milestones) since the version before (a
document older than one already recorded is ignored). One worker task per deployment does the talking: it posts
the parent message once, posts milestone replies in order, and edits the parent with ``chat.update`` at most once per
``min_edit_interval`` (coalescing whatever happened meanwhile into one edit, and skipping edits that would change
nothing). A 429 is retried after its ``Retry-After``; an answer that will not change (``channel_not_found``, bad
blocks) is logged and dropped — a notifier must never break or slow a deployment.

**The outbox.** When Slack does not answer (connection refused, a timeout, HTTP 5xx) nothing is dropped: the worker
keeps what it owes (the parent message, its replies, the latest edit) and tries again with backoff
(bot/slack/outbox.py; times from ``clock``, the engine's Clock). Where each parent message lives is kept on disk
(bot/slack/threads.py), which is also the record of what was posted: at start, ``catch_up`` gives every deployment
of the last day that has no thread one, so a deployment that ran while Slack (or deploybot) was down still gets
its thread.

**Approval threads.** A deployment waiting for approval gets its thread at once (ChatOps hands over what the engine
returned, and the engine notifies of new deployments too), with Approve and Reject buttons and mentions of who may
approve it (replies.approvers_to_mention). Approvals given and expiring are thread replies; when the first counted
approval's lifetime ends the notifier reads the deployment again (``fetch``) so the message shows it.

People are shown as Slack mentions: a ``created_by`` or approver that is a declared user with a ``slack:`` id is
rendered as that id (``<@U…>``). A rollback is created by ``codeDeployRollback``; when someone asked for it in
Slack, ChatOps tells the notifier (``expect_rollback`` before the engine call, ``rollback_requested`` as soon as it
returns, before anything else may run), the threads show that person as who started it, and the thread store keeps
it across restarts.

The parent message ends with a "View deployment" button to the deployment's page (a signed, expiring link from
``page_link``). The link is made once per thread: a fresh expiry on every render would make every edit look like a
change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
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
from bot.slack.outbox import Outage
from bot.slack.replies import approvers_to_mention, slack_name
from bot.slack.threads import ThreadStore
from engine import FINAL_STATUSES, ROLLBACK_CREATOR, EngineConfig

log = logging.getLogger(__name__)

MAX_RATE_LIMIT_RETRIES = 5
PAGE_ACTION = "page.view"  # a URL button: Slack still sends the click, bot.slack.app only acknowledges it
PAGE_BLOCK = "deployment-page"
_TEAM_DOMAIN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class Clock(Protocol):
    """The engine's Clock, as the notifier uses it."""

    def now(self) -> float: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SlackDown(Exception):
    """Slack did not answer, for a reason that may pass: what was being sent is still owed."""


def page_block(url: str) -> dict[str, Any]:
    """A section linking to the deployment page: host-by-event grid, script output, traffic chart."""
    button = ButtonElement(text="View deployment", action_id=PAGE_ACTION, url=url)
    text = MarkdownTextObject(text=f"<{url}|Deployment page>: each host's events, script output, traffic")
    return SectionBlock(block_id=PAGE_BLOCK, text=text, accessory=button).to_dict()


def with_page_link(blocks: list[dict[str, Any]], url: str) -> list[dict[str, Any]]:
    """``blocks`` with the page link placed before the action buttons (or last when there are none)."""
    at = next((i for i, b in enumerate(blocks) if b.get("type") == "actions"), len(blocks))
    return [*blocks[:at], page_block(url), *blocks[at:]]


def _transient(exc: Exception) -> bool:
    """A failure that may pass (Slack down or unreachable), as opposed to an answer that will not change."""
    if isinstance(exc, SlackApiError):
        return exc.response.status_code >= 500
    return isinstance(exc, aiohttp.ClientError | OSError | TimeoutError)


def _rollback_started(rollback_id: str, shown_actor: str | None) -> str:
    """The reply in the rolled-back deployment's thread that its rollback started, and who asked for it."""
    return f":rewind: Rollback started: `{rollback_id}` by {who(shown_actor)}"


THREAD_OPEN_WAIT = 2.0
"""Seconds an answer waits for the thread it links to, when that thread is being opened right now."""


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
    rollbacks_finished: set[str] = field(default_factory=set)
    page_url: str | None = None  # made once, so the link (and its expiry) is the same in every edit
    posted: str | None = None  # JSON of the blocks last sent
    last_edit: float = float("-inf")
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)  # its first message is posted, or never will be
    working: bool = False
    abandoned: bool = False  # no channel to post in: stay quiet
    task: asyncio.Task[None] | None = None
    approval_expires_at: float | None = None  # when the deployment is read again (an approval lapses)
    expiry: asyncio.Task[None] | None = None


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
        clock: Clock,
        fetch: Callable[[str], Awaitable[Mapping[str, Any]]] | None = None,
    ) -> None:
        self.client = client
        self.page_link = page_link  # deployment id -> the page's URL (bot.pages.links.page_url)
        self.config = config
        self.store = ThreadStore(state_file)
        self.min_edit_interval = min_edit_interval
        self.channel_wait = channel_wait
        self.clock = clock  # the engine's: outbox backoff and edit pacing move with a test's FakeClock
        self.fetch = fetch  # deployment id -> its document now (DeploymentService.get)
        self.outage = Outage(self.clock)
        self.rate_limited = 0  # 429 answers seen (and waited out)
        self._threads: dict[str, _Thread] = {}
        self._channel_hints: dict[str, str] = {}
        self._hinted = asyncio.Condition()
        self._last_commit: dict[tuple[str, str], str] = {}
        # Who asked for a rollback in Slack: by the rollback's id (kept in the thread store), by the id of the
        # deployment it will roll back (a running one stopped with rollback), and by group while the engine call
        # that creates it runs.
        self._requesters_of: dict[str, str] = {}
        self._expected_rollbacks: dict[tuple[str, str], str] = {}

    # -- the engine's side (engine.ports.Notifier) -----------------------------------------------------------

    def follows(self, group: str) -> bool:
        return True  # every deployment has its thread

    async def deployment_changed(self, deployment: Mapping[str, Any]) -> None:
        try:
            self._record(dict(deployment))
        except Exception:  # never into the engine
            log.exception("slack notifier could not record %s", deployment.get("id"))

    def know(self, deployment: Mapping[str, Any]) -> None:
        """A deployment someone just created or found (ChatOps, ``catch_up``): record it unless the notifier has
        heard of it already (then the engine's own, newer, reports win)."""
        try:
            if deployment["id"] not in self._threads:
                self._record(dict(deployment))
        except Exception:
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
        elif int(doc.get("version") or 0) < int(thread.doc.get("version") or 0):
            return  # read before a version already recorded: nothing new in it
        before = thread.seen
        for milestone in milestones(self._people(before), self._people(doc) or doc):
            text = milestone.text
            if milestone.kind is MilestoneKind.ROLLBACK_STARTED:
                rollback_id = str(doc["rollback"]["by"])  # the milestone exists because the rollback has an id
                if rollback_id in thread.rollbacks_announced:
                    continue
                thread.rollbacks_announced.add(rollback_id)
                # Heard before the rollback's own document (which says who asked): say who asked all the same.
                text = _rollback_started(rollback_id, self._shown(self._requester_of(rollback_id, doc)))
            thread.replies.append(text)
        thread.seen = thread.doc = doc
        if doc["status"] == "Succeeded" and (doc.get("revision") or {}).get("commit"):
            self._last_commit[(doc["application"], doc["environment"])] = doc["revision"]["commit"]
        ended_now = doc["status"] in FINAL_STATUSES and (before is None or before["status"] not in FINAL_STATUSES)
        if ended_now and (doc.get("rollback") or {}).get("of"):
            self._rollback_finished(str(doc["rollback"]["of"]), doc)
        self._watch_approval(thread)
        self._wake(thread)

    def _people(self, doc: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """``doc`` with its approvers as the thread shows people (milestones name them)."""
        if doc is None or not (doc.get("approval") or {}).get("approved_by"):
            return doc
        approval = dict(doc["approval"])
        approval["approved_by"] = [slack_name(self.config, name) or name for name in approval["approved_by"]]
        return {**doc, "approval": approval}

    def _announce_rollback(self, doc: Mapping[str, Any]) -> None:
        """A new rollback deployment: say so in the thread of the deployment it rolls back."""
        original_id = (doc.get("rollback") or {}).get("of")
        original = self._threads.get(original_id) if original_id else None
        if original is None or doc["id"] in original.rollbacks_announced:
            return
        original.rollbacks_announced.add(doc["id"])
        original.doc = {**original.doc, "rollback": {**(original.doc.get("rollback") or {}), "by": doc["id"]}}
        original.replies.append(_rollback_started(doc["id"], self._shown_actor(doc)))
        self._wake(original)

    def _rollback_finished(self, original_id: str, rollback: Mapping[str, Any]) -> None:
        """Once per rollback, in the thread of the deployment it rolled back."""
        original = self._threads.get(original_id)
        if original is None or rollback["id"] in original.rollbacks_finished:
            return
        original.rollbacks_finished.add(rollback["id"])
        original.replies.append(rollback_finished_text(rollback))
        self._wake(original)

    def _claim_rollback(self, doc: Mapping[str, Any]) -> None:
        """A new rollback someone asked for in Slack: remember them as its requester."""
        rolls_back = (doc.get("rollback") or {}).get("of")
        if not rolls_back or doc.get("created_by") != ROLLBACK_CREATOR or self.store.requester(doc["id"]):
            return
        requester = self._requesters_of.pop(rolls_back, None) or self._expected_rollbacks.pop(
            (doc["application"], doc["environment"]), None
        )
        if requester is not None:
            self.store.put_requester(doc["id"], requester)

    def _shown_actor(self, doc: Mapping[str, Any]) -> str | None:
        """Who started the deployment, as the thread shows them: the Slack requester of a rollback, and a declared
        user as their Slack id (a mention) when they have one."""
        return self._shown(self.store.requester(doc["id"]) or doc.get("created_by"))

    def _shown(self, actor: str | None) -> str | None:
        return slack_name(self.config, actor)

    def _requester_of(self, rollback_id: str, original: Mapping[str, Any]) -> str:
        """Who asked in Slack for the rollback of ``original`` (as ``_claim_rollback`` finds them, without claiming),
        else the engine, which creates every rollback."""
        return (
            self.store.requester(rollback_id)
            or self._requesters_of.get(str(original["id"]))
            or self._expected_rollbacks.get((original["application"], original["environment"]))
            or ROLLBACK_CREATOR
        )

    # -- the Slack app's side --------------------------------------------------------------------------------

    def expect_rollback(self, application: str, environment: str, requester: str) -> None:
        """``requester`` is asking the engine to roll this group back now: the rollback it creates is theirs."""
        self._expected_rollbacks[(application, environment)] = requester

    def forget_rollback(self, application: str, environment: str) -> None:
        self._expected_rollbacks.pop((application, environment), None)

    def rollback_requested(self, result: Mapping[str, Any], requester: str) -> None:
        """What the engine answered a rollback with: the rollback deployment itself, or the running deployment it
        stopped (whose rollback the engine creates once it has stopped)."""
        rollback = result.get("rollback") or {}
        if rollback.get("of"):
            rollback_id = str(result["id"])
        elif rollback.get("by"):
            rollback_id = str(rollback["by"])
        else:
            self._requesters_of[result["id"]] = requester
            return
        if not self.store.requester(rollback_id):
            self.store.put_requester(rollback_id, requester)
        thread = self._threads.get(rollback_id)
        if thread is not None:
            self._wake(thread)  # re-render "Started by"

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

    def has_thread(self, deployment_id: str) -> bool:
        return deployment_id in self._threads or deployment_id in self.store

    async def opened(self, deployment_id: str, timeout: float = THREAD_OPEN_WAIT) -> None:
        """Until the thread of a deployment this notifier is opening has its first message (or never will), at most
        ``timeout`` seconds: an answer made just after the deployment was created can then link to its thread. At
        once for a thread already open, one this notifier does not know, or while Slack is down."""
        thread = self._threads.get(deployment_id)
        if thread is None or thread.ts is not None or thread.abandoned or self.outage.down:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(thread.opened.wait(), timeout)

    def permalink(self, deployment_id: str, team_domain: str | None) -> str | None:
        """A link to the deployment's thread (Slack's permalink shape), when it has one and the workspace is known."""
        where = self.thread_of(deployment_id)
        if where is None or not team_domain or not _TEAM_DOMAIN.match(team_domain):
            return None
        channel, ts = where
        return f"https://{team_domain}.slack.com/archives/{channel}/p{ts.replace('.', '')}"

    def page_url(self, deployment_id: str) -> str | None:
        thread = self._threads.get(deployment_id)
        if thread is not None and thread.page_url:
            return thread.page_url
        if self.page_link is None:
            return None
        try:
            return self.page_link(deployment_id)
        except Exception:
            log.exception("no page link for %s", deployment_id)
            return None

    def catch_up(self, deployments: Iterable[Mapping[str, Any]]) -> list[str]:
        """The outbox after a restart: give a thread to each of these deployments that has none and whose
        application names a channel. The ids taken."""
        taken = []
        for doc in deployments:
            if self.has_thread(doc["id"]) or not self._configured_channel(doc):
                continue
            self.know(doc)
            taken.append(str(doc["id"]))
        return taken

    async def idle(self, timeout: float = 10.0) -> None:
        """Until every queued post and edit is done (tests; shutdown)."""
        async with asyncio.timeout(timeout):
            while any(t.working or t.wake.is_set() or t.replies for t in self._threads.values()):
                await asyncio.sleep(0.02)

    async def close(self, grace: float = 2.0) -> None:
        if not self.outage.down:
            with contextlib.suppress(TimeoutError):
                await self.idle(grace)
        tasks = [t for thread in self._threads.values() for t in (thread.task, thread.expiry) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- approvals -------------------------------------------------------------------------------------------

    def _watch_approval(self, thread: _Thread) -> None:
        """While it waits with approvals that will lapse, read the deployment again when the first one does."""
        doc = thread.doc
        expires_at = (doc.get("approval") or {}).get("expires_at") if doc["status"] == "WaitingApproval" else None
        if expires_at == thread.approval_expires_at or self.fetch is None:
            return
        if thread.expiry is not None:
            thread.expiry.cancel()
            thread.expiry = None
        thread.approval_expires_at = expires_at
        if expires_at is not None:
            thread.expiry = asyncio.ensure_future(self._read_again_at(thread.deployment_id, float(expires_at)))

    async def _read_again_at(self, deployment_id: str, at: float) -> None:
        while (left := at - self.clock.now()) > 0:
            await self.clock.sleep(left)
        assert self.fetch is not None
        try:
            doc = await self.fetch(deployment_id)
        except Exception:
            log.exception("could not read %s again after its approval expired", deployment_id)
            return
        thread = self._threads.get(deployment_id)
        if thread is not None:
            thread.expiry, thread.approval_expires_at = None, None
        self._record(dict(doc))

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
                try:
                    if thread.ts is None and not await self._open(thread):
                        thread.abandoned = True
                        thread.opened.set()
                        thread.replies.clear()
                        return
                    await self._post_replies(thread)
                    await self._edit(thread)
                    await self._post_replies(thread)
                except SlackDown:
                    thread.wake.set()  # what was not delivered is still owed: try again when the outage says
                    await self.outage.wait()
                    continue
                thread.working = False
                if not thread.wake.is_set() and thread.doc["status"] in FINAL_STATUSES:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("slack thread of %s failed", thread.deployment_id)
        finally:
            thread.working = False

    def _configured_channel(self, doc: Mapping[str, Any]) -> str | None:
        with contextlib.suppress(Exception):
            return self.config.application(doc["application"]).slack_channel
        return None

    async def _channel_for(self, thread: _Thread) -> str | None:
        doc = thread.doc
        channel = self._configured_channel(doc)
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
            "chat_postMessage",
            channel=channel,
            text=fallback_text(thread.doc, self._context(thread)),
            blocks=blocks,
            unfurl_links=False,
        )
        if answer is None:
            return False
        thread.channel, thread.ts = str(answer["channel"]), str(answer["ts"])
        thread.opened.set()
        thread.posted, thread.last_edit = json.dumps(blocks), self.clock.monotonic()
        self.store.put(thread.deployment_id, thread.channel, thread.ts)
        return True

    async def _post_replies(self, thread: _Thread) -> None:
        while thread.replies:
            await self._call("chat_postMessage", channel=thread.channel, thread_ts=thread.ts, text=thread.replies[0])
            thread.replies.pop(0)  # posted, or refused for good (logged): either way no longer owed

    async def _edit(self, thread: _Thread) -> None:
        if json.dumps(self._render(thread)) == thread.posted:
            return
        delay = thread.last_edit + self.min_edit_interval - self.clock.monotonic()
        if delay > 0:
            await self.clock.sleep(delay)  # coalesce: whatever arrives meanwhile goes into this one edit
        blocks = self._render(thread)
        thread.last_edit = self.clock.monotonic()
        try:
            answer = await self._call(
                "chat_update",
                channel=thread.channel,
                ts=thread.ts,
                text=fallback_text(thread.doc, self._context(thread)),
                blocks=blocks,
            )
        finally:
            thread.last_edit = self.clock.monotonic()
        if answer is not None:
            thread.posted = json.dumps(blocks)

    def _context(self, thread: _Thread) -> MessageContext:
        doc = thread.doc
        repository = next_env = None
        with contextlib.suppress(Exception):
            app = self.config.application(doc["application"])
            repository = app.github_repository
            next_env = app.next_environment(doc["environment"])
        approvers: tuple[str, ...] = ()
        if doc["status"] == "WaitingApproval":
            requester = str((doc.get("request") or {}).get("actor") or doc.get("created_by") or "")
            approvers = approvers_to_mention(self.config, doc["application"], doc["environment"], requester)
        return MessageContext(
            github_repository=repository,
            previous_commit=self._last_commit.get((doc["application"], doc["environment"])),
            next_environment=next_env,
            note=thread.note,
            approvers=approvers,
        )

    def _render(self, thread: _Thread) -> list[dict[str, Any]]:
        doc = self._people(thread.doc) or thread.doc
        blocks = deployment_blocks({**doc, "created_by": self._shown_actor(doc)}, self._context(thread))
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
        """One Web API call: its answer; None when Slack refused it for good (logged). Waits out 429s
        (Retry-After); raises SlackDown, with the outage marked, when Slack did not answer."""
        for _ in range(MAX_RATE_LIMIT_RETRIES):
            await self.outage.wait()
            try:
                response = await getattr(self.client, method)(**kwargs)
            except Exception as exc:
                if _transient(exc):
                    log.warning("Slack %s failed (will retry): %s: %s", method, type(exc).__name__, exc)
                    self.outage.failed()
                    raise SlackDown(method) from exc
                self.outage.succeeded()  # it answered
                if isinstance(exc, SlackApiError) and exc.response.status_code == 429:
                    self.rate_limited += 1
                    headers = exc.response.headers or {}
                    retry_after = headers.get("Retry-After") or headers.get("retry-after") or "1"
                    await self.clock.sleep(float(retry_after))
                    continue
                error = exc.response.get("error") if isinstance(exc, SlackApiError) else f"{type(exc).__name__}"
                log.warning("Slack %s failed: %s", method, error)
                return None
            self.outage.succeeded()
            return dict(response.data) if isinstance(response.data, dict) else {}
        log.warning("Slack %s still rate limited after %d tries; dropped", method, MAX_RATE_LIMIT_RETRIES)
        return None
