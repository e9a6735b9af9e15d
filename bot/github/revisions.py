"""A commit becomes a revision: its tarball from the GitHub API, the top directory stripped, stored by sha256.

GitHub's tarballs hold one directory (``owner-repo-<sha>/``) around the repository; the revision is what is inside
it, with the commit recorded so hooks see ``BUNDLE_COMMIT`` exactly as for ``git:REF`` revisions.

``github:OWNER/REPO@SHA`` names a commit to deploy by hand (``deploybot deploy APP --revision github:...``): the
server, which holds the GitHub credentials, downloads it like a merge. The errors below carry what was asked; the
API chooses the words.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from gidgethub import GitHubException

from bot.github.client import GitHubClient, GitHubUnavailable
from engine import BundleError, safe_extract


class RevisionSink(Protocol):
    async def store_revision(
        self,
        path: Path,
        *,
        source: str,
        commit: str | None = None,
        application: str | None = None,
        location: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]: ...


GITHUB_REVISION_PREFIX = "github:"
_REPOSITORY = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
_SHA = re.compile(r"[0-9a-fA-F]{7,40}")


@dataclass(frozen=True, slots=True)
class CommitRef:
    repository: str  # owner/name
    sha: str  # 7 to 40 hex digits, as given


def parse_github_revision(text: str) -> CommitRef:
    """``github:OWNER/REPO@SHA`` (pure); ValueError saying what is wrong."""
    body = text.removeprefix(GITHUB_REVISION_PREFIX)
    repository, at, sha = body.rpartition("@")
    if not text.startswith(GITHUB_REVISION_PREFIX) or not at:
        raise ValueError(f"{text!r} is not github:OWNER/REPO@SHA")
    if not _REPOSITORY.fullmatch(repository):
        raise ValueError(f"{repository!r} is not a GitHub repository (OWNER/REPO)")
    if not _SHA.fullmatch(sha):
        raise ValueError(f"{sha!r} is not a commit SHA (7 to 40 hex digits)")
    return CommitRef(repository, sha.lower())


class CommitRevisionError(Exception):
    """A ``github:`` revision deploybot cannot fetch (the API answers 4xx with these attributes)."""


class GitHubNotConfigured(CommitRevisionError):
    def __init__(self) -> None:
        super().__init__("GitHub is not configured on this server")


class RepositoryNotConfigured(CommitRevisionError):
    def __init__(self, application: str, repository: str, configured: str | None) -> None:
        super().__init__(f"{repository} is not the GitHub repository of {application} ({configured})")
        self.application, self.repository, self.configured = application, repository, configured


class CommitNotFound(CommitRevisionError):
    def __init__(self, repository: str, sha: str) -> None:
        super().__init__(f"no commit {sha} in {repository}")
        self.repository, self.sha = repository, sha


def revision_label(repository: str, sha: str) -> str:
    """How the revision's source reads in status and history: ``github:acme/api@1a2b3c4d5e6f``."""
    return f"github:{repository}@{sha[:12]}"


async def revision_from_commit(
    client: GitHubClient,
    deployer: RevisionSink,
    repository: str,
    sha: str,
    *,
    scratch: Path,
    application: str | None = None,
) -> dict[str, Any]:
    """Download, unpack and store the commit; returns Deployer.store_revision's ``{"sha256", "size", "source"}``.
    With ``application``, its AppSpec is checked for that application's platform (a Lambda or ECS repository).

    Raises GitHubUnavailable (download), BundleError (unsafe or odd tarball), AppSpecInvalid (bad appspec.yml).
    """
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="github-", dir=scratch) as work_name:
        work = Path(work_name)
        archive = await client.download_tarball(repository, sha, work / "commit.tar.gz")
        root = await asyncio.to_thread(_unpack, archive, work / "tree")
        label = revision_label(repository, sha)
        committed = await commit_time(client, repository, sha)
        github = {"repository": repository, "commit": sha} | (
            {"committed_at": committed} if committed is not None else {}
        )
        return await deployer.store_revision(
            root, source=label, commit=sha, application=application, location={"github": github}
        )


async def commit_time(client: GitHubClient, repository: str, sha: str) -> float | None:
    """When the commit was made (its committer date, epoch seconds): the start of its lead time on the pages and in
    ``deploybot stats``. None when GitHub does not say; the revision is stored all the same."""
    try:
        commit = await (await client.api(repository)).getitem(f"/repos/{repository}/commits/{sha}")
    except (GitHubUnavailable, GitHubException):
        return None
    details = commit.get("commit") if isinstance(commit, Mapping) else None
    committer = details.get("committer") if isinstance(details, Mapping) else None
    date = committer.get("date") if isinstance(committer, Mapping) else None
    try:
        return datetime.fromisoformat(str(date).replace("Z", "+00:00")).timestamp() if date else None
    except ValueError:
        return None


def _unpack(archive: Path, dest: Path) -> Path:
    safe_extract(archive, dest)
    archive.unlink()
    return strip_top_directory(dest)


def strip_top_directory(tree: Path) -> Path:
    """The one directory a GitHub tarball wraps the repository in (``pax_global_header`` aside)."""
    entries = [entry for entry in tree.iterdir() if entry.name != "pax_global_header"]
    if len(entries) != 1 or not entries[0].is_dir() or entries[0].is_symlink():
        names = ", ".join(sorted(entry.name for entry in entries)) or "nothing"
        raise BundleError("a GitHub tarball holds exactly one top directory", names)
    return entries[0]
