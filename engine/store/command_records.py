"""The agents' work queue in the store: ``host_commands`` (the agents' own rows are agent_records.py's).

A record mixin of both stores (engine/store/sqlite.py, engine/store/postgres.py) like ``ReleaseRecords``: the SQL of
the CommandQueue port (engine/ports.py) lives here, its agents' rows in agent_records.py. A command is Pending until
a host claims it (InProgress), then Succeeded, Failed or Cancelled; a host's run of events is its Pending commands
of one deployment after the one it holds, claimed one by one in the transaction that records the previous result. A
run's commands share one spec (``payload``), stored on its first command alone: the others name that one
(``run_head``), and every read that returns a command's payload (a claim, ``get_command``, ``list_commands``) gives
each its run's.

The transactions that read and then write are programs (engine/store/statements.py): queueing serializes on the
deployment (``Serialize``) before it looks for a command already there, so two servers dispatching the same event
queue it once; a claim takes the oldest Pending command with ``_row_lock`` (PostgreSQL: ``FOR UPDATE SKIP LOCKED``)
and re-checks that it is still Pending, so no command is handed out twice.

Where a write touches many rows (a burst of results, a step's runs and its claims for parked polls), a store that
takes many rows in one statement (``SqlAccess._values``: PostgreSQL, where each statement is a round trip) writes
them by one statement per ``ROWS_PER_STATEMENT``; SQLite runs a statement per row, the same rules either way.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.core.leases import COMMANDS_QUEUED, RESULTS_RECORDED
from engine.ports import CommandReport, FinishedReport, QueuedRun, StepWrite
from engine.store.deployment_records import step_program
from engine.store.statements import (
    Change,
    Fetch,
    Notify,
    Program,
    Row,
    Serialize,
    SqlAccess,
    ValuesTable,
    chunks,
    in_clause,
    placeholders,
    to_json,
    unfenced,
    where_clause,
)

FINAL_COMMAND_STATUSES = frozenset({"Succeeded", "Failed", "Cancelled"})
OPEN_COMMAND_STATUSES = ("Pending", "InProgress")
COMMAND_STATUSES = frozenset({*OPEN_COMMAND_STATUSES, *FINAL_COMMAND_STATUSES})
COMMAND_HEAD = "id, host, deployment_id, event, status, created_at, claimed_at, finished_at"
"""A command's columns but its payload and result (what never changes, and its status and times)."""
# The indexes (migration 0013): a host's commands of one deployment through ``host_commands_by_deployment``
# (deployment, host), exactly those rows however many deployments the host had before; its open ones through
# ``host_commands_pending`` and ``host_commands_in_progress`` (host, id), partial on their status, which every query
# meant to use one names as a literal (``status = 'Pending'``): SQLite uses a partial index only for a term it can
# match, never for a bound parameter.
_OF_DEPLOYMENT = "deployment_id = ?"
_LATEST_COMMAND = (
    f"SELECT {COMMAND_HEAD}, result FROM host_commands"
    f" WHERE host = ? AND {_OF_DEPLOYMENT} AND event = ? AND status != 'Cancelled' ORDER BY id DESC LIMIT 1"
)
# The events a host already has a command for in a deployment (Cancelled ones aside): read once per queued run,
# instead of once per event of it, and the full row of its first event only when that one is there.
_EVENTS_QUEUED = f"SELECT event FROM host_commands WHERE host = ? AND {_OF_DEPLOYMENT} AND status != 'Cancelled'"

_INSERT_COMMAND = (
    f"INSERT INTO host_commands (host, deployment_id, event, payload, created_at) VALUES ({placeholders(5)})"
)
# A run's commands share its first command's payload (the deployment's spec): the first keeps it, the others name
# the first in ``run_head`` and have none (migration 0014), so a claim or a finish rewrites a row without it.
_INSERT_RUN_HEAD = _INSERT_COMMAND + " RETURNING id"
_INSERT_IN_RUN = (
    f"INSERT INTO host_commands (host, deployment_id, event, created_at, run_head) VALUES ({placeholders(5)})"
)
# Every Pending command of the host after the one claimed (``host_commands_pending``): the rest of its run, and
# whether anything else waits behind it.
_PENDING_AFTER = (
    "SELECT id, event, deployment_id FROM host_commands WHERE host = ? AND status = 'Pending' AND id > ? ORDER BY id"
)


