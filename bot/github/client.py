"""Talking to GitHub's REST API as deploybot: a personal/installation token or a GitHub App, and tarball downloads.

Two traps shaped this module (reference/components.md §3):

- gidgethub decodes every response body as text, so a commit tarball cannot go through ``GitHubAPI``; it is fetched
  with the raw aiohttp session and gidgethub's own ``sansio.create_headers``.
- GitHub answers ``/tarball/{ref}`` with a redirect (to codeload, or on GitHub Enterprise Server to the same host).
  Redirects are followed here by hand so the token is sent only to the API's own origin, never to another host.

A GitHub App authenticates with a short-lived JWT, exchanges it for an installation token per installation and
keeps that token until shortly before it expires (installation tokens live one hour).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from gidgethub import apps, sansio
from gidgethub.aiohttp import GitHubAPI

REQUESTER = "deploybot"
TOKEN_MARGIN_SECONDS = 300.0  # renew an installation token this long before GitHub says it expires
MAX_REDIRECTS = 5
MAX_TARBALL_BYTES = 2 * 1024**3
_CHUNK = 1024 * 1024


class GitHubUnavailable(Exception):
    """A GitHub call that deploybot needs failed (HTTP status, or no way to authenticate)."""

    def __init__(self, what: str, status: int | None = None) -> None:
        self.what, self.status = what, status
        super().__init__(f"{what}" + (f" (HTTP {status})" if status else ""))


@dataclass(frozen=True, slots=True)
class GitHubAuth:
    """How deploybot authenticates: ``token`` (GITHUB_TOKEN), or a GitHub App (GITHUB_APP_ID + private key)."""

    token: str | None = field(default=None, repr=False)
    app_id: str | None = None
    private_key: str | None = field(default=None, repr=False)
    installation_id: str | None = None  # optional: otherwise looked up per repository (or taken from the webhook)

    @property
    def is_app(self) -> bool:
        return bool(self.app_id and self.private_key)

    @property
    def usable(self) -> bool:
        return self.is_app or bool(self.token)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], *, token: str | None = None) -> GitHubAuth:
        """GITHUB_APP_ID with GITHUB_APP_PRIVATE_KEY (the PEM text) or GITHUB_APP_PRIVATE_KEY_FILE, optional
        GITHUB_APP_INSTALLATION_ID; else ``token`` (Settings.github_token, i.e. GITHUB_TOKEN)."""

        def get(name: str) -> str | None:
            return environ.get(name, "").strip() or None

        key = get("GITHUB_APP_PRIVATE_KEY")
        key_file = get("GITHUB_APP_PRIVATE_KEY_FILE")
        if key is None and key_file is not None:
            key = Path(key_file).read_text(encoding="utf-8")
        app_id = get("GITHUB_APP_ID")
        if app_id and key:
            return cls(
                app_id=app_id, private_key=key.replace("\\n", "\n"), installation_id=get("GITHUB_APP_INSTALLATION_ID")
            )
        return cls(token=token)


class GitHubClient:
    """One per server: builds authenticated ``GitHubAPI`` objects and downloads tarballs."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        auth: GitHubAuth,
        *,
        base_url: str = sansio.DOMAIN,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.session = session
        self.auth = auth
        self.base_url = base_url.rstrip("/")
        self._now = now
        self._tokens: dict[str, tuple[str, float]] = {}  # installation id -> (token, expires at, epoch)
        self._installations: dict[str, str] = {}  # "owner/name" (lower case) -> installation id
        self._lock = asyncio.Lock()

    def remember_installation(self, repository: str, installation_id: int | str | None) -> None:
        """Webhooks name the installation they come from; keep it so no lookup is needed."""
        if installation_id is not None:
            self._installations[repository.lower()] = str(installation_id)

    def _plain(self, **kwargs: Any) -> GitHubAPI:
        return GitHubAPI(self.session, REQUESTER, base_url=self.base_url, **kwargs)

    async def api(self, repository: str) -> GitHubAPI:
        """A GitHubAPI that may act on ``repository``."""
        return self._plain(oauth_token=await self.token(repository))

    async def token(self, repository: str) -> str:
        if not self.auth.is_app:
            if not self.auth.token:
                raise GitHubUnavailable("no GitHub credentials (set GITHUB_TOKEN or GITHUB_APP_ID + key)")
            return self.auth.token
        installation = await self._installation_for(repository)
        async with self._lock:
            cached = self._tokens.get(installation)
            if cached is not None and cached[1] - TOKEN_MARGIN_SECONDS > self._now():
                return cached[0]
            assert self.auth.app_id is not None and self.auth.private_key is not None
            answer = await apps.get_installation_access_token(
                self._plain(),
                installation_id=installation,
                app_id=self.auth.app_id,
                private_key=self.auth.private_key,
            )
            token = str(answer["token"])
            self._tokens[installation] = (token, _epoch(answer.get("expires_at"), self._now() + 3600))
            return token

    async def _installation_for(self, repository: str) -> str:
        known = self._installations.get(repository.lower()) or self.auth.installation_id
        if known:
            return known
        assert self.auth.app_id is not None and self.auth.private_key is not None
        jwt = apps.get_jwt(app_id=self.auth.app_id, private_key=self.auth.private_key)
        answer = await self._plain().getitem(f"/repos/{repository}/installation", jwt=jwt)
        self.remember_installation(repository, answer["id"])
        return str(answer["id"])

    async def download_tarball(self, repository: str, ref: str, dest: Path) -> Path:
        """Stream ``/repos/{repository}/tarball/{ref}`` into ``dest``; the token goes only to the API's origin."""
        token = await self.token(repository)
        url = f"{self.base_url}/repos/{repository}/tarball/{ref}"
        api_origin = _origin(self.base_url)
        for _ in range(MAX_REDIRECTS + 1):
            same_origin = _origin(url) == api_origin
            headers = sansio.create_headers(REQUESTER, oauth_token=token if same_origin else None)
            async with self.session.get(url, headers=headers, allow_redirects=False) as response:
                if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                    url = urljoin(url, response.headers["Location"])
                    continue
                if response.status != 200:
                    raise GitHubUnavailable(f"downloading the tarball of {repository}@{ref}", response.status)
                await _save(response, dest)
                return dest
        raise GitHubUnavailable(f"too many redirects downloading {repository}@{ref}")


async def _save(response: aiohttp.ClientResponse, dest: Path) -> None:
    size = 0
    with dest.open("wb") as out:
        async for chunk in response.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > MAX_TARBALL_BYTES:
                raise GitHubUnavailable(f"the tarball is larger than {MAX_TARBALL_BYTES} bytes")
            out.write(chunk)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def _epoch(text: object, fallback: float) -> float:
    if not isinstance(text, str):
        return fallback
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return fallback
