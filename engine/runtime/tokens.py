"""Per-user API tokens: who is asking, from a credential rather than from what the caller says about itself.

A token is ``dbt_`` followed by 43 URL-safe characters (``secrets.token_urlsafe(32)``, 256 random bits); the prefix
lets secret scanners and people recognise one. It is shown once, when it is made: the store keeps only its sha256,
so a copy of the database holds no usable credential. A token is looked up by that hash and every check reads the
store, so a revocation or an expiry takes effect on the next request of every server sharing the store, with no
restart and no cache. (Looking a random 256-bit token up by its hash leaks nothing usable through timing; the final
comparison is constant-time anyway.)

Bootstrap: the secret in ``var/api-token`` (and ``DEPLOYBOT_TOKEN``) is the first admin's credential. At start the
server registers each one by hash, once, as a token of BOOTSTRAP_ADMIN named "bootstrap", and revokes the bootstrap
tokens that are no longer configured (a rotated file revokes its old value). A hash already known is never registered
again, so a revoked bootstrap token stays refused while the file still holds it. Servers sharing one store (replicas,
each with its own data directory and file) name theirs ``bootstrap@<host>:<data dir>`` and revoke only their own, so
a replica's start never retires another's credential.

Page sessions: the pages' cookie names the token it came from (``<id>.<issued>.<mac>``), MACed with the token's
stored hash, so it is worth nothing once the token is revoked or expired, or SESSION_SECONDS after login. Whoever can
read the store could mint a session, but such a reader sees everything the pages show already.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
import secrets
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.core.errors import NotFound
from engine.core.policy import BOOTSTRAP_ADMIN
from engine.ports import Clock, Store

TOKEN_PREFIX = "dbt_"
BOOTSTRAP_NAME = "bootstrap"
SESSION_SECONDS = 7 * 24 * 3600
TOUCH_EVERY = 60.0
"""``last_used_at`` is written at most this often per token, so reading the API does not write on every request."""
MAX_TOKEN_LENGTH = 512
MAX_LABEL_LENGTH = 100

_ID_ALPHABET = string.ascii_lowercase + string.digits


class TokenRefusal(enum.StrEnum):
    """Why a presented token (or page session) does not identify anyone."""

    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REVOKED = "revoked"
    SESSION_ENDED = "session ended"  # a page session older than SESSION_SECONDS (its token may still be good)


class TokenNotFound(NotFound):
    def __init__(self, token_id: str) -> None:
        self.token_id = token_id
        super().__init__(f"no API token with id {token_id!r}")


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A token as anyone may see it: never the token itself, nor its hash."""

    id: str
    user: str
    name: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ApiToken:
        return cls(
            id=str(row["id"]),
            user=str(row["user"]),
            name=str(row["name"]),
            created_at=float(row["created_at"]),
            expires_at=row["expires_at"],
            revoked_at=row["revoked_at"],
            last_used_at=row["last_used_at"],
        )

    def refusal(self, now: float) -> TokenRefusal | None:
        """None while the token is good; a revocation outranks an expiry."""
        if self.revoked_at is not None:
            return TokenRefusal.REVOKED
        if self.expires_at is not None and now >= self.expires_at:
            return TokenRefusal.EXPIRED
        return None

    def status(self, now: float) -> str:
        """``active``, ``expired`` or ``revoked``."""
        refusal = self.refusal(now)
        return "active" if refusal is None else refusal.value

    def describe(self, now: float) -> dict[str, Any]:
        """The JSON document of the token (what ``GET /api/v1/tokens`` lists)."""
        return {
            "id": self.id,
            "user": self.user,
            "name": self.name,
            "status": self.status(now),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
        }


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """The answer to "who presents this token?": the token (its user) or why not.

    ``token`` is also set for an expired or revoked token, so the door can say when; ``session`` is set only by
    ``ApiTokens.start_session`` on success."""

    token: ApiToken | None = None
    refusal: TokenRefusal | None = None
    session: str | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.refusal is None and self.token is not None

    @property
    def user(self) -> str | None:
        return self.token.user if self.ok and self.token is not None else None


_UNKNOWN = TokenCheck(refusal=TokenRefusal.UNKNOWN)


@dataclass(frozen=True, slots=True)
class BootstrapChange:
    """What registering the configured bootstrap tokens changed (for the server's start-up log)."""

    registered: tuple[ApiToken, ...] = ()
    revoked: tuple[ApiToken, ...] = ()


