"""Replicas on one PostgreSQL: pickup latency through a replica that does not own the deployment, and deployments
per second across 3 replicas against 1 (many groups deploying at once).

Theory of operation: a throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl`` in a temp dir, as the ``postgres`` user
when run as root, like the tests'), one database per measurement, and real ``deploybot serve`` replicas on it, each in
its own directory (its own data directory and port) with one config file's content and one bootstrap API token. The
hosts' agents are bench/simulated_agents.py's (real HTTP, every event Succeeds at once), their tokens read from the
database the replicas share; each host's agent talks to one replica only.

- **deployments/s**: ``GROUPS`` applications of one group each (``HOSTS_PER_GROUP`` hosts), deployed all at once
  (the POSTs spread over the replicas in turn, the hosts' agents too), from the first POST to the last deployment's
  ``ended_at``; one untimed round first (every later one then has a previous install), then ``ROUNDS`` timed ones,
  median. With 1 replica and with 3, each on a fresh database.
- **pickup through a non-owner**: with 3 replicas, one more group whose only host's agent polls replica 3; each
  deployment is POSTed to replica 1, which takes the group's lease and drives it: POST to the ``started_at`` the
  agent reports for ApplicationStop. A run that replica 3 drove (its log says it started it) is left out: that
  pickup would be a local one.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.figures import Figure, median, percentile
from bench.revisions import write_revision
from bench.server import FINAL, BenchError, BenchServer, free_port
from bench.settings import Settings
from bench.simulated_agents import Swarm
from engine.bundles import build_bundle

GROUPS = 12
HOSTS_PER_GROUP = 2
ROUNDS = 3
PICKUP_GROUP = "pickup"
PICKUP_HOST = "pickup-1"


# -- a throwaway PostgreSQL ------------------------------------------------------------------------------------


def _bindir() -> Path:
    for candidate in (os.environ.get("PG_BINDIR", ""), *sorted(map(str, Path("/usr/lib/postgresql").glob("*/bin")))):
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found is None:
        raise BenchError("PostgreSQL is not installed (no initdb): run `make system-deps`")
    return Path(found).parent


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def postgres_cluster(workdir: Path) -> Iterator[tuple[Path, int]]:
    """(bindir, port) of a running cluster with trust auth for ``postgres`` on 127.0.0.1; removed afterwards."""
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="deploybot-bench-pg-", dir="/tmp"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        for path in (root, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]
    subprocess.run(_as_postgres([*initdb, "--locale=C"]), check=True, capture_output=True, timeout=120)
    port = free_port()
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=200"
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60"]
    subprocess.run(_as_postgres([*pg_ctl, "-o", options, "start"]), check=True, capture_output=True, timeout=90)
    try:
        yield bindir, port
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            subprocess.run(_as_postgres([*pg_ctl, "-m", "fast", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def new_database(bindir: Path, port: int, name: str) -> str:
    createdb = [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name]
    subprocess.run(createdb, check=True, capture_output=True, timeout=60)
    return f"postgresql://postgres@127.0.0.1:{port}/{name}"


# -- replicas --------------------------------------------------------------------------------------------------


def _config(url: str, groups: Sequence[str], hosts_per_group: int) -> str:
    hosts, apps = [], []
    for group in groups:
        for index in range(1, hosts_per_group + 1):
            hosts.append(f"  - {{name: {group}-{index}, tags: {{group: {group}}}}}")
        apps.append(
            f"  {group}:\n    platform: server\n    environments: [prod]\n    deployment_groups:\n      prod:\n"
            "        deployment_config: CodeDeployDefault.AllAtOnce\n"
            f"        targets: {{tags: {{group: {group}}}}}\n        load_balancer: none\n"
            "        auto_rollback: {enabled: false}"
        )
    return (
        f"server: {{data_dir: var}}\nstore:\n  url: {url}\nhosts:\n" + "\n".join(hosts) + "\napplications:\n"
        + "\n".join(apps) + "\n"
    )  # fmt: skip


@contextlib.contextmanager
def replicas(workdir: Path, config: str, count: int) -> Iterator[list[BenchServer]]:
    """``count`` replicas of ``config``, started one after the other (the first migrates the database), each with
    the same bootstrap API token (a replica retires the bootstrap tokens it is not given)."""
    token = "bench-" + secrets.token_urlsafe(16)
    servers: list[BenchServer] = []
    try:
        for index in range(count):
            server = BenchServer(workdir / f"replica-{index + 1}", config)
            server.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            (server.data_dir / "api-token").write_text(token)
            (server.data_dir / "api-token").chmod(0o600)
            servers.append(server)
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def _agent_tokens(url: str) -> dict[str, str]:
    import asyncio

    import asyncpg

    async def read() -> dict[str, str]:
        conn = await asyncpg.connect(url)
        try:
            return {row["host"]: row["token"] for row in await conn.fetch("SELECT host, token FROM agent_tokens")}
        finally:
            await conn.close()

    return asyncio.run(read())


@contextlib.contextmanager
def swarms(servers: Sequence[BenchServer], assignment: dict[str, int], tokens: dict[str, str]) -> Iterator[None]:
    """Each host's simulated agent on the replica ``assignment`` names."""
    with contextlib.ExitStack() as stack:
        for index, server in enumerate(servers):
            mine = {host: tokens[host] for host, replica in assignment.items() if replica == index}
            if mine:
                stack.enter_context(Swarm(server.url, mine))
        yield