def _queue_one_by_one(runs: Sequence[QueuedRun], at: float) -> Program[tuple[list[Row | None], set[str]]]:
    """``enqueue_command_runs``'s queueing, a run at a time: what its host has queued read, then its commands
    inserted one by one. A run whose first event is there queues nothing, and no event is queued behind one already
    there. Per run, the command of its first event that was there (None: the run was queued now); and the hosts that
    got a run."""
    existing: list[Row | None] = []
    queued_hosts: set[str] = set()
    last_payload: object = object()
    encoded: str | None = None
    for host, deployment_id, events, payload in runs:
        there = {row["event"] for row in (yield Fetch("host_commands", _EVENTS_QUEUED, (host, deployment_id)))}
        if events[0] in there:
            existing.append((yield Fetch("host_commands", _LATEST_COMMAND, (host, deployment_id, events[0])))[0])
            continue
        existing.append(None)
        if payload is not last_payload:  # the runs of one step share their spec: encoded once
            last_payload, encoded = payload, to_json(payload)
        head: int | None = None
        for event in _before_any_of(events, there):
            if head is not None:
                yield Change(_INSERT_IN_RUN, (host, deployment_id, event, at, head))
                continue
            inserted = yield Fetch("host_commands", _INSERT_RUN_HEAD, (host, deployment_id, event, encoded, at))
            head = inserted[0]["id"]
        queued_hosts.add(host)
    return existing, queued_hosts


def _queue_together(
    values: ValuesTable, runs: Sequence[QueuedRun], at: float
) -> Program[tuple[list[Row | None], set[str]]]:
    """``enqueue_command_runs``'s queueing on a store that takes many rows in one statement, for runs of distinct
    hosts: what each host has queued read by one statement, the runs' first commands inserted by another, then their
    second ones by a third, and so on (a run's commands must be in id order, which one statement's rows are not
    promised to be). Per ``ROWS_PER_STATEMENT`` rows. The same rules as one run at a time: a run whose first event
    is there queues nothing (that command is returned), and no event is queued behind one already there."""
    there: dict[tuple[str, str], set[str]] = {}
    pairs: list[tuple[str, str]] = [(host, deployment_id) for host, deployment_id, _, _ in runs]
    for some in chunks(pairs):
        table, params = values("host_commands", ("host", "deployment_id"), some)
        sql = (
            f"SELECT c.host, c.deployment_id, c.event FROM host_commands AS c JOIN {table} AS v"
            " ON c.deployment_id = v.deployment_id AND c.host = v.host WHERE c.status != 'Cancelled'"
        )
        for row in (yield Fetch("host_commands", sql, params)):
            there.setdefault((row["host"], row["deployment_id"]), set()).add(row["event"])
    existing: list[Row | None] = []
    queued: list[tuple[str, str, list[str], str | None]] = []
    encoded: dict[int, str | None] = {}  # the runs of one step share their spec: encoded once
    for host, deployment_id, events, payload in runs:
        already = there.get((host, deployment_id), set())
        if events[0] in already:
            existing.append((yield Fetch("host_commands", _LATEST_COMMAND, (host, deployment_id, events[0])))[0])
            continue
        existing.append(None)
        if id(payload) not in encoded:
            encoded[id(payload)] = to_json(payload)
        queued.append((host, deployment_id, _before_any_of(events, already), encoded[id(payload)]))
    firsts = [(host, deployment_id, events[0], spec, at) for host, deployment_id, events, spec in queued]
    inserted = yield from _inserted(values, ("host", "deployment_id", "event", "payload", "created_at"), firsts)
    heads = {(row["host"], row["deployment_id"]): row["id"] for row in inserted}
    for place in range(1, max((len(events) for _, _, events, _ in queued), default=0)):
        later = [
            (host, deployment_id, events[place], at, heads[(host, deployment_id)])
            for host, deployment_id, events, _ in queued
            if place < len(events)
        ]
        yield from _inserted(values, ("host", "deployment_id", "event", "created_at", "run_head"), later)
    return existing, {host for host, _, _, _ in queued}


