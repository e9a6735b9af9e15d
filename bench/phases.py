"""Where a deployment's time goes, per lifecycle event, from timestamps the system already records.

Theory of operation: for one host, every event is a host command with four clocks on one machine — the server
queues it (``host_commands.created_at``), an agent's long poll claims it (``claimed_at``), the agent runs it
(``started_at``/``ended_at`` in the deployment JSON), and the server takes the result (``finished_at``). So the
time from one event's end to the next one's start splits into: the result's trip to the server, the server's own
work until the next command is queued (state machine, SQLite, dispatch), the wait until a poll claims it, and the
trip back to the agent. Medians are over hosts. CPU seconds from /proc (the server's, the agents', and the hook
processes the agents reaped) say whether the 2 cores were saturated, and by whom.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from engine.processes import every_process, stat_fields

_TICKS = os.sysconf("SC_CLK_TCK")
SEGMENTS = ("result to server", "server until queued", "queued until claimed", "claimed until started", "running")


@dataclass(frozen=True, slots=True)
class CpuTimes:
    server: float
    agents: float
    hooks: float

    def minus(self, earlier: CpuTimes) -> CpuTimes:
        return CpuTimes(self.server - earlier.server, self.agents - earlier.agents, self.hooks - earlier.hooks)


def memory_mib(pid: int) -> tuple[float, float]:
    """(resident now, resident at its peak) of ``pid`` in MiB: VmRSS and VmHWM of ``/proc/PID/status``."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def stat_times(pid: int) -> tuple[float, float]:
    """(own CPU, reaped children's CPU) in seconds; zeros for a process that is gone. Its own CPU comes from the
    process's CPU-time clock (nanoseconds, every thread it ever ran) where Linux offers it: /proc counts in ticks of
    10 ms, a tenth of what 50 hosts' deployment costs the server."""
    fields = stat_fields(pid)
    if fields is None:
        return 0.0, 0.0
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    try:
        own = time.clock_gettime(_process_cpu_clock(pid))
    except OSError:  # gone since, or a kernel without the clock
        own = (utime + stime) / _TICKS
    return own, (cutime + cstime) / _TICKS


def _process_cpu_clock(pid: int) -> int:
    """The clock id of ``pid``'s CPU time, all its threads (what glibc's ``clock_getcpuclockid`` returns; Python
    does not wrap it): Linux encodes it as ``~pid << 3 | CPUCLOCK_SCHED``."""
    return ((~pid) << 3) | 2


PF_KTHREAD = 0x00200000  # a kernel thread (``flags`` of /proc/PID/stat): never "another process"


@dataclass(frozen=True, slots=True)
class MachineSample:
    """When, how much CPU each process not ours had used by then, and the machine's steal time (another VM's): two
    samples tell anyone else's load in between from ours.

    Ours are this process and its descendants (the server, its agents and their hooks, the floors, the swarm), and
    kernel threads are no one's: what they do for us (writing our files back, say) would otherwise pass for someone
    else's load, and so would the softirq time of our own loopback traffic, had the machine's busy time been used."""

    at: float
    others: dict[tuple[int, int], float]  # (pid, start time in ticks) -> CPU seconds, its reaped children's included
    steal: float


@dataclass(frozen=True, slots=True)
class ProcessStat:
    parent: int
    started: int  # ticks after boot: with the pid, it names the process (pids are reused)
    kernel_thread: bool
    cpu: float  # seconds, its own and its reaped children's


def process_stats() -> dict[int, ProcessStat]:
    """Every process /proc shows now (those gone while it was read are left out)."""
    stats: dict[int, ProcessStat] = {}
    for pid, fields in every_process():
        utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
        cpu = (utime + stime + cutime + cstime) / _TICKS
        stats[pid] = ProcessStat(int(fields[1]), int(fields[19]), bool(int(fields[6]) & PF_KTHREAD), cpu)
    return stats


def descendants(root: int, parents: dict[int, int]) -> set[int]:
    """``root`` and every process under it, given each process's parent."""
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def machine_sample() -> MachineSample:
    stats = process_stats()
    ours = descendants(os.getpid(), {pid: stat.parent for pid, stat in stats.items()})
    others = {
        (pid, stat.started): stat.cpu for pid, stat in stats.items() if pid not in ours and not stat.kernel_thread
    }
    steal = int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[8]) / _TICKS
    return MachineSample(time.monotonic(), others, steal)


def foreign_share(start: MachineSample, end: MachineSample) -> float:
    """The share of the machine (0..1 of all cores) that processes not ours, and other VMs, used between the samples.

    A process seen only at the end started in between: all of its CPU counts. One that ended in between counts
    through the parent that reaped it, when that parent is not ours either."""
    seconds = (end.at - start.at) * (os.cpu_count() or 1)
    used = sum(cpu - start.others.get(key, 0.0) for key, cpu in end.others.items()) + (end.steal - start.steal)
    return max(0.0, used) / seconds if seconds > 0 else 0.0


def wait_quiet(share: float, *, within: float, window: float = 0.5) -> float:
    """Wait until processes not ours use at most ``share`` of the machine over ``window`` seconds, for at most
    ``within`` seconds; the share last seen (above ``share`` when the machine never got quiet)."""
    deadline = time.monotonic() + within
    while True:
        start = machine_sample()
        time.sleep(window)
        seen = foreign_share(start, machine_sample())
        if seen <= share or time.monotonic() >= deadline:
            return seen


def cpu_times(server_pid: int, agent_pids: Iterable[int]) -> CpuTimes:
    own = [stat_times(pid) for pid in agent_pids]
    return CpuTimes(stat_times(server_pid)[0], sum(o for o, _ in own), sum(c for _, c in own))


