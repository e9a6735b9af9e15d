"""The least any agent can do under deploybot's agent protocol: the plain script's work, and a round trip per event.

``bench.agent_floor`` runs deployments against a server with no deploybot code; with our real agents, what is left
over the plain script is the protocol *and* our agent. This agent takes ours out: one process per host (a fleet runs
one per host), which long-polls for its run of events and, for each, does only what the plain script does
(``bench.baseline``): DownloadBundle extracts the bench's bundle (the file the plain script extracts, so no download),
Install copies the revision's files, the four hooks run their scripts, ApplicationStop has nothing to stop. Then it
POSTs the event's result and reads the answer for "stop" before it starts the next event, as issue 19 requires of
every agent. No crash journal, no records, no log file, no heartbeats, no cleanup of the previous install on the
clock: each deployment gets fresh directories, and the ones before it go while the host waits for its next run.

A deployment with these agents against the plain script is the floor of the protocol itself on this machine: a
target below it cannot be met by any agent that reports each event and waits for its answer.
``python -m bench.minimal_agent URL HOST DIR BUNDLE`` runs one host's agent until its input closes.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.baseline import copy_files, extract, run_hook
from bench.revisions import HOOK_EVENTS
from engine.http11 import HttpClient

READY = "minimal agent ready"
POLL_SECONDS = 25


async def run_event(event: str, bundle: Path, host_dir: Path) -> None:
    """One lifecycle event's work on this host, the plain script's and nothing more."""
    if event == "DownloadBundle":
        await asyncio.to_thread(extract, bundle, host_dir)
    elif event == "Install":
        await asyncio.to_thread(copy_files, host_dir / "archive", host_dir)
    elif event in HOOK_EVENTS:
        await run_hook(host_dir / "archive", event, host_dir.name)


async def serve(url: str, host: str, root: Path, bundle: Path, busy: asyncio.Lock) -> None:
    """Poll for runs of events and run them, reporting each, until cancelled; ``busy`` is held from a run's start
    until its tidying is done, so that a stop waits for both."""
    http = HttpClient(url)
    headers = {"Authorization": f"Bearer {host}"}
    while True:
        answer = await http.request(
            "GET", f"/agent/v1/commands/next?wait={POLL_SECONDS}&runs=1", headers=headers, total=POLL_SECONDS + 15
        )
        if answer.status == 204:
            continue
        body = answer.json() if answer.status == 200 else None
        if not isinstance(body, dict):
            raise RuntimeError(f"{host}: the poll was answered {answer.status}: {answer.text()}")
        command: dict[str, Any] = body["command"]
        host_dir = root / str(command["deployment_id"])
        async with busy:
            await _run(http, headers, [command, *command.get("then", [])], bundle, host_dir)
            await asyncio.to_thread(_tidy, root, keep=host_dir)


async def _run(
    http: HttpClient, headers: dict[str, str], run: list[dict[str, Any]], bundle: Path, host_dir: Path
) -> None:
    """The run's events back to back, each reported, the next one only when the answer says not to stop."""
    for index, command in enumerate(run):
        started_at = time.time()
        try:
            await run_event(str(command["event"]), bundle, host_dir)
            status, message = "Succeeded", ""
        except Exception as exc:  # the bench's deployment fails, and the floor server says why
            status, message = "Failed", f"{type(exc).__name__}: {exc}"
        result: dict[str, Any] = {"status": status, "error_code": 0 if status == "Succeeded" else 1}
        result |= {"message": message, "log_tail": "", "started_at": started_at, "ended_at": time.time()}
        following = run[index + 1] if index + 1 < len(run) and status == "Succeeded" else None
        path = f"/agent/v1/commands/{command['id']}/result" + (f"?then={following['id']}" if following else "")
        answer = await http.request("POST", path, json_body=result, headers=headers)
        said = answer.json() if answer.status == 200 else None
        if following is None or not isinstance(said, dict) or said.get("stop") is not False:
            return


def _tidy(root: Path, *, keep: Path) -> None:
    """The host's earlier deployments' directories, deleted between runs (not on any deployment's clock)."""
    for path in root.iterdir():
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)


async def _main(url: str, host: str, root: Path, bundle: Path) -> None:
    """Serve until standard input closes (the bench is done) or the agent fails (which ends the process). A run
    under way when the input closes is finished, tidying included: the deployment it belongs to has been answered
    to the bench already, which may look at the host's directories as soon as the agent has exited."""
    root.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    closed = asyncio.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(closed.set)), daemon=True).start()
    busy = asyncio.Lock()
    agent = asyncio.create_task(serve(url, host, root, bundle, busy))
    print(READY, flush=True)
    await asyncio.wait([agent, asyncio.create_task(closed.wait())], return_when=asyncio.FIRST_COMPLETED)
    if agent.done():
        raise SystemExit(f"{host}: {agent.exception()}")
    async with busy:
        agent.cancel()


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: python -m bench.minimal_agent URL HOST DIR BUNDLE")
    asyncio.run(_main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])))