def _inserted(values: ValuesTable, columns: tuple[str, ...], rows: Sequence[Sequence[Any]]) -> Program[list[Row]]:
    """``rows`` of ``columns`` inserted into ``host_commands``, by a statement per ``ROWS_PER_STATEMENT``; each
    one's id, host and deployment."""
    inserted: list[Row] = []
    for some in chunks(rows):
        table, params = values("host_commands", columns, some)
        sql = (
            f"INSERT INTO host_commands ({', '.join(columns)}) SELECT * FROM {table} AS v"
            " RETURNING id, host, deployment_id"
        )
        inserted += yield Fetch("host_commands", sql, params)
    return inserted


def _before_any_of(events: Sequence[str], there: set[str]) -> list[str]:
    """The events of a run up to the first one already there: never queue an event behind one already there
    (commands run in id order)."""
    ahead: list[str] = []
    for event in events:
        if event in there:
            break
        ahead.append(event)
    return ahead


def _claim_sql(row_lock: str) -> str:
    """Claim the host's oldest Pending command; ``row_lock`` as ``SqlAccess._row_lock``. The outer ``status``
    test re-checks the row once it is locked (PostgreSQL re-reads a row another transaction changed meanwhile)."""
    return (
        "UPDATE host_commands SET status = 'InProgress', claimed_at = ? WHERE id = ("
        f" SELECT id FROM host_commands WHERE host = ? AND status = 'Pending' ORDER BY id LIMIT 1{row_lock}"
        ") AND status = 'Pending' RETURNING *"
    )


def _claim_oldest(row_lock: str, host: str, at: float, *, with_run: bool) -> Program[Row | None]:
    """Claim the host's oldest Pending command (inside a program); with ``then`` and ``run_ends_queue`` when
    ``with_run`` (see ``claim_next_command``)."""
    rows = yield Fetch("host_commands", _claim_sql(row_lock), (at, host))
    if not rows:
        return None
    # A run's later command handed out by itself (its claimant was gone) carries its run's payload.
    row: Row = (yield from _with_payloads_read(rows))[0]
    if with_run:
        _add_rest_of_run(row, (yield Fetch("host_commands", _PENDING_AFTER, (host, row["id"]))))
    return row


def _claim_oldest_one_by_one(row_lock: str, hosts: Mapping[str, bool], at: float) -> Program[dict[str, Row]]:
    """``_claim_oldest`` for each of ``hosts`` (with its run when its value is True), a statement or two per host;
    the rows claimed, by host."""
    claimed: dict[str, Row] = {}
    for host, with_run in hosts.items():
        row = yield from _claim_oldest(row_lock, host, at, with_run=with_run)
        if row is not None:
            claimed[host] = row
    return claimed


def _claim_oldest_of_each(
    values: ValuesTable, row_lock: str, hosts: Mapping[str, bool], at: float
) -> Program[dict[str, Row]]:
    """``_claim_oldest`` for each of ``hosts`` (with its run when its value is True), on a store that takes many rows
    in one statement: the claims by one statement, the rest of the claimed runs read by another, and any run heads'
    payloads by a third, per ``ROWS_PER_STATEMENT`` hosts; the rows a claim per host would give, by host.

    Each host's oldest Pending command is locked as ``_claim_sql`` locks it (PostgreSQL: ``SKIP LOCKED``: a row
    another transaction holds is passed over, so a step never waits on another replica's claims) and re-checked.

    The picks are a ``MATERIALIZED`` CTE, made once before any row is claimed. Joined to the UPDATE as a subquery,
    they were the inner side of a nested loop once the table had statistics (an ``ANALYZE``, which autovacuum runs):
    picked again for each Pending row, after the UPDATE had claimed the oldest, so each pick took the next one, and
    a host's whole run was claimed and its last command handed to its poll."""
    rows: list[Row] = []
    for some in chunks(sorted((host,) for host in hosts)):
        table, params = values("host_commands", ("host",), some)
        sql = (
            f"WITH picked AS MATERIALIZED (SELECT oldest.id FROM {table} AS v CROSS JOIN LATERAL ("
            f"SELECT id FROM host_commands WHERE host = v.host AND status = 'Pending' ORDER BY id LIMIT 1{row_lock}"
            ") AS oldest) UPDATE host_commands SET status = 'InProgress', claimed_at = ? FROM picked"
            " WHERE host_commands.id = picked.id AND host_commands.status = 'Pending' RETURNING host_commands.*"
        )
        rows += yield Fetch("host_commands", sql, (*params, at))
    claimed = {row["host"]: row for row in (yield from _with_payloads_read(rows))}
    with_run = sorted(host for host in claimed if hosts[host])
    pending: dict[str, list[Row]] = {host: [] for host in with_run}
    for some in chunks([(host,) for host in with_run]):
        table, params = values("host_commands", ("host",), some)
        sql = (
            f"SELECT c.id, c.event, c.deployment_id, c.host FROM host_commands AS c JOIN {table} AS v"
            " ON c.host = v.host WHERE c.status = 'Pending' ORDER BY c.host, c.id"
        )
        for row in (yield Fetch("host_commands", sql, tuple(params))):
            pending[row["host"]].append(row)
    for host in with_run:
        row = claimed[host]
        _add_rest_of_run(row, [after for after in pending[host] if after["id"] > row["id"]])
    return claimed