def command_times(database: Path, deployment_id: str) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(host, event) -> (created_at, claimed_at, finished_at) of the deployment's host commands, read-only.

    Empty when the table is not there or has another shape: the breakdown then shows only the agent's clocks.
    """
    sql = "SELECT host, event, created_at, claimed_at, finished_at FROM host_commands WHERE deployment_id = ?"
    with contextlib.suppress(sqlite3.Error):
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
            rows = db.execute(sql, (deployment_id,)).fetchall()
        return {(h, e): (c, cl, f) for h, e, c, cl, f in rows if None not in (c, cl, f)}
    return {}


@dataclass(frozen=True, slots=True)
class EventTiming:
    name: str
    segments_ms: tuple[float | None, ...]  # medians over hosts, in SEGMENTS order (None: not measurable)
    last_end_s: float  # when the last host finished this event, seconds after creation


@dataclass(frozen=True, slots=True)
class Breakdown:
    events: tuple[EventTiming, ...]
    finish_ms: float  # last event end on any host -> deployment ended_at
    total_s: float  # ended_at - created_at


def _segments(
    previous_end: float, previous_finished: float | None, event: dict[str, Any], command: tuple[float, ...] | None
) -> tuple[float | None, ...]:
    start, end = float(event["started_at"]), float(event["ended_at"])
    if command is None:
        return (None, None, None, None, end - start)
    created, claimed, _ = command
    report = previous_finished - previous_end if previous_finished is not None else 0.0
    server_from = previous_finished if previous_finished is not None else previous_end
    return (report, created - server_from, claimed - created, start - claimed, end - start)


def breakdown(doc: dict[str, Any], commands: dict[tuple[str, str], tuple[float, float, float]]) -> Breakdown:
    created = float(doc["created_at"])
    names = [event["name"] for event in doc["targets"][0]["events"]]
    samples: dict[str, list[tuple[float | None, ...]]] = {name: [] for name in names}
    ends: dict[str, float] = dict.fromkeys(names, 0.0)
    last_end = created
    for target in doc["targets"]:
        previous_end, previous_finished = created, None
        for event in target["events"]:
            command = commands.get((target["name"], event["name"]))
            samples[event["name"]].append(_segments(previous_end, previous_finished, event, command))
            previous_end = float(event["ended_at"])
            previous_finished = command[2] if command else None
            ends[event["name"]] = max(ends[event["name"]], previous_end - created)
        last_end = max(last_end, previous_end)
    events = []
    for name in names:
        columns = list(zip(*samples[name], strict=True))
        medians = tuple(
            None if any(v is None for v in column) else statistics.median(column) * 1000 for column in columns
        )
        events.append(EventTiming(name, medians, ends[name]))
    return Breakdown(tuple(events), (float(doc["ended_at"]) - last_end) * 1000, float(doc["ended_at"]) - created)


def between_events_ms(doc: dict[str, Any]) -> float:
    """The median time, over every host and every two consecutive events of it, from one event's end to the next
    one's start: what the agent waited on the server (and did for its own records) between the two."""
    gaps = [
        (float(later["started_at"]) - float(earlier["ended_at"])) * 1000
        for target in doc["targets"]
        for earlier, later in itertools.pairwise(target["events"])
    ]
    return statistics.median(gaps)


def event_ms(doc: dict[str, Any]) -> float:
    """The median time one event took on its host, over every host and event: how long an agent is away between two
    of its round trips (the pause ``bench.floor`` measures the floor at)."""
    return statistics.median(
        (float(event["ended_at"]) - float(event["started_at"])) * 1000
        for target in doc["targets"]
        for event in target["events"]
    )


def event_medians_ms(docs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Each lifecycle event's median time on its host, over every host of every deployment in ``docs``, in the
    order the events ran (a deployment document names an event ``name``; the floor server's, ``event``)."""
    times: dict[str, list[float]] = {}
    for doc in docs:
        for target in doc["targets"]:
            for event in target["events"]:
                if event.get("started_at") is None or event.get("ended_at") is None:
                    continue  # an event that did not run on the host (e.g. traffic events without a load balancer)
                name = str(event.get("name") or event.get("event"))
                times.setdefault(name, []).append((float(event["ended_at"]) - float(event["started_at"])) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def render(title: str, result: Breakdown, cpu: CpuTimes | None, console: Console) -> None:
    table = Table(title=title + " (medians over hosts, ms)", title_justify="left")
    table.add_column("event")
    for segment in SEGMENTS:
        table.add_column(segment, justify="right")
    table.add_column("last host done (s)", justify="right")
    totals = [0.0] * len(SEGMENTS)
    for event in result.events:
        cells = []
        for index, value in enumerate(event.segments_ms):
            cells.append("-" if value is None else f"{value:.1f}")
            totals[index] += value or 0.0
        table.add_row(event.name, *cells, f"{event.last_end_s:.2f}")
    table.add_row("[bold]sum", *(f"[bold]{value:.0f}" for value in totals), "")
    console.print(table)
    console.print(f"  {result.finish_ms:.0f} ms from the last event to 'Succeeded'; total {result.total_s:.2f} s")
    if cpu is not None:
        cores = os.cpu_count() or 1
        used = cpu.server + cpu.agents + cpu.hooks
        console.print(
            f"  CPU: server {cpu.server:.2f} s, agents {cpu.agents:.2f} s, hook processes {cpu.hooks:.2f} s "
            f"= {used:.2f} s of {result.total_s * cores:.2f} s available ({cores} cores x wall); "
            f"load average now {os.getloadavg()[0]:.1f}"
        )
