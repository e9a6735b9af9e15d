"""GitHubClient against the fake GitHub API: tarballs through redirects (token only on the same host), a commit
turned into a stored revision, and GitHub App installation tokens cached until shortly before they expire."""

from __future__ import annotations

import tarfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fake_github import FakeGitHub

from bot.assembly import assemble_deployer
from bot.github.client import GitHubAuth, GitHubClient, GitHubUnavailable
from bot.github.revisions import revision_from_commit, strip_top_directory
from engine.core.errors import AppSpecInvalid, BundleError

SHA = "f" * 40
APPSPEC = "version: 0.0\nos: linux\nfiles:\n  - source: app.py\n    destination: /opt/api\n"


@pytest.fixture
async def github() -> AsyncIterator[FakeGitHub]:
    fake = FakeGitHub(commits={SHA: {"appspec.yml": APPSPEC, "app.py": "print('hi')\n", "bin/run": "#!/bin/sh\n"}})
    fake.executable.add("bin/run")
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_a_tarball_follows_a_same_host_redirect_with_the_token(
    github: FakeGitHub, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    client = GitHubClient(session, GitHubAuth(token="ghp_x"), base_url=github.url)
    path = await client.download_tarball("acme/api", SHA, tmp_path / "t.tar.gz")
    with tarfile.open(path) as tar:
        assert "acme-api-fffffff/appspec.yml" in tar.getnames()
    first, second = github.calls
    assert (first.path, first.authorization) == (f"/repos/acme/api/tarball/{SHA}", "token ghp_x")
    assert (second.path, second.authorization) == (f"/codeload/acme/api/{SHA}", "token ghp_x")


async def test_a_redirect_to_another_host_does_not_carry_the_token(
    github: FakeGitHub, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    codeload = FakeGitHub(commits=github.commits)
    await codeload.start()
    try:
        github.redirect_to = codeload.url.replace("127.0.0.1", "localhost")
        client = GitHubClient(session, GitHubAuth(token="ghp_x"), base_url=github.url)
        await client.download_tarball("acme/api", SHA, tmp_path / "t.tar.gz")
        [fetched] = codeload.calls
        assert fetched.path == f"/codeload/acme/api/{SHA}" and fetched.authorization is None
    finally:
        await codeload.close()


async def test_a_missing_tarball_is_an_error_with_the_status(
    github: FakeGitHub, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    client = GitHubClient(session, GitHubAuth(), base_url=github.url)
    with pytest.raises(GitHubUnavailable, match="no GitHub credentials"):
        await client.download_tarball("acme/api", SHA, tmp_path / "t.tar.gz")


class Sink:
    def __init__(self) -> None:
        self.stored: list[tuple[Path, str, str | None, list[str]]] = []
        self.locations: list[Mapping[str, Any] | None] = []

    async def store_revision(
        self,
        path: Path,
        *,
        source: str,
        commit: str | None = None,
        application: str | None = None,
        location: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))
        self.stored.append((path, source, commit, names))
        self.locations.append(location)
        assert (path / "bin" / "run").stat().st_mode & 0o111  # modes survive
        return {"sha256": "0" * 64, "size": 1, "source": source}


async def test_a_commit_becomes_a_revision_without_the_top_directory(
    github: FakeGitHub, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    client = GitHubClient(session, GitHubAuth(token="ghp_x"), base_url=github.url)
    sink = Sink()
    github.commit_dates[SHA] = "2026-03-01T12:00:00Z"
    await revision_from_commit(client, sink, "acme/api", SHA, scratch=tmp_path / "scratch")
    [(_, source, commit, names)] = sink.stored
    assert (source, commit) == (f"github:acme/api@{SHA[:12]}", SHA)
    # where it came from, with the commit's time: the start of its lead time (docs/pages.md)
    assert sink.locations == [{"github": {"repository": "acme/api", "commit": SHA, "committed_at": 1772366400.0}}]
    assert names == ["app.py", "appspec.yml", "bin", "bin/run"]
    assert list((tmp_path / "scratch").iterdir()) == []  # nothing left behind


async def test_a_commit_with_a_bad_appspec_is_refused_by_the_real_revision_store(
    github: FakeGitHub, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    from engine.core.config.parse import parse_config

    github.commits[SHA]["appspec.yml"] = "version: 0.0\nos: windows-ish\n"
    config = parse_config("hosts: []\napplications: {}\n", base_dir=str(tmp_path))
    deployer = await assemble_deployer(config, data_dir=tmp_path / "var")
    try:
        client = GitHubClient(session, GitHubAuth(token="ghp_x"), base_url=github.url)
        with pytest.raises(AppSpecInvalid) as caught:
            await revision_from_commit(client, deployer, "acme/api", SHA, scratch=tmp_path / "s")
        assert caught.value.problems[0].line == 2
    finally:
        await deployer.close()


def test_strip_top_directory_needs_exactly_one_directory(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert strip_top_directory(tmp_path) == tmp_path / "a"
    (tmp_path / "b").write_text("x")
    with pytest.raises(BundleError, match="exactly one top directory"):
        strip_top_directory(tmp_path)


def _key_pair() -> tuple[str, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


async def test_app_installation_tokens_are_cached_until_shortly_before_expiry(
    github: FakeGitHub, session: aiohttp.ClientSession
) -> None:
    private, public = _key_pair()
    github.app_id, github.app_public_key = "12345", public
    now = [time.time()]
    github.clock = lambda: now[0]
    auth = GitHubAuth(app_id="12345", private_key=private)
    client = GitHubClient(session, auth, base_url=github.url, now=lambda: now[0])
    assert await client.token("acme/api") == "ghs_fake1"  # the installation is looked up with the app's JWT
    assert await client.token("acme/api") == "ghs_fake1"
    assert [c.path for c in github.calls] == ["/repos/acme/api/installation", "/app/installations/99/access_tokens"]
    now[0] += 3600 - 200  # within the renewal margin of the one-hour token
    assert await client.token("acme/api") == "ghs_fake2"
    gh = await client.api("acme/api")
    await gh.post("/repos/acme/api/statuses/abc", data={"state": "success", "context": "x"})
    assert github.calls[-1].authorization == "token ghs_fake2"


async def test_an_installation_named_by_a_webhook_needs_no_lookup(
    github: FakeGitHub, session: aiohttp.ClientSession
) -> None:
    private, public = _key_pair()
    github.app_id, github.app_public_key = "12345", public
    client = GitHubClient(session, GitHubAuth(app_id="12345", private_key=private), base_url=github.url)
    client.remember_installation("Acme/API", 77)
    await client.token("acme/api")
    assert [c.path for c in github.calls] == ["/app/installations/77/access_tokens"]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, (False, False)),
        ({"GITHUB_APP_ID": "1"}, (False, False)),  # an id without a key is not an app
        ({"GITHUB_APP_ID": "1", "GITHUB_APP_PRIVATE_KEY": "-----BEGIN\\nX"}, (True, True)),
    ],
)
def test_auth_from_the_environment(environ: dict[str, str], expected: tuple[bool, bool]) -> None:
    auth = GitHubAuth.from_environment(environ)
    assert (auth.is_app, auth.usable) == expected
    if auth.is_app:
        assert auth.private_key == "-----BEGIN\nX"
    assert GitHubAuth.from_environment(environ, token="t").usable
    assert "s3cr3t" not in repr(GitHubAuth(token="s3cr3t"))


async def test_the_commit_time_is_kept_with_the_revision_in_the_real_store(
    github: FakeGitHub, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    from engine.core.config.parse import parse_config

    github.commit_dates[SHA] = "2026-03-01T13:00:00+01:00"
    config = parse_config("hosts: []\napplications: {}\n", base_dir=str(tmp_path))
    deployer = await assemble_deployer(config, data_dir=tmp_path / "var")
    try:
        client = GitHubClient(session, GitHubAuth(token="ghp_x"), base_url=github.url)
        stored = await revision_from_commit(client, deployer, "acme/api", SHA, scratch=tmp_path / "s")
        revision = await deployer.revisions.get(stored["sha256"])
        assert revision.location is not None and revision.location["github"]["committed_at"] == 1772366400.0
    finally:
        await deployer.close()


async def test_a_commit_github_says_nothing_about_is_stored_without_a_time(
    github: FakeGitHub, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    github.commit_dates[SHA] = "not a date"
    client = GitHubClient(session, GitHubAuth(token="ghp_x"), base_url=github.url)
    sink = Sink()
    await revision_from_commit(client, sink, "acme/api", SHA, scratch=tmp_path / "scratch")
    assert sink.locations == [{"github": {"repository": "acme/api", "commit": SHA}}]
