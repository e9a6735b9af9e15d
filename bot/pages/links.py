"""Signed, expiring page links (pure): a link pasted into Slack opens the page without a login, until it expires.

The signature is HMAC-SHA256 over ``path`` and the expiry, so a link for one deployment can neither be pointed at
another nor extended. The secret is DEPLOYBOT_PAGES_SECRET, else the API token: rotating the token revokes links.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import time
from datetime import timedelta
from urllib.parse import quote, urlencode

from bot.settings import Settings

DEFAULT_TTL = timedelta(days=7)


class LinkCheck(enum.StrEnum):
    """Why a signed link was (not) accepted; the 403 page says which, so a user knows to ask for a fresh link."""

    VALID = "valid"
    MISSING = "missing"
    MALFORMED = "malformed"
    EXPIRED = "expired"
    TAMPERED = "tampered"


def sign(path: str, expires_at: int, secret: str) -> str:
    """The hex signature of ``path`` valid until ``expires_at`` (Unix seconds)."""
    message = f"{path}\n{expires_at}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(path: str, expires_at: str | None, signature: str | None, secret: str, *, now: float) -> LinkCheck:
    """Check a link's ``exp`` and ``sig`` query values. The signature is checked before the expiry, so an edited
    expiry reads as tampered rather than as expired."""
    if expires_at is None and signature is None:
        return LinkCheck.MISSING
    if not expires_at or not signature or not expires_at.isdigit():
        return LinkCheck.MALFORMED
    if not hmac.compare_digest(sign(path, int(expires_at), secret), signature):
        return LinkCheck.TAMPERED
    if int(expires_at) <= now:
        return LinkCheck.EXPIRED
    return LinkCheck.VALID


def signed_query(path: str, expires_at: int, secret: str) -> str:
    """``exp=...&sig=...`` for ``path``."""
    return urlencode({"exp": expires_at, "sig": sign(path, expires_at, secret)})


def pages_secret(settings: Settings) -> str | None:
    """The key that signs links: DEPLOYBOT_PAGES_SECRET, else the API token file, else DEPLOYBOT_TOKEN."""
    if settings.pages_secret:
        return settings.pages_secret
    try:
        from_file = settings.api_token_file.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        from_file = ""
    return from_file or settings.api_token


def deployment_path(deployment_id: str) -> str:
    return f"/deployments/{quote(deployment_id, safe='')}"


def page_url(
    settings: Settings,
    deployment_id: str,
    *,
    base_url: str,
    signed: bool = True,
    ttl: timedelta = DEFAULT_TTL,
    now: float | None = None,
) -> str:
    """The deployment page's absolute URL (``base_url`` is EngineConfig.server.url), signed unless ``signed`` is
    False or no secret is configured (then the reader needs a login)."""
    path = deployment_path(deployment_id)
    url = f"{base_url.rstrip('/')}{path}"
    secret = pages_secret(settings)
    if not signed or not secret:
        return url
    expires_at = int((time.time() if now is None else now) + ttl.total_seconds())
    return f"{url}?{signed_query(path, expires_at, secret)}"
