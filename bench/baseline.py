"""The yardstick for orchestration overhead: the same per-host work done by a plain asyncio script, no deploybot.

For each of N "hosts", concurrently (or one after another, the yardstick of OneAtATime): extract the canonical
bundle with ``engine.bundles.safe_extract`` into the host's own directory, copy the appspec's files the way Install
would (shutil), then run the four hook scripts one after another as subprocesses (stdin from /dev/null, output
captured). Whatever deploybot takes beyond this is
orchestration: HTTP round trips, the state machine, SQLite writes, bundle download and agent bookkeeping.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

from bench.revisions import FILES, HOOK_EVENTS, hook_script
from engine.bundles import build_bundle, safe_extract


def extract(bundle: Path, host_dir: Path) -> Path:
    """The bundle unpacked into ``host_dir``'s own ``archive`` (what DownloadBundle leaves on a host)."""
    archive = host_dir / "archive"
    safe_extract(bundle, archive)
    return archive


def copy_files(archive: Path, host_dir: Path) -> None:
    """The revision's files copied where the appspec sends them, under ``host_dir`` (what Install does)."""
    for source, destination in FILES:
        target = host_dir / "fs" / destination.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(archive / source, target / os.path.basename(source))


async def run_hook(archive: Path, event: str, host: str) -> None:
    """``event``'s script as a subprocess, stdin from /dev/null, its output captured; it must succeed."""
    process = await asyncio.create_subprocess_exec(
        str(archive / hook_script(event)),
        cwd=archive,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{event} exited {process.returncode} on {host}")


def _extract_and_copy(bundle: Path, host_dir: Path) -> Path:
    archive = extract(bundle, host_dir)
    copy_files(archive, host_dir)
    return archive


async def _one_host(bundle: Path, host_dir: Path) -> None:
    archive = await asyncio.to_thread(_extract_and_copy, bundle, host_dir)
    for event in HOOK_EVENTS:
        await run_hook(archive, event, host_dir.name)


async def _all_hosts(bundle: Path, root: Path, hosts: int, sequential: bool) -> float:
    started = time.perf_counter()
    host_dirs = [root / f"host-{index:03d}" for index in range(hosts)]
    if sequential:  # what OneAtATime does: each host after the one before
        for host_dir in host_dirs:
            await _one_host(bundle, host_dir)
    else:
        await asyncio.gather(*(_one_host(bundle, host_dir) for host_dir in host_dirs))
    return time.perf_counter() - started


def canonical_bundle(revision: Path, dest_dir: Path) -> Path:
    """The bundle the server would build for ``revision`` (built once, like the server does)."""
    return build_bundle(revision, dest_dir).path


def run_baseline(bundle: Path, root: Path, *, hosts: int, sequential: bool = False) -> float:
    """Seconds for one run of all ``hosts`` (at once, or one after another), into fresh directories under ``root``."""
    return asyncio.run(_all_hosts(bundle, root, hosts, sequential))
