"""One command from the server, run on this host: DownloadBundle, Install or a hook event (I/O, reference §4.5, §5).

Every outcome is a HookOutcome (code, message, log tail); nothing raises past ``execute`` except cancellation. The
HTTP side (fetching the bundle) is injected as ``fetch`` so this module knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import stat
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from engine.agent.hooks import HookOutcome, HookRunner, OnGroup
from engine.agent.layout import AgentLayout
from engine.agent.output import ScriptLog
from engine.core.agent_protocol import BASIC_ENV, Command, DeploymentSpec
from engine.core.errors import AppSpecInvalid, BundleError
from engine.core.lifecycle import SERVER_HOOKABLE, ScriptSource, script_source
from engine.core.model import LifecycleEvent, Platform, ScriptErrorCode

if TYPE_CHECKING:
    from engine.core.appspec import ServerAppSpec

# The AppSpec parser (yaml), the installer and the bundle extractor are imported by the command that needs them:
# an idle agent (most of them, most of the time) never loads them.

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

BundleFetcher = Callable[[str, Path], Awaitable[str]]
"""``fetch(url, dest) -> sha256 hex`` of what was written to ``dest``."""

_OK = ScriptErrorCode.SUCCEEDED
_UNKNOWN = ScriptErrorCode.UNKNOWN_ERROR
HELD_BUNDLES = 2
"""Revisions whose last bundle an agent remembers: a redeploy of the revision on the host, or a rollback to the one
before it, extracts that bundle again instead of downloading it (after checking its sha256)."""
ON_LOOP_TAR_BYTES = 256 * 1024
"""A revision whose tar is at most this big unpacked (256 KiB: at most 512 entries of a 512-byte header each) is
unpacked and installed on the agent's own event loop, which has nothing else to do meanwhile but a heartbeat every few
seconds: milliseconds of work for an app's few files (at worst 0.07-0.23 s to unpack, as long to install: 500 empty
files on the bench's VM), where handing it to a worker thread and back cost 0.2-0.3 ms per event there (a one-host
deployment took 0.3-1.0 ms less on the loop). A bigger one, or one whose size the agent cannot read, is unpacked and
installed in a worker thread, so that heartbeats keep their time whatever the revision holds."""
TOKEN_VARIABLE = "DEPLOYBOT_AGENT_TOKEN"
"""The agent token's environment variable (``deploybot agent``): never handed to a hook, not even through ``--env``."""


class _Failed(Exception):
    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


