"""Agents' tokens: one per host, issued once, rotated or revoked by the doors, checked on every agent request.

Two homes, one interface (``AgentTokens``, which engine/adapters/fleet.py answers the doors with):

- **one server (SQLite)**: ``<data>/agent-tokens.json``, mode 0600 in the 0700 data directory, as before replicas
  existed (``AgentTokens.in_file``). Everything is synchronous: the file is written before a token is handed out.
- **replicas (PostgreSQL)**: the store's ``agent_tokens`` table (engine/store/agent_token_records.py), so that a
  token issued by one replica is accepted by every other (``AgentTokens.in_store``, then ``await open()``). Each
  replica keeps the tokens in memory for the per-request check (``authenticate`` stays synchronous and O(1), by
  digest) and keeps that copy current: every change is NOTIFYed (the host's name) and the replicas re-read that
  host's row; a token it does not know makes it look the digest up in the background (a token issued elsewhere
  whose notice has not arrived: the agent's retry is accepted); the whole table is re-read when the LISTEN
  connection was reopened (notices sent meanwhile are lost), and every ``refresh_seconds`` (the engine's clock)
  anyway. The doors that issue or revoke (``issue``/``withdraw``) wait for the database; the synchronous
  ``token_for``/``revoke`` (the configured hosts at start, which ``open`` issued already) write in the background,
  in the order they were called.

The token itself is kept, not only its digest, because the server gives it back (``deploybot agent-token NAME``,
local agents' token files). In the file that is what 0600 protects; in PostgreSQL the table is revoked from PUBLIC,
readable by deploybot's role only (docs/postgresql.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from engine.ports import AgentTokenRecords, Clock, Row

log = logging.getLogger(__name__)
T = TypeVar("T")

TOKEN_FILE = "agent-tokens.json"
REFRESH_SECONDS = 30.0
AGENT_TOKENS_CHANGED = "deploybot_agent_tokens"
"""The NOTIFY channel of engine/store/agent_token_records.py (payload: the host whose token changed)."""


class Listen(Protocol):
    """``PostgresStore.listen``: call ``callback`` with each payload NOTIFYed on ``channel``, and ``reopened`` when
    the LISTEN connection was lost and opened again (notices sent meanwhile are lost)."""

    def __call__(
        self, channel: str, callback: Callable[[str], None], *, reopened: Callable[[], None] | None = None
    ) -> Awaitable[None]: ...


def new_token() -> str:
    # A fixed prefix: a token_urlsafe value may start with "-", which a command line takes for an option.
    return "dbt_" + secrets.token_urlsafe(24)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class AgentTokens:
    """host -> token, in memory for the checks, persisted in a file or in the database (see the module docstring)."""

    def __init__(
        self,
        *,
        file: Path | None = None,
        records: AgentTokenRecords | None = None,
        clock: Clock | None = None,
        listen: Listen | None = None,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        self._file = file
        self._records = records
        self._clock = clock
        self._listen = listen
        self._refresh_seconds = refresh_seconds
        self._tokens: dict[str, str] = {}
        # Digest of each token -> its host: a request's token is found in O(1), not by comparing it with every host's.
        # A digest keys the index, so the lookup's timing says nothing of the tokens; the token itself is then
        # compared in constant time.
        self._hosts_by_digest: dict[bytes, str] = {}
        self._looking_up: set[bytes] = set()
        # The database sees this replica's changes in the order they were made (a rotation is a revocation, then a
        # new token: the other way round it would keep the old one): each write waits for the ones made before it.
        self._writes = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        self._refresher: asyncio.Task[None] | None = None
        if file is not None:
            self._replace_all(json.loads(file.read_text()) if file.exists() else {})

    @classmethod
    def in_file(cls, path: Path) -> AgentTokens:
        """One server's tokens, in ``path`` (0600), read now."""
        return cls(file=path)

    @classmethod
    def in_store(
        cls, records: AgentTokenRecords, clock: Clock, *, listen: Listen | None = None, refresh_seconds: float = 30.0
    ) -> AgentTokens:
        """The replicas' tokens, in the database; ``await open()`` before use."""
        return cls(records=records, clock=clock, listen=listen, refresh_seconds=refresh_seconds)

    @property
    def shared(self) -> bool:
        """Whether the tokens live in the database (replicas) rather than this server's file."""
        return self._records is not None

    async def open(self, hosts: Iterable[str] = ()) -> None:
        """Read the tokens, issue one to each of ``hosts`` that has none (in the database: every replica agrees on
        it), and start following other replicas' changes."""
        if self._records is None:
            for host in hosts:
                self.token_for(host)
            return
        await self.refresh()
        for host in hosts:
            if host not in self._tokens:
                await self.issue(host)
        if self._listen is not None:
            await self._listen(AGENT_TOKENS_CHANGED, self._heard, reopened=self._missed)
        if self._clock is not None and self._refresher is None:
            self._refresher = asyncio.ensure_future(self._refresh_every(self._clock, self._refresh_seconds))

    async def close(self) -> None:
        tasks = [t for t in (self._refresher, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._refresher = None

    # -- what the doors call (synchronous: the cache)

    def has(self, host: str) -> bool:
        return host in self._tokens

    def token_for(self, host: str) -> str:
        """The host's token, made on first use (in the file at once; in the database in the background: a door that
        hands the token out uses ``issue``, which waits for it)."""
        if host not in self._tokens:
            self._set(host, new_token())
            if self._records is None:
                self._save()
            else:
                self._spawn(self._in_order(self._put(host, self._tokens[host], replace=False)))
        return self._tokens[host]

    def revoke(self, host: str) -> bool:
        """Forget the host's token: its agent is refused from now on (by the other replicas once they hear)."""
        if not self._drop(host):
            return False
        if self._records is None:
            self._save()
        else:
            self._spawn(self._in_order(self._records.delete_agent_token(host)))
        return True

    def authenticate(self, token: str) -> str | None:
        digest = token_digest(token)
        host = self._hosts_by_digest.get(digest)
        known = self._tokens.get(host) if host is not None else None
        if known is None or not hmac.compare_digest(known.encode(), token.encode()):
            if self._records is not None and digest not in self._looking_up:
                self._looking_up.add(digest)  # issued by another replica, its notice not here yet: look it up
                self._spawn(self._look_up(digest))
            return None
        return host

    # -- what must reach the database before it is answered

    async def issue(self, host: str, *, rotate: bool = False) -> str:
        """The host's token (a new one when ``rotate``), stored before it is returned."""
        if self._records is None:
            if rotate:
                self.revoke(host)
            return self.token_for(host)
        token = new_token() if rotate or host not in self._tokens else self._tokens[host]
        return await self._in_order(self._put(host, token, replace=rotate))

    async def withdraw(self, host: str) -> bool:
        """Revoke the host's token, in the database before it returns; False when it had none."""
        if self._records is None:
            return self.revoke(host)
        self._drop(host)
        return await self._in_order(self._records.delete_agent_token(host))

    async def refresh(self) -> None:
        """Re-read every token from the database."""
        if self._records is not None:
            self._replace_all({row["host"]: row["token"] for row in await self._records.list_agent_tokens()})

    # -- keeping the copy current

    async def _put(self, host: str, token: str, *, replace: bool) -> str:
        assert self._records is not None and self._clock is not None
        digest = hashlib.sha256(token.encode()).hexdigest()
        row = await self._records.put_agent_token(
            host, token=token, token_sha256=digest, at=self._clock.now(), replace=replace
        )
        self._learn(row)
        return str(row["token"])

    async def _in_order(self, write: Coroutine[Any, Any, T]) -> T:
        async with self._writes:
            return await write

    def _heard(self, host: str) -> None:
        self._spawn(self._reload(host))

    def _missed(self) -> None:
        """The LISTEN connection was reopened: whatever was NOTIFYed meanwhile is lost, so read everything again."""
        self._spawn(self.refresh())

    async def _reload(self, host: str) -> None:
        assert self._records is not None
        row = await self._records.agent_token_of(host)
        if row is None:
            self._drop(host)
        else:
            self._learn(row)

    async def _look_up(self, digest: bytes) -> None:
        assert self._records is not None
        try:
            row = await self._records.agent_token_by_hash(digest.hex())
            if row is not None:
                self._learn(row)
        finally:
            self._looking_up.discard(digest)

    async def _refresh_every(self, clock: Clock, seconds: float) -> None:
        while True:
            await clock.sleep(seconds)
            try:
                await self.refresh()
            except Exception:  # the next round tries again; the copy stays as it was
                log.exception("re-reading the agent tokens failed")

    def _learn(self, row: Row) -> None:
        if self._tokens.get(row["host"]) != row["token"]:
            self._drop(row["host"])
            self._set(row["host"], row["token"])

    def _set(self, host: str, token: str) -> None:
        self._tokens[host] = token
        self._hosts_by_digest[token_digest(token)] = host

    def _drop(self, host: str) -> bool:
        token = self._tokens.pop(host, None)
        if token is None:
            return False
        self._hosts_by_digest.pop(token_digest(token), None)
        return True

    def _replace_all(self, tokens: dict[str, str]) -> None:
        self._tokens = dict(tokens)
        self._hosts_by_digest = {token_digest(token): host for host, token in self._tokens.items()}

    def _save(self) -> None:
        assert self._file is not None
        self._file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self._file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self._tokens, f, indent=1)
        os.replace(tmp, self._file)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("an agent token change did not reach the database: %s", task.exception())
