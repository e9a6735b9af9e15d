"""Who may read a page: a signed link for that deployment, a per-user API token, or a page session.

Pages show script output (which can hold hostnames, paths, even secrets a script echoed), so nothing here is
public. Logging in trades an API token for a session cookie that names the token's session (engine ApiTokens), never
the token itself, and is checked against the store on every request: revoking the token, or its expiry, logs the page
out at once. The cookie is HttpOnly, SameSite=Strict, and Secure when the request came over HTTPS. ``/login`` is a
POST form: a token in a URL ends up in browser history, proxy logs and Referer headers, so ``GET /login?token=`` is
refused. (bot/pages/__init__.py routes both GET and POST /login here.)
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.http import bearer_token, refusal_message, refusal_reason
from bot.pages.links import LinkCheck, deployment_path, pages_secret, verify
from bot.pages.render import render
from bot.pages.views import PAGES_DEPLOYER
from bot.settings import Settings
from engine import TokenCheck

SESSION_COOKIE = "deploybot_session"
SESSION_SECONDS = 7 * 24 * 3600  # the cookie's lifetime; the engine refuses an older session all the same
PAGES_SETTINGS = web.AppKey("pages_settings", Settings)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REASONS = {
    LinkCheck.EXPIRED: "This link has expired. Ask for a fresh link (or log in with an API token).",
    LinkCheck.TAMPERED: "This link's signature does not match: it was altered or signed with another key.",
    LinkCheck.MALFORMED: "This link's exp/sig parameters are malformed.",
    LinkCheck.MISSING: "This page needs a signed link, an API token, or a login (the form at /login).",
}


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


def _logged_out(check: TokenCheck) -> web.Response:
    """A session whose token is revoked or expired: say so, and drop the cookie."""
    response = render(
        "denied.html", status=403, reason=refusal_reason(check), message=f"Logged out — {refusal_message(check)}."
    )
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


def page_access(handler: Handler) -> Handler:
    """Let the request through with a valid token, session or signed link; otherwise a 403 page saying why."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        tokens = request.app[PAGES_DEPLOYER].tokens
        token = bearer_token(request)
        if token is not None and (await tokens.authenticate(token)).ok:
            return await handler(request)
        session = request.cookies.get(SESSION_COOKIE)
        session_check = await tokens.resume_session(session) if session else None
        if session_check is not None and session_check.ok:
            return await handler(request)
        check = _link_check(request, request.app[PAGES_SETTINGS])
        if check is LinkCheck.VALID:
            return await handler(request)
        if session_check is not None:
            return _logged_out(session_check)
        return denied(check)

    return guarded


def _login_page(*, status: int = 200, reason: str = "", message: str = "") -> web.Response:
    response = render("login.html", status=status, reason=reason, message=message)
    response.headers["Cache-Control"] = "no-store"
    return response


async def login(request: web.Request) -> web.StreamResponse:
    """``GET /login``: the form. ``POST /login`` (form field ``token``): trade a valid API token for a session
    cookie, then go to the list. A token in the query string is refused, never used."""
    if request.method != "POST":
        if "token" in request.query:
            message = (
                "Do not put an API token in a URL (it stays in history and logs): use the login form at /login. "
                "If that token is real, consider revoking it."
            )
            return _login_page(status=400, reason="token-in-url", message=message)
        return _login_page()
    form = await request.post()
    token = form.get("token")
    check = await request.app[PAGES_DEPLOYER].tokens.start_session(token.strip() if isinstance(token, str) else "")
    if not check.ok or check.session is None:
        return _login_page(status=403, reason=refusal_reason(check), message=f"{refusal_message(check)}.")
    response = web.Response(status=303, headers={"Location": "/deployments"})
    response.set_cookie(
        SESSION_COOKIE,
        check.session,
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
    )
    return response