def hook_environment(
    spec: DeploymentSpec,
    event: LifecycleEvent,
    *,
    host: str,
    prefix: Path | None,
    extra: Mapping[str, str],
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """BASIC_ENV from the agent's environment (``base``), the ``--env`` pairs, then CodeDeploy's variables and ours
    (those always win). Nothing else of the agent's environment reaches a script: it may hold secrets."""
    source = os.environ if base is None else base
    env = {name: source[name] for name in BASIC_ENV if name in source}
    env.update((key, value) for key, value in extra.items() if key != TOKEN_VARIABLE)
    env.update(
        LIFECYCLE_EVENT=str(event),
        DEPLOYMENT_ID=spec.short_deployment_id,
        APPLICATION_NAME=spec.application_name,
        DEPLOYMENT_GROUP_NAME=spec.deployment_group_name,
        DEPLOYMENT_GROUP_ID=spec.deployment_group_id,
        DEPLOYBOT_HOST=host,
        DEPLOYBOT_PREFIX=str(prefix) if prefix is not None else "",
    )
    if spec.revision is not None and spec.revision.commit:
        env["BUNDLE_COMMIT"] = spec.revision.commit
    env.update(s3_bundle_environment(spec.raw.get("revision")))
    return env


def s3_bundle_environment(revision: object) -> dict[str, str]:
    """BUNDLE_BUCKET/KEY/VERSION/ETAG of a revision fetched from S3 (``revision["location"]["s3"]``); empty
    otherwise. BUNDLE_VERSION and BUNDLE_ETAG are left out when the object has none, as CodeDeploy does (§5)."""
    location = revision.get("location") if isinstance(revision, Mapping) else None
    s3 = location.get("s3") if isinstance(location, Mapping) else None
    if not isinstance(s3, Mapping):
        return {}
    names = {"bucket": "BUNDLE_BUCKET", "key": "BUNDLE_KEY", "version": "BUNDLE_VERSION", "etag": "BUNDLE_ETAG"}
    return {env: str(s3[field]) for field, env in names.items() if s3.get(field) not in (None, "")}


class CommandExecutor:
    """Runs commands one at a time against an AgentLayout."""

    def __init__(
        self,
        layout: AgentLayout,
        *,
        host: str,
        fetch: BundleFetcher,
        prefix: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
        hook_runner: HookRunner | None = None,
    ) -> None:
        self.layout = layout
        self.host = host
        self.prefix = prefix
        self.extra_env = dict(extra_env or {})
        self._fetch = fetch
        self._runner = hook_runner or HookRunner()
        # The deployment directory made last (or being made, in a worker thread): its (group id, deployment id).
        self._ensured: tuple[tuple[str, str], asyncio.Future[Path]] | None = None
        self._prune_due: dict[str, Path] = {}  # group id -> its newest download, whose old revisions go (tidy)
        self._tidying: asyncio.Future[None] | None = None  # tidy_soon's deletion, until the next command waits on it
        self._held: dict[str, Path] = {}  # sha256 -> the bundle of this process's last download of that revision

    async def execute(self, command: Command, *, on_group: OnGroup | None = None) -> HookOutcome:
        """Run ``command``; ``on_group`` is told the process group of each hook script it runs (HookRunner)."""
        await self._tidied()  # no event runs beside a deletion of revisions
        try:
            if command.event == LifecycleEvent.DOWNLOAD_BUNDLE:
                return await self._download(command.spec)
            if command.event == LifecycleEvent.INSTALL:
                return await self._install(command.spec)
            if command.event in SERVER_HOOKABLE:
                return await self._hook(LifecycleEvent(command.event), command.spec, on_group)
            return HookOutcome(_UNKNOWN, f"Unsupported command type: {command.event}")
        except _Failed as failed:
            return HookOutcome(_UNKNOWN, failed.message)

    async def _deployment_dir(self, spec: DeploymentSpec) -> Path:
        """The deployment's directory, made by its first command; the next ones only check it is still there."""
        return await asyncio.shield(self._deployment_dir_made(spec))

    def _deployment_dir_made(self, spec: DeploymentSpec) -> asyncio.Future[Path]:
        """The deployment's directory once it is made: by a worker thread when this is its first command, so that
        an ApplicationStop with no script to run (the first deployment of a group on a host, or a revision without
        that hook) reports at once while the directory is made; DownloadBundle waits for it. Its failure is the
        failure of the first command that needs the directory, as when it was made in line."""
        key = (spec.deployment_group_id, spec.deployment_id)
        if self._ensured is not None and self._ensured[0] == key and _still_made(self._ensured[1]):
            return self._ensured[1]
        made = asyncio.ensure_future(asyncio.to_thread(self.layout.ensure_deployment_dir, *key, dict(spec.raw)))
        made.add_done_callback(_retrieved)
        self._ensured = (key, made)
        return made

    # --- DownloadBundle -----------------------------------------------------------------------------------------

    async def _download(self, spec: DeploymentSpec) -> HookOutcome:
        revision = spec.revision
        if revision is None:
            raise _Failed("DownloadBundle: the command names no revision")
        deployment_dir = await self._deployment_dir(spec)
        bundle = self.layout.bundle_path(deployment_dir)
        partial = bundle.with_name(bundle.name + ".part")
        archive = self.layout.archive_dir(deployment_dir)
        unpacked = functools.partial(self._unpack, partial, bundle, archive, spec.deployment_group_id, deployment_dir)
        held = self._held.pop(revision.sha256, None)
        # An earlier download of the revision is checked, linked, unpacked and recorded in one go.
        reused = held is not None and await _on_loop_if_small(
            held, _reuse, held, partial, revision.sha256, then=unpacked
        )
        if not reused:
            try:
                sha256 = await self._fetch(revision.url, partial)
            except Exception as exc:
                partial.unlink(missing_ok=True)
                raise _Failed(f"DownloadBundle: could not download {revision.url}: {exc}") from exc
            if sha256 != revision.sha256:
                partial.unlink(missing_ok=True)
                raise _Failed(
                    f"DownloadBundle: the bundle's sha256 is {sha256} but the revision is {revision.sha256} "
                    f"({revision.url}); the download was corrupted or the server sent another revision"
                )
            await _on_loop_if_small(partial, unpacked)
        self._prune_due[spec.deployment_group_id] = deployment_dir
        self._held[revision.sha256] = bundle
        while len(self._held) > HELD_BUNDLES:
            del self._held[next(iter(self._held))]  # the oldest: its directory is likely pruned by now
        if reused:
            return HookOutcome(_OK, f"extracted revision {revision.sha256[:12]} from its bundle already on this host")
        return HookOutcome(_OK, f"downloaded and extracted revision {revision.sha256[:12]}")

    def _unpack(self, partial: Path, bundle: Path, archive: Path, group_id: str, deployment_dir: Path) -> None:
        """The downloaded bundle put in its place, unpacked afresh and recorded as the group's most recent install (on
        the loop or in a worker thread, see ``_on_loop_if_small``); _Failed for a bundle unsafe to unpack."""
        os.replace(partial, bundle)
        try:
            _extract_fresh(bundle, archive)
        except BundleError as exc:
            raise _Failed(f"DownloadBundle: unsafe or unreadable bundle: {exc}") from exc
        self.layout.record_most_recent_install(group_id, deployment_dir)

    def tidy_soon(self) -> None:
        """Start deleting old revisions in the background; the agent calls it once it has been idle a while (see
        ``AgentOptions.tidy_after``). Deleting a directory tree is no part of any deployment: the next command waits
        for a deletion under way to end first, and none starts while a command or a run of them is in hand."""
        if self._prune_due and self._tidying is None:
            self._tidying = asyncio.ensure_future(self._prune())

    def stop_tidying(self) -> None:
        """The agent is stopping: a deletion under way is left to its thread, which finishes it."""
        if self._tidying is not None:
            self._tidying.cancel()
            self._tidying = None

    async def _tidied(self) -> None:
        tidying, self._tidying = self._tidying, None
        if tidying is not None:
            await tidying

    async def _prune(self) -> None:
        while self._prune_due:
            group_id, current = self._prune_due.popitem()
            try:
                removed = await asyncio.to_thread(self.layout.prune_revisions, group_id, current)
            except OSError as exc:  # a later download tries again
                log.warning("could not delete old revisions of %s: %s", group_id, exc)
                continue
            if removed:
                log.info("deleted %d old revision(s) of %s", len(removed), group_id)

    # --- Install ------------------------------------------------------------------------------------------------

    async def _install(self, spec: DeploymentSpec) -> HookOutcome:
        deployment_dir = await self._deployment_dir(spec)
        archive = self.layout.archive_dir(deployment_dir)
        if not archive.is_dir():
            raise _Failed("Install: the revision is not on this host (DownloadBundle did not run here)")
        names = dict.fromkeys((spec.appspec_filename, "appspec.yaml", "appspec.yml"))
        appspec = _load_appspec(archive, tuple(names))
        from engine.agent.installer import InstallError, install

        # Permissions with acls or an SELinux context run a tool per path: never on the loop.
        tools = any(permission.acls or permission.context for permission in appspec.permissions)
        try:
            report = await _on_loop_if_small(
                None if tools else self.layout.bundle_path(deployment_dir),
                install,
                appspec,
                archive_dir=archive,
                cleanup_file=self.layout.cleanup_file(spec.deployment_group_id),
                file_exists_behavior=spec.file_exists_behavior,
                prefix=self.prefix,
            )
        except InstallError as exc:
            self._log_line(deployment_dir, LifecycleEvent.INSTALL, f"failed: {exc.reason}")
            raise _Failed(exc.reason) from exc
        except OSError as exc:
            self._log_line(deployment_dir, LifecycleEvent.INSTALL, f"failed: {exc}")
            raise _Failed(f"Install failed: {exc}") from exc
        self.layout.record_last_successful_install(spec.deployment_group_id, deployment_dir)
        summary = report.summary()
        self._log_line(deployment_dir, LifecycleEvent.INSTALL, summary)
        return HookOutcome(_OK, summary)

    def _log_line(self, deployment_dir: Path, event: LifecycleEvent, text: str) -> None:
        with ScriptLog(self.layout.script_log_path(deployment_dir)) as log:
            log.header(f"LifecycleEvent - {event}")
            log.header(text)

    # --- hook events --------------------------------------------------------------------------------------------

    async def _hook(self, event: LifecycleEvent, spec: DeploymentSpec, on_group: OnGroup | None) -> HookOutcome:
        made = self._deployment_dir_made(spec)
        deployment_dir = self.layout.deployment_dir(spec.deployment_group_id, spec.deployment_id)
        source_dir = self._script_source_dir(event, spec, deployment_dir)
        if source_dir is None:
            return HookOutcome(_OK, "no scripts: no earlier install of this deployment group on this host")
        archive = self.layout.archive_dir(source_dir)
        appspec = _load_appspec(archive, (spec.appspec_filename,))
        scripts = appspec.hooks.get(event, ())
        if not scripts:
            return HookOutcome(_OK, "no scripts")
        await asyncio.shield(made)  # the scripts' log is written there
        env = hook_environment(spec, event, host=self.host, prefix=self.prefix, extra=self.extra_env)
        with ScriptLog(self.layout.script_log_path(deployment_dir)) as log:
            # A failure is reported as it is even with ignore_application_stop_failures: the server decides to go on.
            return await self._runner.run_event(
                event, scripts, archive_dir=archive, env=env, log=log, on_group=on_group
            )

    def _script_source_dir(self, event: LifecycleEvent, spec: DeploymentSpec, deployment_dir: Path) -> Path | None:
        """The deployment directory whose archive holds this event's scripts (§4.5); None means a no-op."""
        if self.layout.archive_dir(deployment_dir).is_dir():
            return deployment_dir
        source = script_source(event, blue_green_rollback=spec.blue_green_rollback)
        if source is ScriptSource.CURRENT:
            raise _Failed(f"{event}: the revision is not on this host (DownloadBundle did not run here)")
        group = spec.deployment_group_id
        if source is ScriptSource.MOST_RECENT:
            earlier = self.layout.most_recent_install(group)
        else:
            earlier = self.layout.last_successful_install(group)
        if earlier is None or not self.layout.archive_dir(earlier).is_dir():
            return None
        return earlier


async def _on_loop_if_small(bundle: Path | None, work: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``work`` on the loop when ``bundle`` (the revision it unpacks or installs) is small unpacked, else in a worker
    thread (see ``ON_LOOP_TAR_BYTES``); None counts as big."""
    size = _tar_bytes(bundle) if bundle is not None else None
    if size is not None and size <= ON_LOOP_TAR_BYTES:
        return work(*args, **kwargs)
    return await asyncio.to_thread(work, *args, **kwargs)


def _tar_bytes(bundle: Path) -> int | None:
    """The size of the tar ``bundle`` holds, read without unpacking it: a plain tar's own size, a gzip's from its
    trailer (ISIZE, RFC 1952: what ``deploybot`` builds); None for another compression or a file it cannot read.

    ISIZE is the size modulo 4 GiB: a tar that big, which the bundle limits refuse (2 GiB unpacked), would be read
    for small and its headers checked on the loop before the refusal."""
    try:
        with open(bundle, "rb") as file:
            head = file.read(_USTAR_END)
            if head[:2] == b"\x1f\x8b":
                file.seek(-4, os.SEEK_END)
                return int.from_bytes(file.read(4), "little")
            if head[_USTAR_START:_USTAR_END] == b"ustar":
                return os.fstat(file.fileno()).st_size
    except OSError:
        return None
    return None


_USTAR_START, _USTAR_END = 257, 262  # where a POSIX tar header says "ustar"


def _still_made(made: asyncio.Future[Path]) -> bool:
    """A deployment directory being made, or made and still there; a making that failed (or was cancelled) and a
    directory removed since are made again."""
    if not made.done():
        return True
    return not made.cancelled() and made.exception() is None and made.result().is_dir()


def _retrieved(made: asyncio.Future[Path]) -> None:
    """A deployment directory's making that failed after its run stopped: its error is no command's, and goes."""
    if not made.cancelled():
        made.exception()


def _reuse(held: Path, dest: Path, sha256: str, then: Callable[[], None]) -> bool:
    """Link ``held``, an earlier download of the revision, to ``dest`` when its content still hashes to ``sha256``
    (it was not pruned, truncated or edited since), then call ``then``; False, with nothing left at ``dest`` and
    ``then`` not called, when it cannot be used."""
    import hashlib

    try:
        dest.unlink(missing_ok=True)
        os.link(held, dest)
        with open(dest, "rb") as file:
            digest = hashlib.file_digest(file, "sha256")
    except OSError:
        dest.unlink(missing_ok=True)
        return False
    if digest.hexdigest() != sha256:
        dest.unlink(missing_ok=True)
        return False
    then()
    return True


def _extract_fresh(bundle: Path, archive: Path) -> None:
    from engine.bundles import safe_extract

    if archive.exists():
        shutil.rmtree(archive)
    safe_extract(bundle, archive)


@functools.lru_cache(maxsize=16)
def _appspec_text(path: str, version: tuple[int, int, int]) -> str:
    """Every event of a deployment reads the same AppSpec: each version of a file (``version``: its inode, size and
    modification time) is read once; a stat tells the next event it is unchanged."""
    with open(path, encoding="utf-8", errors="replace") as file:
        return file.read()


@functools.lru_cache(maxsize=16)
def _parse_server_appspec(text: str, name: str) -> object:
    """Each distinct text is parsed once (values are frozen): the next deployment of a revision reads its AppSpec
    from a new directory, and parsing it again would cost more than the rest of its event."""
    from engine.core.appspec import parse_appspec

    return parse_appspec(text, platform=Platform.SERVER, filename=name)


def _load_appspec(archive: Path, names: tuple[str, ...]) -> ServerAppSpec:
    """The first of ``names`` found in ``archive``, parsed strictly for the server platform."""
    for name in names:
        path = os.path.join(archive, name)
        try:
            found = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(found.st_mode):
            break
    else:
        raise _Failed(
            "The CodeDeploy agent did not find an AppSpec file within the unpacked revision directory at "
            f'revision-relative path "{names[0]}". The revision was unpacked to directory "{archive}", and the '
            "AppSpec file was expected but not found at path "
            f'"{archive / names[0]}". Consult the AWS CodeDeploy Appspec documentation for more information at '
            "http://docs.aws.amazon.com/codedeploy/latest/userguide/reference-appspec-file.html"
        )
    try:
        text = _appspec_text(path, (found.st_ino, found.st_size, found.st_mtime_ns))
        spec = _parse_server_appspec(text, name)
    except AppSpecInvalid as exc:
        raise _Failed("invalid AppSpec file:\n" + "\n".join(str(problem) for problem in exc.problems)) from exc
    except OSError as exc:  # removed or made unreadable since the stat
        raise _Failed(f"cannot read the AppSpec file {path}: {exc.strerror or exc}") from exc
    from engine.core.appspec import ServerAppSpec

    if not isinstance(spec, ServerAppSpec):
        raise _Failed(f"{name} is not a server AppSpec")
    return spec
