"""Several deploybot replicas on one PostgreSQL: one owner per deployment group (a lease with a fencing token),
takeover when the owner dies, fencing when it only paused, and wake-ups across replicas.

The end-to-end tests run real ``deploybot serve`` processes on their own ports and data directories with one
``store.url``, real ``deploybot agent`` processes (not ``local: true`` hosts) behind a real HAProxy in front of the
replicas, and real hook scripts; the race test runs two in-process Deployers, each with its own replica id, on one
database. Agent tokens are read from the database when the replicas share them there (``agent_tokens``), else from
the first replica's ``agent-tokens.json``, which the others' data directories link to; the revision is uploaded to
every replica.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import engine_config, eventually, free_port
from e2e_support import DeploybotServer, statuses, why_not_succeeded, write_revision
from postgres_support import PostgresServer

from bot.assembly import assemble_deployer
from engine.agent.client import POLL_WAIT
from engine.core.leases import GROUP_WORK
from engine.core.requests import DeployRequest
from engine.runtime.deployer import Deployer
from engine.store.postgres import PostgresStore

HOOKED = ("BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService")


def replica_config(
    url: str, hosts: list[str], *, lease_seconds: float, deployment_config: str, watch: float = 0
) -> str:
    host_lines = "\n".join(f"  - {{name: {h}, local: false}}" for h in hosts)
    return f"""server: {{data_dir: var, lease_seconds: {lease_seconds}, revision_roots: [.]}}
store: {{url: "{url}"}}
hosts:
{host_lines}
applications:
  app:
    platform: server
    environments: [prod]
    deployment_groups:
      prod:
        deployment_config: {deployment_config}
        targets: {{hosts: [{", ".join(hosts)}]}}
        auto_rollback: {{enabled: false}}
        watch_minutes: {watch}
"""


def recording_revision(root: Path, *, gate_host: str | None = None) -> Path:
    """Every hook appends ``host event deployment`` to ``root/runs.log``; ``gate_host``'s BeforeInstall says it has
    started (``root/started``) and then waits for ``root/gate``."""
    line = f'echo "$DEPLOYBOT_HOST $LIFECYCLE_EVENT $DEPLOYMENT_ID" >> {root / "runs.log"}'
    hooks = {event: line for event in HOOKED}
    if gate_host is not None:
        hooks["BeforeInstall"] = (
            f'if [ "$DEPLOYBOT_HOST" = {gate_host} ]; then touch {root / "started"};'
            f" while [ ! -f {root / 'gate'} ]; do sleep 0.05; done; fi\n{line}"
        )
    return write_revision(root, "rev", hooks)


class HAProxyFront:
    """A real HAProxy in front of the replicas (round robin, /healthz checks), as an operator runs them."""

    def __init__(self, workdir: Path, backends: list[int]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        servers = "\n".join(f"    server r{i} 127.0.0.1:{port} check" for i, port in enumerate(backends))
        config = workdir / "haproxy.cfg"
        config.write_text(
            f"""global
    maxconn 512
defaults
    mode http
    timeout connect 500ms
    timeout client 120s
    timeout server 120s
    timeout check 500ms
    retries 3
    option redispatch
frontend replicas
    bind 127.0.0.1:{self.port}
    default_backend deploybot