def _upload(server: BenchServer, revision: Path, application: str) -> str:
    """``sha256:...`` of the revision's bundle, uploaded (for ``application``'s platform check) to ``server`` only."""
    built = build_bundle(revision, revision.parent / "bundle")
    headers = {"X-Deploybot-Source": str(revision), "X-Deploybot-Application": application}
    status, answer = server.api(
        "POST", "/revisions", built.path.read_bytes(), content_type="application/gzip", headers=headers
    )
    if status >= 300:
        raise BenchError(f"POST /revisions answered {status}: {answer}")
    return f"sha256:{answer['sha256']}"


def _deploy(server: BenchServer, application: str, revision: str) -> tuple[float, str]:
    t0 = time.time()
    status, answer = server.api("POST", "/deployments", {"application": application, "environment": "prod",
                                                          "revision": revision})  # fmt: skip
    if status != 201:
        raise BenchError(f"POST /deployments for {application} answered {status}: {answer}")
    return t0, str(answer["id"])


def _wait_all(server: BenchServer, ids: Sequence[str], timeout: float = 300) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    docs: dict[str, dict[str, Any]] = {}
    while len(docs) < len(ids):
        for deployment_id in ids:
            if deployment_id not in docs:
                status, doc = server.api("GET", f"/deployments/{deployment_id}")
                if status == 200 and doc["status"] in FINAL:
                    if doc["status"] != "Succeeded":
                        raise BenchError(f"{deployment_id} ended {doc['status']}: {doc.get('error')}")
                    docs[deployment_id] = doc
        if time.monotonic() > deadline:
            raise BenchError(f"{len(ids) - len(docs)} of {len(ids)} deployments not final after {timeout} s")
        time.sleep(0.1)
    return [docs[i] for i in ids]


def _round(servers: Sequence[BenchServer], groups: Sequence[str], revision: str) -> float:
    """Every group deployed at once (POSTs spread over the replicas); deployments per second."""
    started, ids = [], []
    for index, group in enumerate(groups):
        t0, deployment_id = _deploy(servers[index % len(servers)], group, revision)
        started.append(t0)
        ids.append(deployment_id)
    docs = _wait_all(servers[0], ids)
    return len(groups) / (max(float(d["ended_at"]) for d in docs) - min(started))