def _add_rest_of_run(row: Row, pending_after: Sequence[Row]) -> None:
    """``then`` and ``run_ends_queue`` of a claimed ``row`` (``claim_next_command``), from its host's Pending commands
    after it, in id order."""
    row["then"] = [
        {"id": r["id"], "event": r["event"]} for r in pending_after if r["deployment_id"] == row["deployment_id"]
    ]
    row["run_ends_queue"] = len(row["then"]) == len(pending_after)


def _cancel_rest_of_run(host: str, deployment_id: str, at: float) -> Change:
    """A host's event failed: its Pending commands of that deployment (the rest of its run) will never be asked
    for. The machine keeps one event per target outstanding, so nothing else of that host and deployment waits."""
    return Change(
        f"UPDATE host_commands SET status = 'Cancelled', finished_at = ? WHERE host = ? AND {_OF_DEPLOYMENT}"
        " AND status = 'Pending'",
        (at, host, deployment_id),
    )


@dataclass(frozen=True)
class _Update:
    """An UPDATE of commands: ``stamp`` set to the time, ``fixed`` (SQL, or none) as it is, the ``copied`` columns
    from each row, on the command whose ``keys`` (``id`` first) match the row's, if its status is one of
    ``statuses``. A row is its keys, then its copied values. Run a row per statement (``one``, ``params``), or joined
    to a table of rows (``many``), which returns the ids of the commands it changed."""

    stamp: str
    fixed: str
    copied: tuple[str, ...]
    keys: tuple[str, ...]
    statuses: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.keys, *self.copied)

    @functools.cached_property
    def one(self) -> str:
        sets, where = self._sets(["?"] * len(self.copied)), " AND ".join(f"{key} = ?" for key in self.keys)
        return f"UPDATE host_commands SET {sets} WHERE {where} AND {_status_is(self.statuses)}"

    def params(self, at: float, row: Sequence[Any]) -> tuple[Any, ...]:
        """``one``'s parameters for ``row``: the SET clause's come before the WHERE clause's."""
        return (at, *row[len(self.keys) :], *row[: len(self.keys)])

    def many(self, table: str) -> str:
        where = " AND ".join(f"host_commands.{key} = v.{key}" for key in self.keys)
        sets = self._sets([f"v.{column}" for column in self.copied])
        return (
            f"UPDATE host_commands SET {sets} FROM {table} AS v WHERE {where}"
            f" AND host_commands.{_status_is(self.statuses)} RETURNING host_commands.id"
        )

    def _sets(self, sources: list[str]) -> str:
        """The SET clause, each copied column from its source (``?``, or the joined table's column)."""
        copied = [f"{column} = {source}" for column, source in zip(self.copied, sources, strict=True)]
        return ", ".join([f"{self.stamp} = ?", *([self.fixed] if self.fixed else []), *copied])


_FINISH = _Update("finished_at", "", ("status", "result"), ("id", "host"), OPEN_COMMAND_STATUSES)
"""A report's command finished (id, host; status, result), if it is still open on that host."""
_CLAIM = _Update("claimed_at", "status = 'InProgress'", (), ("id", "host", "deployment_id"), ("Pending",))
"""The next command of a report's run claimed for its agent (id, host, deployment), if it is still Pending."""


