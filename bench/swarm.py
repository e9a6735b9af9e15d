"""The server alone at 50 to 2,000 hosts: a swarm of simulated agents in one process against a real server.

The simulated agents (one process of them: real long polls, heartbeats and result POSTs, every event succeeding at
once) are bench/simulated_agents.py's ``Swarm``.

Once other processes use at most ``QUIET_SHARE`` of the machine (waited for up to ``QUIET_WAIT_S``, as each
overhead round does: the scale scenario's 200 agents may still be winding down): one server with the largest size's
hosts configured (not local), an AllAtOnce deployment group per size (its first hosts), and the swarm as their
agents.

1. The fleet comes online size by size, the smallest first. With each size online, what an idle fleet that big costs:
   the server's CPU over one heartbeat period, every long poll parked, every agent beating every
   ``HEARTBEAT_SECONDS``.
2. One untimed deployment per size, so that every later one has a previous revision, as in the other scenarios.
3. ``rounds`` rounds (7 in ``make bench``) of one timed deployment of every size in turn, the order reversed every
   other round. While a size is timed, the hosts outside it skip their heartbeats (``Swarm.beat_only``): its
   deployment pays the background of a fleet its size, not the largest's.

Why one server and rounds: with a server per size, the sizes ran minutes apart, and the machine's drift over those
minutes read as growth. "Time per host flat" came out between 0.93x and 1.17x at 1,000 hosts in four runs of the
swarm alone, one after another.

The bench asks for each deployment's JSON once, after the swarm has answered every host's last event (a GET of a
2,000-host deployment is itself a measurable share of the server's CPU). Figures, each the median of the rounds with
their range: wall time (the server's ``ended_at - created_at``), the server's CPU per host-event (its CPU-time clock
before and after, divided by the events the swarm answered; heartbeats and that one GET included), time per host;
and the server's peak RSS. Right after, ``bench.floor`` measures what the same result POSTs cost a bare server (no
deploybot code), as many rounds with its sizes interleaved the same way, so the CPU figure and the time per host can
be read against the floor any server built this way has on this machine. Last, each size's time per host over the
smallest size's in the same round: flat is 1.00x, and the bare server's own ratio stands beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from bench import floor, phases
from bench.figures import Figure, median, spread
from bench.phases import memory_mib, stat_times
from bench.revisions import write_revision
from bench.server import APPLICATION, BenchError, BenchServer, free_port, host_names
from bench.settings import QUIET_SHARE, QUIET_WAIT_S, Settings
from bench.simulated_agents import HEARTBEAT_SECONDS, Swarm

SWARM_TARGET_HOSTS = 1000  # issue 19: 1,000 simulated hosts AllAtOnce in 10 s, server RSS 250 MiB
SWARM_TARGET_S = 10.0
CPU_PER_EVENT_TARGET_MS = 0.3
SERVER_RSS_TARGET_MIB = 250.0
FLAT = 1.0  # issue 19: time per host flat (not growing) from 50 to 1,000 hosts
FLOOR_NAMES = {"http": "bare aiohttp", "http+write": "bare aiohttp + 1 SQLite write"}
SETTLE_S = 0.3  # between two timed deployments: what the last one's end set off (its log, the pages) is done


def _raise_file_limit(needed: int) -> None:
    """Each simulated host holds up to two connections, and so does the server (which inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else min(needed, hard), hard)
        )


@dataclass(frozen=True, slots=True)
class SwarmRun:
    hosts: int
    created_at: float  # the server's, epoch seconds
    wall_s: float
    host_events: int  # events the swarm answered in the timed deployment
    server_events: int  # events the deployment's JSON shows (the same, unless an answer went missing)
    server_cpu_s: float
    swarm_cpu_s: float  # this process (the swarm's thread and the bench's): it shares the 2 cores with the server
    rss_mib: float
    peak_rss_mib: float
    online_s: float
    requests: int
    errors: int
    idle_cpu_share: float | None  # of one core, with every agent idle (``run_swarm``'s ``idle_s``); None: not measured

    @property
    def cpu_per_event_ms(self) -> float:
        return self.server_cpu_s / self.host_events * 1000 if self.host_events else float("nan")

    @property
    def per_host_ms(self) -> float:
        return self.wall_s / self.hosts * 1000

    @property
    def swarm_cpu_per_event_ms(self) -> float:
        return self.swarm_cpu_s / self.host_events * 1000 if self.host_events else float("nan")


