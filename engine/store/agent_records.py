"""The agents themselves in the store: the ``agents`` table, one row per agent, what its last heartbeat said.

A record mixin of both stores like ``CommandRecords``. A batch of heartbeats is written with its hosts' claims read in
the same transaction (``record_heartbeats``): the fleet checks each claim against what its agent says it runs. On a
store that takes many rows in one statement (``SqlAccess._values``: PostgreSQL), a batch is one upsert per
``ROWS_PER_STATEMENT`` agents; SQLite runs one per heartbeat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.ports import AgentBeat
from engine.store.command_records import COMMAND_HEAD
from engine.store.statements import Change, Fetch, Program, Row, SqlAccess, chunks, in_clause, to_json

_AGENT_COLUMNS = ("name", "tags", "version", "last_seen", "state")
_ON_AGENT_CONFLICT = (
    " ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen,"
    " tags = COALESCE(excluded.tags, agents.tags), version = COALESCE(excluded.version, agents.version),"
    " state = COALESCE(excluded.state, agents.state)"
)
_UPSERT_AGENT = f"INSERT INTO agents ({', '.join(_AGENT_COLUMNS)}) VALUES (?, ?, ?, ?, ?)" + _ON_AGENT_CONFLICT


def _one_beat_per_agent(beats: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Heartbeat rows (``_AGENT_COLUMNS``, in the order they arrived) folded to one per agent, as the upserts one by
    one leave it: the last ``last_seen``, and of tags, version and state the last one given (a beat may leave one
    out). One statement may not upsert a row twice."""
    folded: dict[str, tuple[Any, ...]] = {}
    for name, tags, version, last_seen, state in beats:
        before = folded.get(name)
        if before is not None:
            tags = tags if tags is not None else before[1]
            version = version if version is not None else before[2]
            state = state if state is not None else before[4]
        folded[name] = (name, tags, version, last_seen, state)
    return list(folded.values())


class AgentRecords(SqlAccess):
    """Agent rows: a heartbeat's upsert (fields given as None keep their stored value), and their reads."""

    async def upsert_agent(
        self,
        name: str,
        *,
        last_seen: float,
        tags: Mapping[str, str] | None = None,
        version: str | None = None,
        state: str | None = None,
    ) -> None:
        """Record a heartbeat; fields given as None keep their stored value."""
        await self._change(_UPSERT_AGENT, (name, to_json(tags), version, last_seen, state))

    async def record_heartbeats(self, beats: Sequence[AgentBeat]) -> list[Row]:
        """Heartbeats of several agents in one transaction (each as ``upsert_agent``); the InProgress commands of
        their hosts without payload, oldest first: the claims the fleet checks against what each agent runs."""
        hosts = sorted({host for host, *_ in beats})
        # Sorted here, not by the SQL: with ORDER BY id, SQLite's planner may read every InProgress command (a
        # 1,000-host deployment's) in id order for each batch, where ``host_commands_in_progress`` finds these hosts'.
        claims = (
            f"SELECT {COMMAND_HEAD} FROM host_commands WHERE status = 'InProgress' AND {in_clause('host', len(hosts))}"
        )

        values = self._values()

        def record() -> Program[list[Row]]:
            # In host order (stable: a host's later beat still lands last), so that two replicas writing
            # overlapping batches lock the rows in one order and never deadlock.
            ordered = [
                (host, to_json(tags), version, last_seen, state)
                for host, last_seen, tags, version, state in sorted(beats, key=lambda beat: beat[0])
            ]
            if values is None:
                for row in ordered:
                    yield Change(_UPSERT_AGENT, row)
            else:  # an upsert per 500 agents, each agent once: what its beats one by one would leave
                for some in chunks(_one_beat_per_agent(ordered)):
                    table, params = values("agents", _AGENT_COLUMNS, some)
                    upsert = f"INSERT INTO agents ({', '.join(_AGENT_COLUMNS)}) SELECT * FROM {table} AS v"
                    yield Change(upsert + _ON_AGENT_CONFLICT, params)
            rows: list[Row] = yield Fetch("host_commands", claims, hosts)
            return sorted(rows, key=lambda row: int(row["id"]))

        return await self._transact(record)

    async def get_agent(self, name: str) -> Row | None:
        return await self._fetch_one("agents", "SELECT * FROM agents WHERE name = ?", (name,))

    async def get_agents(self, names: Sequence[str]) -> list[Row]:
        """One trip, however many names: a group's start checks all its hosts' agents (it read them one by one, a trip
        each, 1,000 at the start of a 1,000-host deployment). Chunked under SQLite's and asyncpg's parameter limits."""
        some = chunks(sorted(set(names)))
        reads = [Fetch("agents", f"SELECT * FROM agents WHERE {in_clause('name', len(c))}", tuple(c)) for c in some]
        return [row for rows in await self._fetch_all(reads) for row in rows] if reads else []

    async def list_agents(self) -> list[Row]:
        return await self._fetch("agents", "SELECT * FROM agents ORDER BY name")