def _updated(
    values: ValuesTable | None, update: _Update, rows: Sequence[tuple[Any, ...]], at: float
) -> Program[list[int]]:
    """The ids of the commands ``update`` changed, of ``rows``: a statement per row, or on a store that takes many
    rows in one statement (``SqlAccess._values``), one per ``ROWS_PER_STATEMENT``."""
    changed: list[int] = []
    if values is None:
        for row in rows:
            if (yield Change(update.one, update.params(at, row))) == 1:
                changed.append(row[0])
        return changed
    # In id order: two replicas finishing overlapping batches lock the rows in one order and never deadlock.
    for chunk in chunks(sorted(rows, key=lambda row: int(row[0]))):
        table, params = values("host_commands", update.columns, chunk)
        changed += [done["id"] for done in (yield Fetch("host_commands", update.many(table), (at, *params)))]
    return changed


def _deployment_of(command: Row | None) -> str:
    assert command is not None  # only commands found are claimed for
    return str(command["deployment_id"])


def _status_is(statuses: Sequence[str]) -> str:
    """A condition that ``status`` is one of ``statuses``, written with literals: a single open status is then matched
    to its partial index, which a bound parameter never is. A status the schema does not know is a caller's typo."""
    if unknown := sorted(set(statuses) - COMMAND_STATUSES):
        raise ValueError(f"unknown command statuses: {', '.join(unknown)}")
    literals = [f"'{status}'" for status in statuses]
    if len(literals) == 1:
        return f"status = {literals[0]}"
    return f"status IN ({', '.join(literals)})" if literals else "1 = 0"


def _run_head_reads(rows: Sequence[Row]) -> list[Fetch]:
    """The reads of the payloads of the run heads some of ``rows`` take theirs from and that are not among them, a
    few hundred heads a read."""
    present = {row["id"] for row in rows}
    missing = sorted({row["run_head"] for row in rows if row.get("run_head") is not None} - present)
    return [
        Fetch("host_commands", f"SELECT id, payload FROM host_commands WHERE {in_clause('id', len(some))}", some)
        for some in chunks(missing)
    ]


def _with_payloads_read(rows: list[Row]) -> Program[list[Row]]:
    """``_with_payloads``, inside a program, the run heads not among ``rows`` read first."""
    heads: list[Row] = []
    for read in _run_head_reads(rows):
        heads += yield read
    return _with_payloads(rows, heads)


def _with_payloads(rows: list[Row], heads: Sequence[Row]) -> list[Row]:
    """``rows`` (of ``SELECT *``) as callers know them: a run's later command with its run head's payload (found
    among ``rows`` or ``heads``), and no ``run_head``."""
    payloads = {row["id"]: row.get("payload") for row in [*heads, *rows] if row.get("run_head") is None}
    for row in rows:
        head = row.pop("run_head", None)
        if head is not None:
            row["payload"] = payloads.get(head)
    return rows


def _command_id(row: Row) -> int:
    return int(row["id"])


def _queue_key(deployment_id: str) -> str:
    """What queueing a deployment's commands serializes on (``Serialize``)."""
    return f"host_commands:{deployment_id}"