def _wait_hosts_done(swarm: Swarm, server: BenchServer, deployment_id: str, hosts: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while swarm.counts.done[deployment_id] < hosts:
        if server.process is not None and server.process.poll() is not None:
            raise BenchError("deploybot serve exited:\n" + "".join(server.output[-30:]))
        if time.monotonic() > deadline:
            raise BenchError(
                f"{swarm.counts.done[deployment_id]} of {hosts} hosts done after {timeout} s "
                f"(swarm errors: {swarm.counts.errors}, last: {swarm.counts.last_error})"
            )
        time.sleep(0.02)


@contextlib.contextmanager
def _with_server_log(server: BenchServer) -> Iterator[None]:
    """A BenchError says what the server logged last (an internal error is explained there, not in the JSON)."""
    try:
        yield
    except BenchError as error:
        raise BenchError(f"{error}\nserver log:\n" + "".join(server.output[-15:])) from None


def size_environment(hosts: int) -> str:
    """The environment (and deployment group) of the swarm's ``hosts``-host deployments."""
    return f"hosts{hosts}"


def sizes_config(names: Sequence[str], sizes: Sequence[int]) -> str:
    """One application with an AllAtOnce deployment group per size (``size_environment``): the first ``size`` of
    ``names``, whose agents are the swarm's, not the server's to start."""
    hosts = "\n".join(f"  - {{name: {name}, tags: {{role: bench}}}}" for name in names)
    groups = "".join(
        f"""
      {size_environment(size)}:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {{hosts: [{", ".join(names[:size])}]}}
        load_balancer: none
        auto_rollback: {{enabled: false}}"""
        for size in sizes
    )
    return f"""server: {{data_dir: var}}
hosts:
{hosts}
applications:
  {APPLICATION}:
    platform: server
    environments: [{", ".join(size_environment(size) for size in sizes)}]
    deployment_groups:{groups}
"""


def run_swarm(
    workdir: Path,
    sizes: Sequence[int],
    *,
    runs: bool = True,
    rounds: int = 1,
    timeout: float = 600,
    idle_s: float = 0.0,
) -> dict[int, list[SwarmRun]]:
    """One server with the largest of ``sizes`` hosts configured, a deployment group per size (its first hosts), and
    the swarm as their agents: size -> its timed deployments' figures, in order.

    The fleet comes online size by size, the smallest first: how long it took to have that many online, and (given
    ``idle_s``) the server's CPU over that long with as many agents online and idle. Then one untimed deployment of
    each size, and ``rounds`` rounds of one timed deployment of every size, in turn, the order reversed every other
    round: the machine's drift over the minutes the rounds take weighs alike on every size, and a size's time per
    host can be read against the smallest's round by round."""
    sizes = sorted(set(sizes))
    _raise_file_limit(4 * sizes[-1] + 256)
    revision = write_revision(workdir / "revision", hooks=False)
    names = host_names(sizes[-1])
    with BenchServer(workdir / "server", sizes_config(names, sizes), hosts=names) as server:
        assert server.process is not None
        tokens: dict[str, str] = json.loads((server.data_dir / "agent-tokens.json").read_text())
        missing = set(names) - set(tokens)
        if missing:
            raise BenchError(f"no agent token for {len(missing)} hosts, e.g. {sorted(missing)[0]}")
        with Swarm(server.url, {}, runs=runs) as swarm, _with_server_log(server):
            online: dict[int, float] = {}
            idle: dict[int, float | None] = {}
            coming_online, before = 0.0, 0
            for size in sizes:
                started = time.monotonic()
                swarm.add({name: tokens[name] for name in names[before:size]})
                server.wait_agents_online(size, timeout=timeout)
                coming_online += time.monotonic() - started
                online[size], before = coming_online, size
                idle[size] = _idle_cpu_share(server, idle_s) if idle_s > 0 else None
            for size in sizes:  # every timed deployment then has a previous revision, as in the other scenarios
                _, warm_up = server.deploy(revision, environment=size_environment(size))
                _wait_hosts_done(swarm, server, warm_up, size, timeout)
                server.wait_final(warm_up, timeout=timeout, poll=0.5)
            measured: dict[int, list[SwarmRun]] = {size: [] for size in sizes}
            for index in range(rounds):
                for size in sizes if index % 2 == 0 else sizes[::-1]:
                    swarm.beat_only(names[:size])
                    run = _timed_deployment(
                        server, swarm, revision, size, timeout, online=online[size], idle=idle[size]
                    )
                    measured[size].append(run)
            swarm.beat_only(None)
            return measured


def _idle_cpu_share(server: BenchServer, seconds: float) -> float:
    """The share of one core the server used over ``seconds`` with nothing to deploy: its agents' heartbeats and
    parked long polls."""
    assert server.process is not None
    before, at = stat_times(server.process.pid)[0], time.monotonic()
    time.sleep(seconds)
    return (stat_times(server.process.pid)[0] - before) / (time.monotonic() - at)


def _timed_deployment(
    server: BenchServer,
    swarm: Swarm,
    revision: Path,
    hosts: int,
    timeout: float,
    *,
    online: float,
    idle: float | None,
) -> SwarmRun:
    """One deployment of every host, timed from the server's own record; its CPU and the swarm's from /proc.
    ``online`` and ``idle`` were measured once for the size; each of its runs carries them."""
    assert server.process is not None
    time.sleep(SETTLE_S)
    requests, errors = swarm.counts.requests, swarm.counts.errors
    cpu_before, own_before = stat_times(server.process.pid)[0], time.process_time()
    _, deployment_id = server.deploy(revision, environment=size_environment(hosts))
    _wait_hosts_done(swarm, server, deployment_id, hosts, timeout)
    doc = server.wait_final(deployment_id, timeout=timeout, poll=0.2)
    cpu, own = stat_times(server.process.pid)[0] - cpu_before, time.process_time() - own_before
    rss, peak = memory_mib(server.process.pid)
    return SwarmRun(
        hosts=hosts,
        created_at=float(doc["created_at"]),
        wall_s=float(doc["ended_at"]) - float(doc["created_at"]),
        host_events=swarm.counts.events[deployment_id],
        server_events=sum(len(target["events"]) for target in doc["targets"]),
        server_cpu_s=cpu,
        swarm_cpu_s=own,
        rss_mib=rss,
        peak_rss_mib=peak,
        online_s=online,
        requests=swarm.counts.requests - requests,
        errors=swarm.counts.errors - errors,
        idle_cpu_share=idle,
    )


def swarm_hosts_from_env(default: Sequence[int]) -> tuple[int, ...]:
    """BENCH_SWARM_HOSTS=50,200,1000,2000 picks the sizes (``make bench BENCH_SWARM_HOSTS=...``)."""
    text = os.environ.get("BENCH_SWARM_HOSTS", "").strip()
    if not text:
        return tuple(default)
    return tuple(int(part) for part in text.split(",") if part.strip())


def swarm(settings: Settings) -> list[Figure]:
    """The server alone at each of ``settings.swarm_hosts`` simulated hosts (module docstring)."""
    # What ran before (the scale scenario's 200 agents winding down) must not be timed as the server's own.
    others = phases.wait_quiet(QUIET_SHARE, within=QUIET_WAIT_S)
    if others > QUIET_SHARE:
        settings.console.print(f"  other processes still used {others:.0%} of the machine after {QUIET_WAIT_S:g} s")
    with settings.scenario_dir("swarm") as workdir:
        measured = run_swarm(workdir, settings.swarm_hosts, rounds=settings.swarm_rounds, idle_s=settings.swarm_idle_s)
        # Right after, the same hosts' result POSTs to a bare server, its sizes interleaved the same way.
        floors = floor.measure(workdir / "floor", list(measured), free_port, settings.swarm_rounds)
    sizes = {hosts: _Size(runs, floors[hosts]) for hosts, runs in measured.items()}
    for size in sizes.values():
        _show_size(settings.console, size)
    largest = sizes[max(sizes)]
    rss = _rss_figure(largest)
    settings.console.print(
        f"  the server, {largest.hosts} hosts configured: RSS {largest.runs[-1].rss_mib:.0f} MiB (peak {rss.value:.0f})"
    )
    figures = [figure for size in sizes.values() for figure in _size_figures(size)]
    return [*figures, rss, *_growth_figures(sizes)]


@dataclass(frozen=True, slots=True)
class _Size:
    """One size's timed deployments and floors; its figures are medians (and ranges) of the per-round lists below."""

    runs: Sequence[SwarmRun]
    floors: Mapping[str, Sequence[floor.Floor]]  # mode -> per round

    @property
    def hosts(self) -> int:
        return self.runs[0].hosts

    @property
    def wall_s(self) -> list[float]:
        return [run.wall_s for run in self.runs]

    @property
    def per_host_ms(self) -> list[float]:
        return [run.per_host_ms for run in self.runs]

    @property
    def cpu_per_event_ms(self) -> list[float]:
        return [run.cpu_per_event_ms for run in self.runs]

    @property
    def swarm_cpu_per_event_ms(self) -> list[float]:
        """The simulated agents' own: the same trivial work per event at every size."""
        return [run.swarm_cpu_per_event_ms for run in self.runs]

    @property
    def floor_cpu_ms(self) -> dict[str, list[float]]:
        return {mode: [f.cpu_per_request_ms for f in measured] for mode, measured in self.floors.items()}

    @property
    def floor_per_host_ms(self) -> dict[str, list[float]]:
        return {mode: [f.per_host_ms for f in measured] for mode, measured in self.floors.items()}


def _show_size(console: Console, size: _Size) -> None:
    """One size's deployments and floors, each figure a median with its range."""
    last, wall, per_host, cpu = size.runs[-1], size.wall_s, size.per_host_ms, size.cpu_per_event_ms
    console.print(
        f"  {size.hosts} simulated hosts, {len(size.runs)} deployments: {median(wall):.2f} s ({spread(wall, 's')}), "
        f"{median(per_host):.1f} ms/host ({spread(per_host, 'ms')}); server CPU per host-event "
        f"{median(cpu):.3f} ms ({spread(cpu, 'ms')}), the swarm's {median(size.swarm_cpu_per_event_ms):.3f} ms; "
        f"{median([run.requests for run in size.runs]):.0f} requests a deployment, "
        f"{sum(run.errors for run in size.runs)} errors; online in {last.online_s:.1f} s"
    )
    if last.idle_cpu_share is not None:
        console.print(f"  {size.hosts} idle agents: the server used {last.idle_cpu_share:.1%} of a core")
    for mode, cpu in size.floor_cpu_ms.items():
        per_host = size.floor_per_host_ms[mode]
        console.print(
            f"  floor ({mode}), {size.hosts} hosts x {floor.EVENTS_PER_HOST} result POSTs, {len(cpu)} rounds: "
            f"server CPU {median(cpu):.3f} ms each ({spread(cpu, 'ms')}), {median(per_host):.2f} ms/host "
            f"({spread(per_host, 'ms')})"
        )


def _size_figures(size: _Size) -> list[Figure]:
    hosts, target, runs = size.hosts, size.hosts == SWARM_TARGET_HOSTS, size.runs
    wall, per_host, cpu = size.wall_s, size.per_host_ms, size.cpu_per_event_ms
    each = f"median of {len(runs)} deployments"
    figures = [
        Figure(
            f"swarm {hosts} hosts AllAtOnce, server only",
            median(wall),
            "s",
            SWARM_TARGET_S if target else None,
            f"{runs[0].host_events} host-events; {each}, {spread(wall, 's')}",
        ),
        Figure(
            f"swarm {hosts}: server CPU per host-event",
            median(cpu),
            "ms",
            CPU_PER_EVENT_TARGET_MS,
            f"heartbeats included; {each}, {spread(cpu, 'ms')}",
        ),
        Figure(
            f"swarm {hosts}: time per host",
            median(per_host),
            "ms",
            None,
            f"{each}, {spread(per_host, 'ms')}; {FLOOR_NAMES['http']} {median(size.floor_per_host_ms['http']):.2f} ms",
        ),
    ]
    if runs[0].idle_cpu_share is not None:
        figures.append(
            Figure(
                f"swarm {hosts}: server CPU, agents idle",
                runs[0].idle_cpu_share * 100,
                "%",
                None,
                f"of one core, every agent online: heartbeats every {HEARTBEAT_SECONDS:g} s, polls parked",
            )
        )
    for mode, floor_cpu in size.floor_cpu_ms.items():
        figures.append(
            Figure(
                f"swarm {hosts}: floor, {FLOOR_NAMES[mode]}",
                median(floor_cpu),
                "ms",
                None,
                f"server CPU per result POST, no deploybot code; deploybot {median(cpu) / median(floor_cpu):.1f}x",
            )
        )
    return figures


def _rss_figure(largest: _Size) -> Figure:
    """The server's peak RSS, with every size's hosts configured and their agents online: the largest size's."""
    runs = largest.runs
    return Figure(
        f"swarm {largest.hosts}: server RSS (peak)",
        max(run.peak_rss_mib for run in runs),
        "MiB",
        SERVER_RSS_TARGET_MIB if largest.hosts >= SWARM_TARGET_HOSTS else None,
        f"{largest.hosts} hosts configured and online; now {runs[-1].rss_mib:.0f} MiB, after every deployment",
    )


def _growth_figures(sizes: Mapping[int, _Size]) -> list[Figure]:
    """Each size's time per host over the smallest size's in the same round, the median of the rounds with their
    range: flat is 1.00x (issue 19: not growing from 50 to 1,000 hosts). Beside it, the same for the bare floor (its
    sizes interleaved among themselves), which no server built this way can do better than, and for the server's CPU
    per host-event and the swarm's own: the swarm's work per event is the same at every size, so where its CPU grows
    as much as the server's, the machine is what costs more, not the server's work."""
    smallest = min(sizes)
    base = sizes[smallest]

    def grown(values: Callable[[_Size], list[float]], here: _Size) -> list[float]:
        return [value / base_value for value, base_value in zip(values(here), values(base), strict=True)]

    figures = []
    for hosts, here in sizes.items():
        if hosts == smallest:
            continue
        per_host = grown(lambda size: size.per_host_ms, here)
        bare = grown(lambda size: size.floor_per_host_ms["http"], here)
        server_cpu = grown(lambda size: size.cpu_per_event_ms, here)
        swarm_cpu = grown(lambda size: size.swarm_cpu_per_event_ms, here)
        figures.append(
            Figure(
                f"swarm {hosts}: time per host over {smallest} hosts'",
                median(per_host),
                "x",
                FLAT if hosts <= SWARM_TARGET_HOSTS else None,
                f"per round, {spread(per_host, 'x')}; {FLOOR_NAMES['http']}: {median(bare):.2f}x; "
                f"CPU per host-event: server {median(server_cpu):.2f}x, swarm {median(swarm_cpu):.2f}x",
            )
        )
    return figures