def token_digest(token: str) -> str:
    """What the store keeps of a token: its sha256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token_id() -> str:
    """``tok-`` and ten lower-case letters or digits: safe to show, log and type."""
    return "tok-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _session_mac(token_sha256: str, token_id: str, issued: int) -> str:
    message = f"deploybot-session:{token_id}:{issued}".encode()
    return hmac.new(bytes.fromhex(token_sha256), message, hashlib.sha256).hexdigest()


def _check_label(what: str, value: str) -> None:
    if not value or len(value) > MAX_LABEL_LENGTH or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{what} must be 1-{MAX_LABEL_LENGTH} printable characters without spaces, got {value!r}")


class ApiTokens:
    """Makes, checks, lists and revokes per-user API tokens (the Deployer's ``tokens``)."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def create(
        self, user: str, *, name: str, expires_in: float | None = None, actor: str = "api"
    ) -> tuple[ApiToken, str]:
        """A new token for ``user``, and its plaintext: the only time anyone sees it. The door validates first;
        a bad user, name or lifetime here is a ValueError (BOOTSTRAP_ADMIN is reserved for the bootstrap file)."""
        _check_label("the user", user)
        _check_label("the name", name)
        if user == BOOTSTRAP_ADMIN:
            raise ValueError(f"{BOOTSTRAP_ADMIN} is reserved for the bootstrap token")
        if expires_in is not None and not (math.isfinite(expires_in) and expires_in > 0):
            raise ValueError(f"expires_in must be a positive number of seconds, got {expires_in!r}")
        now = self._clock.now()
        expires_at = None if expires_in is None else now + expires_in
        for _ in range(5):  # an id collision (1 in 36**10) only costs a retry
            token_id, plaintext = new_token_id(), new_token()
            digest = token_digest(plaintext)
            if await self._store.insert_api_token(
                token_id, user=user, name=name, token_sha256=digest, created_at=now, expires_at=expires_at
            ):
                break
        else:  # pragma: no cover - five collisions in a row
            raise RuntimeError("could not find a free API token id")
        data = {"token_id": token_id, "user": user, "name": name, "expires_at": expires_at}
        await self._store.append_log("token.created", at=now, actor=actor, data=data)
        return ApiToken(token_id, user, name, now, expires_at), plaintext

    async def authenticate(self, token: str) -> TokenCheck:
        """Who presents ``token``, read from the store now (a revocation elsewhere counts at once)."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return _UNKNOWN
        digest = token_digest(token)
        row = await self._store.api_token_by_hash(digest)
        if row is None or not hmac.compare_digest(str(row["token_sha256"]), digest):
            return _UNKNOWN
        return await self._checked(ApiToken.from_row(row))

    async def start_session(self, token: str) -> TokenCheck:
        """``authenticate``, and on success the value of a page session cookie naming this token."""
        check = await self.authenticate(token)
        if not check.ok or check.token is None:
            return check
        issued = int(self._clock.now())
        mac = _session_mac(token_digest(token), check.token.id, issued)
        return TokenCheck(check.token, session=f"{check.token.id}.{issued}.{mac}")

    async def resume_session(self, session: str) -> TokenCheck:
        """Who a page session cookie belongs to, checked against its token's row now."""
        token_id, _, rest = session.partition(".")
        issued_text, _, mac = rest.partition(".")
        if not token_id.startswith("tok-") or not issued_text.isdigit() or len(session) > MAX_TOKEN_LENGTH:
            return _UNKNOWN
        row = await self._store.get_api_token(token_id)
        if row is None:
            return _UNKNOWN
        issued = int(issued_text)
        if not hmac.compare_digest(_session_mac(str(row["token_sha256"]), token_id, issued), mac):
            return _UNKNOWN
        record = ApiToken.from_row(row)
        now = self._clock.now()
        if record.refusal(now) is None and now >= issued + SESSION_SECONDS:
            return TokenCheck(record, TokenRefusal.SESSION_ENDED)
        return await self._checked(record)

    async def _checked(self, record: ApiToken) -> TokenCheck:
        now = self._clock.now()
        refusal = record.refusal(now)
        if refusal is not None:
            return TokenCheck(record, refusal)
        if record.last_used_at is None or now - record.last_used_at >= TOUCH_EVERY:
            await self._store.touch_api_token(record.id, at=now)
        return TokenCheck(record)

    async def list(self, user: str | None = None) -> list[ApiToken]:
        """Every token, revoked and expired ones too, oldest first (``user``'s only, when given)."""
        return [ApiToken.from_row(row) for row in await self._store.list_api_tokens(user=user)]

    async def revoke(self, token_id: str, *, actor: str = "api") -> ApiToken:
        """Revoke the token from the next request on; revoking it again changes nothing (the first time stays)."""
        now = self._clock.now()
        row = await self._store.revoke_api_token(token_id, at=now)
        if row is None:
            raise TokenNotFound(token_id)
        record = ApiToken.from_row(row)
        if record.revoked_at == now:
            data = {"token_id": record.id, "user": record.user, "name": record.name}
            await self._store.append_log("token.revoked", at=now, actor=actor, data=data)
        return record

    async def register_bootstrap(self, tokens: Iterable[str], *, source: str | None = None) -> BootstrapChange:
        """Make the configured bootstrap secrets (var/api-token, DEPLOYBOT_TOKEN) the bootstrap admin's tokens.

        Each hash not yet known is registered; one already known (revoked or not) is left alone, so a revocation
        sticks. This server's bootstrap tokens no longer configured are revoked: rotating the file retires its old
        value. ``source`` (a server sharing its store: its host and data directory) names them, so only this
        server's own — and unnamed ones of a single server before — are retired here."""
        name = BOOTSTRAP_NAME if source is None else f"{BOOTSTRAP_NAME}@{source}"
        digests = {token_digest(token.strip()) for token in tokens if token.strip()}
        now = self._clock.now()
        registered: list[ApiToken] = []
        for digest in sorted(digests):
            token_id = new_token_id()
            if await self._store.insert_api_token(
                token_id, user=BOOTSTRAP_ADMIN, name=name, token_sha256=digest, created_at=now
            ):
                registered.append(ApiToken(token_id, BOOTSTRAP_ADMIN, name, now))
                data = {"token_id": token_id, "user": BOOTSTRAP_ADMIN, "name": name, "expires_at": None}
                await self._store.append_log("token.created", at=now, actor="deploybot", data=data)
        revoked: list[ApiToken] = []
        for row in await self._store.list_api_tokens(user=BOOTSTRAP_ADMIN):
            ours = row["name"] in (BOOTSTRAP_NAME, name)
            if ours and row["revoked_at"] is None and row["token_sha256"] not in digests:
                revoked.append(await self.revoke(str(row["id"]), actor="deploybot"))
        return BootstrapChange(tuple(registered), tuple(revoked))