class CommandRecords(SqlAccess):
    """Host commands (queued, claimed, finished, cancelled) and agent rows."""

    # -- host commands (the agents' work queue)

    async def enqueue_command(
        self, host: str, deployment_id: str, event: str, payload: Mapping[str, Any] | None, *, at: float
    ) -> int:
        return (await self._insert(_INSERT_COMMAND, [(host, deployment_id, event, to_json(payload), at)]))[0]

    async def enqueue_command_once(
        self, host: str, deployment_id: str, event: str, payload: Mapping[str, Any] | None, *, at: float
    ) -> Row | None:
        """``enqueue_command`` unless a command for the event is already there (then that one, and nothing is queued): a
        re-issued dispatch after a restart costs one transaction, not a read and a write."""

        def enqueue() -> Program[Row | None]:
            yield Serialize([_queue_key(deployment_id)])
            existing = yield Fetch("host_commands", _LATEST_COMMAND, (host, deployment_id, event))
            if not existing:
                yield Change(_INSERT_COMMAND, (host, deployment_id, event, to_json(payload), at))
                yield Notify(COMMANDS_QUEUED, [host])
            return existing[0] if existing else None

        return await self._transact(enqueue)

    async def enqueue_command_runs(
        self,
        runs: Sequence[QueuedRun],
        *,
        at: float,
        hand_to: Mapping[str, bool] | None = None,
        step: StepWrite | None = None,
    ) -> tuple[list[Row | None], dict[str, Row]]:
        """Queue each run of a host's consecutive events, all in one transaction; ``enqueue_command_once`` per run.
        ``step``, the deployment's step that decided on these runs, is written first in that transaction.

        A run whose first event already has a command queues nothing (a re-issued dispatch: its later events were
        queued with it, or will be dispatched as the machine reaches them), and that command comes back in the first
        list, in the order of ``runs`` (None for a run queued now). For each host of ``hand_to`` (a long poll waits
        for it), the oldest Pending command is claimed in the same transaction and returned by host, with the
        ``then`` and ``run_ends_queue`` of ``claim_next_command`` when its value is True.
        """
        row_lock = self._row_lock
        values = self._values()
        written_first = step_program(self._columns, step, values) if step is not None else None
        distinct = len({(host, deployment_id) for host, deployment_id, _, _ in runs}) == len(runs)
        queue_values = values if distinct else None  # a host twice: each of its runs reads what the one before queued

        def enqueue() -> Program[tuple[list[Row | None], dict[str, Row]]]:
            yield Serialize(sorted({_queue_key(deployment_id) for _, deployment_id, _, _ in runs}))
            if written_first is not None:
                yield from written_first()
            if queue_values is not None:
                existing, queued_hosts = yield from _queue_together(queue_values, runs, at)
            else:
                existing, queued_hosts = yield from _queue_one_by_one(runs, at)
            if queued_hosts:
                yield Notify(COMMANDS_QUEUED, sorted(queued_hosts))
            handed = {host: with_run for host, with_run in (hand_to or {}).items() if host in queued_hosts}
            if values is not None and handed:
                claimed = yield from _claim_oldest_of_each(values, row_lock, handed, at)
            else:
                claimed = yield from _claim_oldest_one_by_one(row_lock, handed, at)
            return existing, claimed

        return await self._transact(enqueue)

    async def claim_next_command(self, host: str, *, at: float, with_run: bool = False) -> Row | None:
        """Hand out the host's oldest Pending command, marking it InProgress in the same statement.

        ``with_run``: the row also carries ``then``, the ids and events of the host's Pending commands of the same
        deployment queued after it (the rest of its run), and ``run_ends_queue``, whether no other command of the
        host is Pending (once the run is claimed, a claim would find nothing), read in the same transaction."""

        row_lock = self._row_lock
        return await self._transact(lambda: _claim_oldest(row_lock, host, at, with_run=with_run))

    async def release_command(self, command_id: int) -> bool:
        """Put a claimed command back in the queue (its claimant never received it); False if not InProgress.

        Never fenced (statements.fencing), even when the owner's dispatch that claimed it for a poll gives it back:
        it undoes a claim rather than deciding anything, and a refused release would strand the command claimed by
        nobody."""
        sql = (
            "UPDATE host_commands SET status = 'Pending', claimed_at = NULL WHERE id = ? AND status = 'InProgress'"
            " RETURNING host"
        )

        def release() -> Program[bool]:
            released = yield Fetch("host_commands", sql, (command_id,))
            if released:  # its host's poll may be parked on another replica
                yield Notify(COMMANDS_QUEUED, [released[0]["host"]])
            return bool(released)

        with unfenced():
            return await self._transact(release)

    async def complete_command(
        self,
        command_id: int,
        status: str,
        result: Mapping[str, Any] | None,
        *,
        at: float,
        host: str | None = None,
    ) -> bool:
        """Finish a command; False (and no change) when it is unknown, already finished, or (given ``host``)
        another host's. That makes repeated agent reports harmless. Failing it cancels the rest of its run (see
        ``finish_commands``)."""
        if status not in FINAL_COMMAND_STATUSES:
            raise ValueError(f"not a final command status: {status!r}")
        where, params = where_clause(host=host)
        sql = (
            "UPDATE host_commands SET status = ?, result = ?, finished_at = ?"
            f" WHERE id = ? AND status IN ('Pending', 'InProgress') AND {where} RETURNING host, deployment_id"
        )

        def complete() -> Program[bool]:
            done = yield Fetch("host_commands", sql, (status, to_json(result), at, command_id, *params))
            if done and status == "Failed":
                yield _cancel_rest_of_run(done[0]["host"], done[0]["deployment_id"], at)
            if done:
                yield Notify(RESULTS_RECORDED, [done[0]["deployment_id"]])
            return bool(done)

        return await self._transact(complete)

    async def finish_command(
        self, command_id: int, host: str, status: str, result: Mapping[str, Any] | None, *, at: float
    ) -> tuple[Row | None, bool]:
        """An agent's report: (the command without payload, None when it is not ``host``'s; whether this report
        finished it, as ``complete_command``), in one transaction (``finish_commands`` of one report)."""
        command, finished, _ = (await self.finish_commands([(command_id, host, status, result, None)], at=at))[0]
        return command, finished

    async def finish_commands(
        self, reports: Sequence[CommandReport], *, at: float, heads: Mapping[int, Row] | None = None
    ) -> list[FinishedReport]:
        """Agents' reports, all in one transaction: for each, as ``finish_command`` (the command without payload,
        None when it is not that host's; whether this report finished it), and whether the command named as its
        ``then`` was claimed for the reporting agent (still Pending, the same host and deployment, and this report
        a success).

        ``heads``: what the caller knows of commands it handed out (``id``, ``host``, ``deployment_id``, ``event``,
        which never change). A report of a known command that finishes it costs one statement, not a read of its
        head and then the write; on a store that takes many rows in one statement (``_values``: PostgreSQL), all of
        them together cost one (per 500), as do the claims of their runs' next commands. A head is read only for a
        report that finished nothing that way (a repeat, an unknown command, another host's).

        A report that fails its command cancels the host's other Pending commands of that deployment: they are the
        rest of its run, which the machine will never ask for (it skips them, or dispatches them anew when the
        failure may be ignored)."""
        for report in reports:
            if report[2] not in FINAL_COMMAND_STATUSES:
                raise ValueError(f"not a final command status: {report[2]!r}")
        head = f"SELECT {COMMAND_HEAD} FROM host_commands WHERE id = ? AND host = ?"
        known = heads or {}
        # The first report of each command known here, of the host it was handed to, is finished without reading the
        # command (``_updated``); the others (a repeat within the batch, an unknown command) are read first.
        first: dict[int, int] = {}
        for index, (command_id, host, *_) in enumerate(reports):
            cached = known.get(command_id)
            if cached is not None and cached["host"] == host:
                first.setdefault(command_id, index)
        values = self._values()

        def finish() -> Program[list[FinishedReport]]:
            commands: list[Row | None] = [None] * len(reports)
            finished = [False] * len(reports)
            finishes = [
                (command_id, reports[i][1], reports[i][2], to_json(reports[i][3])) for command_id, i in first.items()
            ]
            for command_id in (yield from _updated(values, _FINISH, finishes, at)):
                commands[first[command_id]], finished[first[command_id]] = known[command_id], True
            for index, (command_id, host, status, result, _) in enumerate(reports):
                if finished[index]:
                    continue
                rows = yield Fetch("host_commands", head, (command_id, host))
                if not rows:
                    continue  # not that host's command
                commands[index] = rows[0]
                if command_id not in known:  # a known one left open above was finished already
                    finish_it = _FINISH.params(at, (command_id, host, status, to_json(result)))
                    finished[index] = (yield Change(_FINISH.one, finish_it)) == 1
            for index, (_, host, status, _, _) in enumerate(reports):
                command = commands[index]
                if finished[index] and status == "Failed" and command is not None:
                    yield _cancel_rest_of_run(host, command["deployment_id"], at)
            # Each report's next command of its run (``then``) claimed for it: for the first report naming it, a
            # success whose command was found.
            claims: dict[int, int] = {}
            for index, (_, _, status, _, then) in enumerate(reports):
                if then is not None and status == "Succeeded" and commands[index] is not None:
                    claims.setdefault(then, index)
            claimed = [False] * len(reports)
            claim_rows = [(then, reports[i][1], _deployment_of(commands[i])) for then, i in claims.items()]
            for then in (yield from _updated(values, _CLAIM, claim_rows, at)):
                claimed[claims[then]] = True
            outcomes: list[FinishedReport] = list(zip(commands, finished, claimed, strict=True))
            finished_deployments = {c["deployment_id"] for (c, finished, _) in outcomes if c is not None and finished}
            if finished_deployments:  # the owner of each, maybe another replica, feeds the results to its runner
                yield Notify(RESULTS_RECORDED, sorted(finished_deployments))
            return outcomes

        return await self._transact(finish)

    async def get_command(self, command_id: int) -> Row | None:
        row = await self._fetch_one("host_commands", "SELECT * FROM host_commands WHERE id = ?", (command_id,))
        return None if row is None else (await self._with_run_payloads([row]))[0]

    async def _with_run_payloads(self, rows: list[Row]) -> list[Row]:
        """``_with_payloads``, the run heads not among ``rows`` read first (``_with_payloads_read`` outside a
        transaction)."""
        heads: list[Row] = []
        for read in _run_head_reads(rows):
            heads += await self._fetch(read.table, read.sql, read.params)
        return _with_payloads(rows, heads)

    async def list_commands(
        self,
        *,
        host: str | None = None,
        deployment_id: str | None = None,
        status: str | Sequence[str] | None = None,
        payload: bool = True,
    ) -> list[Row]:
        """The commands ``host``, ``deployment_id`` and ``status`` (one or several) select, oldest first."""
        where, params = where_clause(host=host, deployment_id=deployment_id)
        if status is not None:
            where += " AND " + _status_is((status,) if isinstance(status, str) else tuple(status))
        columns = "*" if payload else COMMAND_HEAD
        # Sorted here, not by the SQL: see ``open_commands``.
        rows = await self._fetch("host_commands", f"SELECT {columns} FROM host_commands WHERE {where}", params)
        return sorted(await self._with_run_payloads(rows) if payload else rows, key=_command_id)

    async def open_commands(self, status: str) -> list[Row]:
        """The commands in ``status`` (Pending or InProgress), oldest first, as ``id`` and ``host`` alone: what the
        heartbeat monitor reads every second. A 1,000-host deployment has 7,000 open, and building their whole heads
        cost the monitor more than the rest of its round."""
        if status not in OPEN_COMMAND_STATUSES:
            raise ValueError(f"not an open command status: {status!r}")
        # Sorted here, not by the SQL: with ORDER BY id, SQLite's planner reads the table in id order (every command
        # ever queued) rather than the status's partial index and then sorting the few open ones.
        rows = await self._fetch("host_commands", f"SELECT id, host FROM host_commands WHERE {_status_is((status,))}")
        return sorted(rows, key=_command_id)

    async def finished_commands(self, deployment_id: str) -> list[Row]:
        """The deployment's commands that have a result (Succeeded or Failed), oldest first, without their payload:
        what its owner reads back when another replica recorded the results (``RESULTS_RECORDED``)."""
        sql = (
            f"SELECT {COMMAND_HEAD}, result FROM host_commands WHERE deployment_id = ?"
            " AND status IN ('Succeeded', 'Failed') ORDER BY id"
        )
        return await self._fetch("host_commands", sql, (deployment_id,))

    async def cancel_commands(self, deployment_id: str, *, at: float) -> int:
        """Cancel the deployment's Pending commands (InProgress ones are the agent's to finish): how many."""
        sql = (
            "UPDATE host_commands SET status = 'Cancelled', finished_at = ?"
            " WHERE deployment_id = ? AND status = 'Pending'"
        )
        return await self._change(sql, (at, deployment_id))

    async def host_uses_revision(self, host: str, sha256: str) -> bool:
        """Whether ``host`` has (or had) a command of a deployment of revision ``sha256``: the bundles its agent
        may download."""
        # From the revision's deployments (``deployments_by_revision``) to the host's commands of each
        # (``host_commands_by_deployment``): no index finds a host's commands of every status by host alone.
        sql = (
            "SELECT 1 FROM deployments JOIN host_commands ON host_commands.deployment_id = deployments.id"
            " WHERE deployments.revision_sha256 = ? AND host_commands.host = ? LIMIT 1"
        )
        return await self._fetch_one("host_commands", sql, (sha256, host)) is not None