backend deploybot
    balance roundrobin
    option httpchk GET /healthz
    default-server inter 300ms fall 2 rise 1
{servers}
"""
        )
        self.log = workdir / "haproxy.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(["haproxy", "-f", str(config), "-db"], stdout=out, stderr=subprocess.STDOUT)

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)


class Replicas:
    """Replicas on one database, their agents, and the database seen past them."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.servers: list[DeploybotServer] = []
        self.agents: list[subprocess.Popen[bytes]] = []
        self.front: HAProxyFront | None = None

    def start(self, count: int, text: str) -> list[DeploybotServer]:
        # One bootstrap API token for all: each replica registers the token of its data directory and revokes
        # any other bootstrap token in the database, so replicas with their own would revoke each other's.
        api_token = "dbt_" + secrets.token_urlsafe(32)
        for index in range(count):
            workdir = self.tmp_path / f"replica-{'abc'[index]}"
            workdir.mkdir()
            server = DeploybotServer(workdir, text)
            self.servers.append(server)
            server.data_dir.mkdir(mode=0o700)
            token_file = server.data_dir / "api-token"
            token_file.write_text(api_token + "\n")
            token_file.chmod(0o600)
            if index and (self.servers[0].data_dir / "agent-tokens.json").exists():
                # One set of agent tokens for all, when they are not in the database.
                (server.data_dir / "agent-tokens.json").symlink_to(self.servers[0].data_dir / "agent-tokens.json")
            server.start()
        return self.servers

    def put_in_front(self) -> str:
        self.front = HAProxyFront(self.tmp_path, [server.port for server in self.servers])
        return self.front.url

    def upload(self, revision: Path) -> str:
        named = {server.upload(revision, "app") for server in self.servers}
        assert len(named) == 1, named
        return named.pop()

    async def token(self, host: str) -> str:
        async with self.db() as conn:
            shared = await conn.fetchval("SELECT to_regclass('agent_tokens') IS NOT NULL")
            token = await conn.fetchval("SELECT token FROM agent_tokens WHERE host = $1", host) if shared else None
        if token is None:
            token = json.loads((self.servers[0].data_dir / "agent-tokens.json").read_text())[host]
        return str(token)

    async def run_agent(self, host: str, server_url: str) -> None:
        root = self.tmp_path / "hosts" / host
        root.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "bot", "agent", "--server", server_url, "--name", host]
        argv += ["--root", str(root), "--prefix", str(root / "fs")]
        env = {**os.environ, "DEPLOYBOT_AGENT_TOKEN": await self.token(host)}  # never on the command line
        with (root / "agent.log").open("ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.agents.append(process)

    @contextlib.asynccontextmanager
    async def db(self) -> AsyncIterator[Any]:
        conn = await asyncpg.connect(self.db_url)
        try:
            yield conn
        finally:
            await conn.close()

    async def lease_expiry(self, group: str = "app-prod") -> tuple[str, float]:
        """The group's owner, and when its lease runs out unless the owner renews it (epoch seconds)."""
        async with self.db() as conn:
            row = await conn.fetchrow("SELECT owner, expires_at FROM group_leases WHERE group_name = $1", group)
        return str(row["owner"]), float(row["expires_at"])

    async def lease(self, group: str = "app-prod") -> tuple[str, int] | None:
        async with self.db() as conn:
            row = await conn.fetchrow("SELECT owner, generation FROM group_leases WHERE group_name = $1", group)
        return None if row is None else (row["owner"], row["generation"])

    def server_of(self, owner: str) -> DeploybotServer:
        """The replica an owner id names (``host:port:random``)."""
        port = int(owner.split(":")[1])
        return next(server for server in self.servers if server.port == port)

    async def log_entries(self, deployment_id: str) -> list[dict[str, Any]]:
        async with self.db() as conn:
            rows = await conn.fetch("SELECT * FROM event_log WHERE deployment_id = $1 ORDER BY id", deployment_id)
        return [{**dict(row), "data": json.loads(row["data"]) if row["data"] else None} for row in rows]

    async def commands(self, deployment_id: str) -> list[dict[str, Any]]:
        async with self.db() as conn:
            rows = await conn.fetch("SELECT * FROM host_commands WHERE deployment_id = $1 ORDER BY id", deployment_id)
        return [dict(row) for row in rows]

    def runs(self) -> collections.Counter[tuple[str, str]]:
        lines = (self.tmp_path / "runs.log").read_text().splitlines()
        return collections.Counter((host, event) for host, event, _ in (line.split() for line in lines))

    def cleanup(self) -> None:
        for server in self.servers:
            if server.process is not None and server.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    server.process.send_signal(signal.SIGCONT)
            server.cleanup()
        for process in self.agents:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        if self.front is not None:
            self.front.close()


@pytest.fixture
def replicas(tmp_path: Path, postgres_server: PostgresServer) -> Iterator[Replicas]:
    started = Replicas(tmp_path, postgres_server.new_database())
    yield started
    started.cleanup()


def live(replicas: Replicas, *but: DeploybotServer) -> DeploybotServer:
    return next(server for server in replicas.servers if server not in but)


def assert_ran_once(replicas: Replicas, hosts: list[str]) -> None:
    assert replicas.runs() == collections.Counter({(host, event): 1 for host in hosts for event in HOOKED})


def assert_queued_once(commands: list[dict[str, Any]]) -> None:
    queued = collections.Counter((c["host"], c["event"]) for c in commands if c["status"] != "Cancelled")
    assert queued and set(queued.values()) == {1}, queued


# -- kill -9 the owner ------------------------------------------------------------------------------------------


async def test_killing_the_owner_mid_deployment_hands_it_to_another_replica_that_finishes_it(
    replicas: Replicas, tmp_path: Path
) -> None:
    hosts = [f"h{i}" for i in range(1, 7)]
    text = replica_config(
        replicas.db_url, hosts, lease_seconds=10, deployment_config="CodeDeployDefault.OneAtATime"
    )  # the default lease time
    replicas.start(3, text)
    front = replicas.put_in_front()
    revision = replicas.upload(recording_revision(tmp_path, gate_host="h3"))
    for host in hosts:
        await replicas.run_agent(host, front)
    first = replicas.servers[0]
    deployment = first.deploy("app", "prod", revision)["id"]

    await eventually(lambda: (tmp_path / "started").exists(), "h3's BeforeInstall is running")
    lease = await replicas.lease()
    assert lease is not None
    owner, generation = lease
    doomed = replicas.server_of(owner)
    killed_at = time.time()
    doomed.kill9()
    held_by, expiry = await replicas.lease_expiry()  # the dead owner's last renewal: nobody renews it any more
    assert held_by == owner  # it died holding the group
    (tmp_path / "gate").touch()  # h3 finishes while nobody owns the group: its result waits in the store

    survivor = live(replicas, doomed)
    doc = survivor.wait_final(deployment, timeout=120)
    assert doc["status"] == "Succeeded", why_not_succeeded(doc, *replicas.servers)
    assert set(statuses(doc).values()) == {"Succeeded"}

    new_owner, new_generation = await replicas.lease() or ("", 0)
    entries = await replicas.log_entries(deployment)
    resumed = [e for e in entries if e["kind"] == "deployment.resumed"]
    assert len(resumed) == 1 and resumed[0]["data"]["replica"] != owner, resumed
    assert new_generation > generation and new_owner != owner
    takeover = resumed[0]["at"] - killed_at
    print(f"\ntakeover: {takeover:.2f} s from kill -9 of {owner} to {resumed[0]['data']['replica']}'s first write")
    # Taken over only once the dead owner's lease had run out, never while it still held it; that it is taken over
    # at all is the deployment finishing above. How soon after the expiry: `make bench` (replicas).
    assert resumed[0]["at"] >= expiry

    assert_ran_once(replicas, hosts)
    assert_queued_once(await replicas.commands(deployment))
    kinds = [e["kind"] for e in entries]
    assert kinds[0] == "deployment.requested"
    assert kinds.count("deployment.finished") == 1 and kinds[-1] == "deployment.finished"
    assert all(e["status"] == "Succeeded" for t in doc["targets"] for e in t["events"])


# -- split brain -----------------------------------------------------------------------------------------------


async def test_an_owner_paused_past_its_lease_is_fenced_off_and_steps_down(replicas: Replicas, tmp_path: Path) -> None:
    hosts = ["h1", "h2"]
    text = replica_config(
        replicas.db_url, hosts, lease_seconds=2, deployment_config="CodeDeployDefault.AllAtOnce", watch=0.15
    )
    replicas.start(2, text)
    front = replicas.put_in_front()
    revision = replicas.upload(recording_revision(tmp_path))
    for host in hosts:
        await replicas.run_agent(host, front)
    deployment = replicas.servers[0].deploy("app", "prod", revision)["id"]

    # Every host done: the deployment waits out its 9 s watch on a timer of its owner's.
    replicas.servers[0].wait_for(deployment, lambda d: set(statuses(d).values()) == {"Succeeded"}, timeout=60)
    lease = await replicas.lease()
    assert lease is not None
    owner, generation = lease
    paused = replicas.server_of(owner)
    other = live(replicas, paused)
    assert paused.process is not None
    paused.process.send_signal(signal.SIGSTOP)
    try:
        doc = other.wait_final(deployment, timeout=60)  # taken over, resumed, its watch ended there
    finally:
        paused.process.send_signal(signal.SIGCONT)
    assert doc["status"] == "Succeeded", why_not_succeeded(doc, *replicas.servers)
    taken = await replicas.lease()
    assert taken is not None and taken[0] != owner and taken[1] > generation

    # The paused owner wakes with its watch timer long due and its renewal late: whichever reaches the database first
    # (the renewal, or the runner's write on the timer) is refused by the fencing token, and it steps down.
    stepped_down = "steps down from deployment group app-prod"
    await eventually(lambda: stepped_down in "".join(paused.output), "the owner steps down")
    said = "".join(paused.output)
    assert f"generation {generation}" in said, said
    print("\n" + next(line for line in paused.output if stepped_down in line).strip())
    entries = await replicas.log_entries(deployment)
    kinds = [e["kind"] for e in entries]
    assert kinds.count("deployment.finished") == 1, kinds  # the paused owner's own ending never got in
    assert [e["data"]["replica"] for e in entries if e["kind"] == "deployment.resumed"] == [taken[0]]
    assert_ran_once(replicas, hosts)
    assert_queued_once(await replicas.commands(deployment))


# -- work and wake-ups across replicas ---------------------------------------------------------------------------


async def test_a_deployment_started_through_a_non_owner_runs_on_the_owner_and_wakes_agents_polling_elsewhere(
    replicas: Replicas, tmp_path: Path
) -> None:
    hosts = ["h1", "h2"]
    text = replica_config(replicas.db_url, hosts, lease_seconds=10, deployment_config="CodeDeployDefault.OneAtATime")
    replicas.start(2, text)
    revision = replicas.upload(recording_revision(tmp_path, gate_host="h1"))
    first = replicas.servers[0].deploy("app", "prod", revision)["id"]
    lease = await replicas.lease()
    assert lease is not None
    owner_id, generation = lease
    owner = replicas.server_of(owner_id)
    other = live(replicas, owner)
    for host in hosts:  # every agent long-polls the replica that does not own the group
        await replicas.run_agent(host, other.url)
    await eventually(lambda: (tmp_path / "started").exists(), "h1's BeforeInstall is running")

    # Started through the other replica while the owner is busy with the group: stored, queued, left to the owner.
    second_revision = replicas.upload(write_revision(tmp_path, "rev-2", {"ValidateService": "exit 0"}))
    second = other.deploy("app", "prod", second_revision)["id"]
    assert other.deployment(second)["status"] == "Queued"

    (tmp_path / "gate").touch()
    assert other.wait_final(first, timeout=60)["status"] == "Succeeded"
    assert other.wait_final(second, timeout=60)["status"] == "Succeeded"
    assert await replicas.lease() == (owner_id, generation)  # one tenure ran both

    async def finished_logged() -> bool:  # a final status is stored before the end is logged (its wind-up)
        return "deployment.finished" in [e["kind"] for e in await replicas.log_entries(second)]

    await eventually(finished_logged, "the end of the second deployment logged")
    kinds = [e["kind"] for e in await replicas.log_entries(second)]
    assert "deployment.resumed" not in kinds and kinds.count("deployment.finished") == 1
    assert "took the lease of app-prod" not in "".join(other.output)

    # h2's agent sat in a long poll on the other replica while h1 ran: the owner queued its command, and the
    # other replica's poll was woken by the database's notification (a poll not woken would wait up to 25 s).
    h2_first = next(c for c in await replicas.commands(first) if c["host"] == "h2")
    pickup = h2_first["claimed_at"] - h2_first["created_at"]
    print(f"\npickup through a replica that does not own the deployment: {pickup * 1000:.1f} ms")
    # Not a speed limit (that is `make bench`): a poll no notification woke is answered empty when its wait runs out
    # and only the agent's next poll could claim the command, so a claim inside the first wait was a wake-up.
    assert pickup < POLL_WAIT, f"pickup took {pickup:.3f} s: the poll was not woken"


# -- two replicas racing ----------------------------------------------------------------------------------------

RACE_CONFIG = """
server: {data_dir: var, revision_roots: [.]}
store: {url: "%(url)s"}
hosts:
  - {name: r1}
  - {name: r2}
  - {name: r3}
applications:
  app:
    platform: server
    revision: rev
    environments: [prod]
    deployment_groups:
      prod:
        deployment_config: CodeDeployDefault.OneAtATime
        targets: {hosts: [r1, r2, r3]}
        auto_rollback: {enabled: false}
"""


class RacingAgents:
    """One task per host: each command is claimed through a random replica and reported through a random one."""

    def __init__(self, deployers: list[Deployer], hosts: list[str], rng: random.Random) -> None:
        self.deployers, self.rng = deployers, rng
        self.ran: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.tasks = [asyncio.ensure_future(self._agent(host)) for host in hosts]

    async def _agent(self, host: str) -> None:
        while True:
            command = await self.rng.choice(self.deployers).fleet.next_command(host, wait=0.2)
            if command is None:
                continue
            self.ran[(host, command["deployment_id"], command["event"])] += 1
            await asyncio.sleep(self.rng.uniform(0, 0.01))
            result = {"status": "Succeeded", "log_tail": ""}
            while True:  # an agent retries its report until a replica takes it
                try:
                    await self.rng.choice(self.deployers).fleet.report_result(host, command["id"], result)
                    break
                except Exception:
                    await asyncio.sleep(0.01)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_two_replicas_racing_for_one_group_never_both_dispatch(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    rng = random.Random(20261203)
    (tmp_path / "rev").mkdir()
    (tmp_path / "rev" / "appspec.yml").write_text("version: 0.0\nos: linux\nfiles: []\n")
    db_url = postgres_server.new_database()
    text = RACE_CONFIG % {"url": db_url}
    deployers = [
        await assemble_deployer(
            engine_config(text, tmp_path, lease_seconds=1.0), data_dir=tmp_path / f"var-{name}", replica_id=name
        )
        for name in ("replica-a", "replica-b")
    ]
    store = deployers[0].store
    agents = RacingAgents(deployers, ["r1", "r2", "r3"], rng)
    finished: list[str] = []
    takeovers = 0
    try:
        for round_ in range(30):
            through = rng.choice(deployers)
            started = await through.start(DeployRequest("app", "prod", actor="race", description=f"round {round_}"))
            deployment_id = started["id"]
            if rng.random() < 0.5:  # the owner pauses past its lease at a random moment: the other takes over
                await asyncio.sleep(rng.uniform(0, 0.05))
                conn = await asyncpg.connect(db_url)
                try:
                    await conn.execute("UPDATE group_leases SET expires_at = 0 WHERE group_name = 'app-prod'")
                    await conn.execute("SELECT pg_notify($1, 'app-prod')", GROUP_WORK)  # both hear the group is free
                finally:
                    await conn.close()

            async def ended(deployment_id: str = deployment_id) -> bool:
                row = await store.get_deployment(deployment_id)
                return row is not None and row["status"] in ("Succeeded", "Failed", "Stopped")

            await eventually(ended, f"round {round_} ends")
            finished.append(deployment_id)
            resumed = [
                e for e in await store.read_log(deployment_id=deployment_id) if e["kind"] == "deployment.resumed"
            ]
            takeovers += bool(resumed)
    finally:
        await agents.close()
        for deployer in deployers:
            await deployer.close()
    reopened = await PostgresStore.open(db_url)
    try:
        for deployment_id in finished:
            row = await reopened.get_deployment(deployment_id)
            assert row is not None and row["status"] == "Succeeded", row
            assert_queued_once(await reopened.list_commands(deployment_id=deployment_id))
    finally:
        await reopened.close()
    assert set(agents.ran.values()) == {1}, [key for key, n in agents.ran.items() if n > 1]  # each event ran once
    writers: dict[tuple[str, int], set[str]] = collections.defaultdict(set)
    for deployer in deployers:
        for tenure in deployer.ownership.calls:
            writers[tenure].add(deployer.replica_id)
    assert writers and all(len(names) == 1 for names in writers.values()), writers
    tenures = {name: sum(1 for names in writers.values() if name in names) for name in ("replica-a", "replica-b")}
    print(f"\n30 rounds: {len(writers)} tenures of app-prod, by replica {tenures}; {takeovers} taken over mid-way")
    assert takeovers > 0  # the race was run: some deployments changed hands


async def test_a_stop_asked_of_a_replica_that_does_not_drive_the_deployment_reaches_its_owner(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    (tmp_path / "rev").mkdir()
    (tmp_path / "rev" / "appspec.yml").write_text("version: 0.0\nos: linux\nfiles: []\n")
    text = RACE_CONFIG % {"url": postgres_server.new_database()}
    deployers = [
        await assemble_deployer(engine_config(text, tmp_path), data_dir=tmp_path / f"var-{name}", replica_id=name)
        for name in ("replica-a", "replica-b")
    ]
    try:
        started = await deployers[0].start(DeployRequest("app", "prod", actor="alice"))  # no agent ever answers
        owner = next(d for d in deployers if d.ownership.lease("app-prod") is not None)
        other = next(d for d in deployers if d is not owner)

        async def in_progress() -> bool:
            return (await other.get(started["id"]))["status"] == "InProgress"

        await eventually(in_progress, "the owner has dispatched the first event")
        stopped = await other.stop(started["id"], actor="bob")
        assert stopped["status"] == "Stopped", stopped
        assert stopped["error"]["code"] == "MANUAL_STOP"
        kinds = [e["kind"] for e in await other.event_log(started["id"])]
        assert kinds.count("deployment.stop_requested") == 1 and kinds.count("deployment.finished") == 1
    finally:
        for deployer in deployers:
            await deployer.close()


async def test_a_replica_that_hears_of_work_for_a_busy_owner_does_not_tell_it_again(
    tmp_path: Path, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica that cannot take a group tells its owner once, through the store. It hears its own word too (every
    replica listens); told again on hearing, the word would echo between it and the store for as long as the owner
    is busy, and one echo heard after the owner let the group go could start a needless tenure."""
    caplog.set_level(logging.DEBUG, logger="engine.runtime.deployer")
    for name in ("rev", "rev-2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "appspec.yml").write_text(f"version: 0.0\nos: linux\nfiles: []\n# {name}\n")
    db_url = postgres_server.new_database()
    text = RACE_CONFIG % {"url": db_url}
    owner, other = [
        await assemble_deployer(
            engine_config(text, tmp_path, lease_seconds=60.0), data_dir=tmp_path / f"var-{name}", replica_id=name
        )
        for name in ("replica-a", "replica-b")
    ]
    heard: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    listener = await asyncpg.connect(db_url)
    try:
        for channel in (GROUP_WORK, "test_marker"):
            await listener.add_listener(channel, lambda _c, _p, channel, payload: heard.put_nowait((channel, payload)))
        first = await owner.start(DeployRequest("app", "prod", actor="alice"))  # no agent answers: it stays in flight
        second = await other.start(DeployRequest("app", "prod", revision="rev-2", actor="bob"))
        assert second["status"] == "Queued"

        def looked() -> bool:
            return any("replica-b looked at deployment group app-prod" in r.getMessage() for r in caplog.records)

        await eventually(looked, "replica-b has acted on hearing its own word")
        await listener.execute("SELECT pg_notify('test_marker', 'end')")  # delivered after all said before it
        said = [await heard.get()]
        while said[-1] != ("test_marker", "end"):
            said.append(await heard.get())
        assert said == [(GROUP_WORK, "app-prod"), ("test_marker", "end")]

        # Not told again, the owner still starts the queued deployment when the one in flight ends.
        assert (await other.stop(first["id"], actor="bob"))["status"] == "Stopped"

        async def second_started() -> bool:
            return (await other.get(second["id"]))["status"] != "Queued"

        await eventually(second_started, "the owner starts the second deployment")
        assert other.ownership.lease("app-prod") is None and owner.ownership.lease("app-prod") is not None
    finally:
        await listener.close()
        for deployer in (owner, other):
            await deployer.close()


async def test_a_runner_whose_write_is_refused_steps_down_and_leaves_the_store_as_it_was(
    tmp_path: Path, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "rev").mkdir()
    (tmp_path / "rev" / "appspec.yml").write_text("version: 0.0\nos: linux\nfiles: []\n")
    db_url = postgres_server.new_database()
    config = engine_config(RACE_CONFIG % {"url": db_url}, tmp_path, lease_seconds=60.0)  # no renewal meanwhile
    deployer = await assemble_deployer(config, data_dir=tmp_path / "var", replica_id="replica-a")
    try:
        started = await deployer.start(DeployRequest("app", "prod", actor="alice"))
        command = await deployer.fleet.next_command("r1", wait=10)
        assert command is not None and command["deployment_id"] == started["id"]
        before = await deployer.store.list_target_events(started["id"])
        state_before = (await deployer.store.get_deployment(started["id"]))["state"]
        conn = await asyncpg.connect(db_url)
        try:  # another replica (not running here) took the group over, and has not written yet
            await conn.execute(
                "UPDATE group_leases SET owner = 'replica-z', generation = generation + 1 WHERE group_name = 'app-prod'"
            )
        finally:
            await conn.close()

        # The agent's result is recorded (any replica records results), and the runner's step on it is refused.
        await deployer.fleet.report_result("r1", command["id"], {"status": "Succeeded", "log_tail": ""})
        await eventually(lambda: deployer.queue.in_flight("app-prod") is None, "replica-a steps down")
        said = [r.getMessage() for r in caplog.records if "steps down from deployment group app-prod" in r.getMessage()]
        assert len(said) == 1 and f"a write of deployment {started['id']} was refused" in said[0], said
        assert await deployer.store.list_target_events(started["id"]) == before
        row = await deployer.store.get_deployment(started["id"])
        assert row["state"] == state_before and row["status"] == "InProgress"
        kinds = [e["kind"] for e in await deployer.event_log(started["id"])]
        assert "deployment.finished" not in kinds
        finished = await deployer.store.list_commands(deployment_id=started["id"], status="Succeeded")
        assert [c["id"] for c in finished] == [command["id"]]  # the agent's result is kept for the new owner
        assert deployer.ownership.lease("app-prod") is None
    finally:
        await deployer.close()
