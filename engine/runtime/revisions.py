"""The revision store: every bundle kept once under ``<data>/revisions/<sha256>.tar.gz``, its AppSpec checked first.

A revision is validated when it is stored, so a bad AppSpec is refused with its line:column problems before any
deployment (and any host) sees it. Bundles are the application's code (and whatever it was shipped with): each is
0600 in a 0700 directory, and agents fetch only their own deployments' (engine/adapters/fleet.py ``bundle_for``).

Replicas (several servers on one PostgreSQL database, each with its own data directory): given ``shared`` (the
store's BundleRecords), every bundle added here is also written to the database, and a bundle this replica lacks is
fetched from there into its own directory (``fetch``: chunk by chunk into a temp file, its sha256 checked, then moved
into place) before it is used or served: by ``get`` (a deployment naming ``sha256:...``, a rollback) and by the agents'
download route. On SQLite (one server) ``shared`` is None and the directory is the only copy.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from engine.bundles import AppSpecFile, build_bundle
from engine.core.appspec import normalized, parse_appspec
from engine.core.errors import AppSpecInvalid, EngineError, Problem, RevisionNotFound
from engine.core.model import Platform, Revision
from engine.ports import BundleRecords, Clock, DeploymentStore

SHARED_CHUNK_BYTES = 1 << 20
"""The size of the pieces a bundle is written to the database in (engine/store/bundle_records.py's CHUNK_BYTES)."""


class RevisionStore:
    def __init__(
        self, store: DeploymentStore, directory: Path, clock: Clock, *, shared: BundleRecords | None = None
    ) -> None:
        self.store = store
        self.directory = directory
        self.clock = clock
        self.shared = shared
        self._fetching: dict[str, asyncio.Task[bool]] = {}
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
        await self.share(built.sha256)
        return Revision(built.sha256, label or built.source, commit, built.size, location)

    async def share(self, sha256: str) -> bool:
        """Write the stored bundle to the database for the other replicas (once; nothing without ``shared``);
        True when this call wrote it."""
        path = self.path(sha256)
        if self.shared is None or not path.exists():
            return False
        if await self.shared.get_bundle(sha256) is not None:
            return False

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as bundle:
                while data := bundle.read(SHARED_CHUNK_BYTES):
                    yield data

        return await self.shared.put_bundle(sha256, path.stat().st_size, chunks, created_at=self.clock.now())

    async def fetch(self, sha256: str) -> bool:
        """Make sure the bundle is in this replica's directory, bringing it from the database when it is not; False
        when neither has it. Concurrent calls for one bundle share one download."""
        if self.path(sha256).exists():
            return True
        if self.shared is None or len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            return False
        task = self._fetching.get(sha256)
        if task is None:
            task = asyncio.ensure_future(self._download(sha256))
            self._fetching[sha256] = task
            task.add_done_callback(lambda _: self._fetching.pop(sha256, None))
        return await asyncio.shield(task)

    async def _download(self, sha256: str) -> bool:
        assert self.shared is not None
        row = await self.shared.get_bundle(sha256)
        if row is None:
            return False
        fd, name = tempfile.mkstemp(prefix="fetch-", suffix=".tar.gz", dir=self.directory)
        scratch = Path(name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for seq in range(int(row["chunks"])):
                    data = await self.shared.bundle_chunk(sha256, seq)
                    if data is None:
                        raise BundleDamaged(sha256, f"chunk {seq} of {row['chunks']} is missing")
                    digest.update(data)
                    await asyncio.to_thread(out.write, data)
            if digest.hexdigest() != sha256:
                raise BundleDamaged(sha256, f"its content hashes to {digest.hexdigest()}")
            os.replace(scratch, self.path(sha256))  # mkstemp made it 0600
        finally:
            scratch.unlink(missing_ok=True)
        return True

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
        """The stored revision (its bundle brought from the database first, on a replica that lacks it)."""
        row = await self.store.get_revision(sha256)
        if row is None or not await self.fetch(sha256):
            raise RevisionNotFound(sha256)
        return Revision(row["sha256"], row["source"], row.get("commit"), row.get("size") or 0, row.get("location"))


class BundleDamaged(EngineError):
    """The database's copy of a bundle is not the bundle it is stored as (.sha256, .reason): never served."""

    def __init__(self, sha256: str, reason: str) -> None:
        self.sha256, self.reason = sha256, reason
        super().__init__(f"the database's copy of bundle {sha256} is damaged: {reason}")


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