def throughput(workdir: Path, url: str, count: int) -> list[float]:
    """Deployments per second of ROUNDS timed rounds with ``count`` replicas."""
    groups = [f"g{index:02d}" for index in range(1, GROUPS + 1)]
    revision_dir = write_revision(workdir / "revision", hooks=False)
    with replicas(workdir, _config(url, groups, HOSTS_PER_GROUP), count) as servers:
        tokens = _agent_tokens(url)
        hosts = sorted(tokens)
        with swarms(servers, {host: index % count for index, host in enumerate(hosts)}, tokens):
            for index, server in enumerate(servers):  # each replica hears its own agents
                server.wait_agents_online(sum(1 for i in range(len(hosts)) if i % count == index), timeout=120)
            revision = _upload(servers[0], revision_dir, groups[0])
            _round(servers, groups, revision)  # untimed: every later round has a previous install
            return [_round(servers, groups, revision) for _ in range(ROUNDS)]


def pickup_through_non_owner(workdir: Path, url: str, runs: int) -> tuple[list[float], int]:
    """(pickup latencies in ms of the runs driven by another replica than the agent's, runs left out)."""
    revision_dir = write_revision(workdir / "revision", hooks=False)
    with replicas(workdir, _config(url, [PICKUP_GROUP], 1), 3) as servers:
        tokens = _agent_tokens(url)
        with swarms(servers, {PICKUP_HOST: 2}, tokens):
            servers[2].wait_agents_online(1, timeout=120)
            revision = _upload(servers[0], revision_dir, PICKUP_GROUP)
            _wait_all(servers[0], [_deploy(servers[0], PICKUP_GROUP, revision)[1]])
            latencies, left_out = [], 0
            for _ in range(runs):
                time.sleep(0.2)  # the agent is back in its idle long poll
                t0, deployment_id = _deploy(servers[0], PICKUP_GROUP, revision)
                doc = _wait_all(servers[0], [deployment_id])[0]
                if _driver(servers, deployment_id) in (2, None):
                    left_out += 1
                    continue
                first = doc["targets"][0]["events"][0]
                latencies.append((float(first["started_at"]) - t0) * 1000)
            return latencies, left_out


def _driver(servers: Sequence[BenchServer], deployment_id: str) -> int | None:
    """Which replica ran the deployment (its log says ``deployment ID started``); None when none says so."""
    said = f"deployment {deployment_id} started"
    return next((index for index, server in enumerate(servers) if any(said in line for line in server.output)), None)


def _range(values: Sequence[float]) -> str:
    return f"range {min(values):.1f}-{max(values):.1f}/s"


def replicas_scenario(settings: Settings) -> list[Figure]:
    console = settings.console
    with settings.scenario_dir("replicas") as workdir, postgres_cluster(workdir) as (bindir, port):
        one = throughput(workdir / "one", new_database(bindir, port, "bench_one"), 1)
        three = throughput(workdir / "three", new_database(bindir, port, "bench_three"), 3)
        runs = min(settings.pickup_runs, 20)
        latencies, left_out = pickup_through_non_owner(
            workdir / "pickup", new_database(bindir, port, "bench_pickup"), runs
        )
    console.print(
        f"  deployments/s, 1 replica: {' '.join(f'{v:.2f}' for v in one)}; 3: {' '.join(f'{v:.2f}' for v in three)}"
    )
    figures = [
        Figure(
            "replicas: deployments/s, 1 replica", median(one), "/s", None, f"{GROUPS} groups at once, {_range(one)}"
        ),
        Figure(
            "replicas: deployments/s, 3 replicas",
            median(three),
            "/s",
            None,
            f"{GROUPS} groups at once, {_range(three)}",
        ),
        Figure(
            "replicas: 3 vs 1", median(three) / median(one), "x", None, "deployments/s ratio (same machine: 2 cores)"
        ),
    ]
    if latencies:
        console.print(f"  pickup through a non-owner (ms): {' '.join(f'{v:.1f}' for v in latencies)}")
        note = f"{len(latencies)} deployments" + (
            f", {left_out} driven by the agent's own replica left out" if left_out else ""
        )
        figures += [
            Figure("replicas: pickup via non-owner, median", median(latencies), "ms", None, note),
            Figure("replicas: pickup via non-owner, p90", percentile(latencies, 90), "ms", None, note),
        ]
    else:
        figures.append(
            Figure(
                "replicas: pickup via non-owner", float("nan"), "ms", None, "n/a: no run was driven by another replica"
            )
        )
    return figures
