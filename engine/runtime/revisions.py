"""The revision store: every bundle kept once under ``<data>/revisions/<sha256>.tar.gz``, its AppSpec checked first.

A revision is validated when it is stored, so a bad AppSpec is refused with its line:column problems before any
deployment (and any host) sees it. Bundles are the application's code (and whatever it was shipped with): each is
0600 in a 0700 directory, and agents fetch only their own deployments' (engine/adapters/fleet.py ``bundle_for``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.bundles import AppSpecFile, build_bundle
from engine.core.appspec import normalized, parse_appspec
from engine.core.errors import AppSpecInvalid, Problem, RevisionNotFound
from engine.core.model import Platform, Revision
from engine.ports import Clock, DeploymentStore


class RevisionStore:
    def __init__(self, store: DeploymentStore, directory: Path, clock: Clock) -> None:
        self.store = store
        self.directory = directory
        self.clock = clock
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if directory.stat().st_mode & 0o777 != 0o700:
            directory.chmod(0o700)

    def path(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.tar.gz"

    async def add(
        self,
        source: str | Path,
        *,
        label: str | None = None,
        git_repo: Path | None = None,
        platform: Platform = Platform.SERVER,
        commit: str | None = None,
        location: Mapping[str, Any] | None = None,
    ) -> Revision:
        """Normalize ``source`` into a canonical bundle, validate its AppSpec, and keep it (once per sha256).

        ``commit`` names the commit an archive came from (a GitHub tarball), so hooks get ``BUNDLE_COMMIT``;
        ``location`` where it was fetched from (``{"s3": {...}}``), so hooks get ``BUNDLE_BUCKET`` and the rest.
        """
        built, appspec = await asyncio.to_thread(self._build_and_check, str(source), git_repo, platform)
        commit = commit or built.commit
        await self.store.put_revision(
            built.sha256,
            source=label or built.source,
            commit=commit,
            size=built.size,
            created_at=self.clock.now(),
            appspec=appspec,
            platform=str(platform),
            location=location,
        )
        return Revision(built.sha256, label or built.source, commit, built.size, location)

    def _build_and_check(self, source: str, git_repo: Path | None, platform: Platform) -> tuple[Any, Any]:
        with tempfile.TemporaryDirectory(dir=self.directory) as tmp:
            check = functools.partial(check_appspec, platform=platform)
            built = build_bundle(source, Path(tmp), git_repo=git_repo, check=check)  # checked before packing
            appspec = built.checked
            final = self.path(built.sha256)
            if not final.exists():
                os.chmod(built.path, 0o600)  # before it is in place: no moment where others could read it
                shutil.move(str(built.path), final)
            return built, appspec

    async def get(self, sha256: str) -> Revision:
        row = await self.store.get_revision(sha256)
        if row is None or not self.path(sha256).exists():
            raise RevisionNotFound(sha256)
        return Revision(row["sha256"], row["source"], row.get("commit"), row.get("size") or 0, row.get("location"))


def check_appspec(found: AppSpecFile | None, *, platform: Platform) -> dict[str, Any]:
    """The normalized AppSpec of a revision's root (``build_bundle``'s ``check``, before the bundle is packed)."""
    if found is not None:
        try:
            text = found.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AppSpecInvalid([Problem(found.name, 1, 1, f"the AppSpec is not UTF-8 text ({exc.reason})")]) from exc
        return normalized(parse_appspec(text, platform=platform, filename=found.name))
    raise AppSpecInvalid(
        [
            Problem(
                "appspec.yml",
                1,
                1,
                "the revision has no appspec.yml at its root; add one (see examples/hello)",
            )
        ]
    )
