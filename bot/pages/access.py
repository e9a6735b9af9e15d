"""Who may read a page: a signed link for that deployment, a bearer API token, or the session cookie.

Pages show script output (which can hold hostnames, paths, even secrets a script echoed), so nothing here is
public. The cookie holds an HMAC of the API token, never the token itself, and dies with a token rotation.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.http import bearer_token
from bot.pages.links import LinkCheck, deployment_path, pages_secret, verify
from bot.pages.render import render
from bot.settings import Settings

SESSION_COOKIE = "deploybot_session"
SESSION_SECONDS = 7 * 24 * 3600
PAGES_SETTINGS = web.AppKey("pages_settings", Settings)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REASONS = {
    LinkCheck.EXPIRED: "This link has expired. Ask for a fresh link (or log in with an API token).",
    LinkCheck.TAMPERED: "This link's signature does not match: it was altered or signed with another key.",
    LinkCheck.MALFORMED: "This link's exp/sig parameters are malformed.",
    LinkCheck.MISSING: "This page needs a signed link, an API token, or a login (/login?token=...).",
}


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"deploybot-session", hashlib.sha256).hexdigest()


def _token_ok(settings: Settings, presented: str | None, *, cookie: bool) -> bool:
    if not presented:
        return False
    for token in settings.api_tokens():
        expected = session_value(token) if cookie else token
        if hmac.compare_digest(expected, presented):
            return True
    return False


def _link_check(request: web.Request, settings: Settings) -> LinkCheck:
    """A signed link covers one deployment's page and its event stream, nothing else."""
    deployment_id = request.match_info.get("id")
    secret = pages_secret(settings)
    if deployment_id is None or secret is None:
        return LinkCheck.MISSING
    query = request.query
    return verify(deployment_path(deployment_id), query.get("exp"), query.get("sig"), secret, now=time.time())


def denied(reason: LinkCheck) -> web.Response:
    return render("denied.html", status=403, reason=reason.value, message=_REASONS[reason])


def page_access(handler: Handler) -> Handler:
    """Let the request through with a valid token, cookie or signed link; otherwise a 403 page saying why."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        settings = request.app[PAGES_SETTINGS]
        if _token_ok(settings, bearer_token(request), cookie=False):
            return await handler(request)
        if _token_ok(settings, request.cookies.get(SESSION_COOKIE), cookie=True):
            return await handler(request)
        check = _link_check(request, settings)
        if check is LinkCheck.VALID:
            return await handler(request)
        return denied(check)

    return guarded


async def login(request: web.Request) -> web.StreamResponse:
    """``GET /login?token=...``: trade the API token for an HttpOnly session cookie, then go to the list."""
    settings = request.app[PAGES_SETTINGS]
    token = request.query.get("token", "")
    if not _token_ok(settings, token, cookie=False):
        return render("denied.html", status=403, reason="bad-token", message="That is not a valid API token.")
    response = web.Response(status=303, headers={"Location": "/deployments"})
    response.set_cookie(
        SESSION_COOKIE,
        session_value(token),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="Lax",
        secure=request.secure,
        path="/",
    )
    return response
