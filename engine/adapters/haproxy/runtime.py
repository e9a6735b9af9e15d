"""HAProxy driven live through its runtime API socket: the ``HAProxyRuntime`` client and the ``HAProxyRouter``.

Nothing here reloads HAProxy: every change during a deployment is a runtime command (``set server ... state``,
``set server ... weight``), which takes effect at once for the next request (components.md §5). Each command runs on
its own unix connection (HAProxy answers and closes: no framing to get wrong), with a timeout, and every failure —
socket missing, connection refused, an answer that is not the expected silence — becomes an ``AdapterError``.
Statistics are read from ``show stat`` / ``show servers state`` by their header names, never by column index,
because HAProxy adds columns between versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

from engine.core.errors import AdapterError
from engine.ports import Clock

COMPONENT = "haproxy"
MAX_WEIGHT = 256
FULL_WEIGHT = 100
"""HAProxy's default server weight; weights are scaled so the larger side ends near it (readable, never above 256)."""

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.:-]")
# srv_admin_state bits (HAProxy 2.6 include/haproxy/server-t.h): forced/inherited/resolution/hostname maintenance,
# then forced/inherited drain. CMAINT (0x04, "disabled" in the config) stays set after "state ready", so it is ignored.
_MAINT_BITS = 0x01 | 0x02 | 0x20 | 0x40
_DRAIN_BITS = 0x08 | 0x10
_UP_STATUSES = frozenset({"UP", "no check"})


class AdminState(StrEnum):
    """What an operator asked of a server (``set server <b>/<s> state <x>``), independent of its health."""

    READY = "ready"
    DRAIN = "drain"  # no new requests; in-flight ones finish; health checks keep running
    MAINT = "maint"  # no traffic at all and no health checks


def haproxy_name(text: str) -> str:
    """A backend/frontend/server name HAProxy accepts: anything outside ``[A-Za-z0-9_.:-]`` becomes ``_``."""
    cleaned = _UNSAFE_NAME.sub("_", text.strip())
    return cleaned or "_"


@dataclass(frozen=True, slots=True)
class ServerState:
    """One server as HAProxy sees it right now."""

    name: str
    weight: int  # user weight 0-256 (uweight: kept while draining, unlike the effective weight)
    admin: AdminState
    status: str  # operational: "UP", "DOWN", "UP 1/2" (a check failed), "DRAIN", "MAINT", "no check", ...
    check: str  # last health check, e.g. "L7STS 500 (Layer7 wrong status)"
    sessions: int  # scur: requests being served right now
    requests: int  # req_tot: HTTP requests sent to it since HAProxy started
    responses_5xx: int  # hrsp_5xx
    response_ms: int  # rtime: mean response time over its last 1024 requests
    checked_up: bool = False  # check counter at its top (rise + fall - 1): UP with no failed check since, or no check

    @property
    def up(self) -> bool:
        """Fully up by HAProxy's own health check, whatever its admin state ("UP 1/2" — one failed check — is not;
        a drained server reads "DRAIN" but is checked all the same)."""
        return self.checked_up

    @property
    def serving(self) -> bool:
        """Taking new requests right now: ready, weighted and UP."""
        return self.admin is AdminState.READY and self.weight > 0 and self.up

    def describe(self) -> str:
        return f"status {self.status}, last health check {self.check}"


def parse_stat_csv(text: str) -> list[dict[str, str]]:
    """Rows of ``show stat`` keyed by the header line (``# pxname,svname,...``)."""
    body = text.lstrip()
    if not body.startswith("#"):
        raise AdapterError(COMPONENT, f"unexpected answer to show stat: {text.strip()[:200]!r}")
    return list(csv.DictReader(io.StringIO(body[1:].lstrip())))


def parse_servers_state(text: str) -> list[dict[str, str]]:
    """Rows of ``show servers state <backend>``: a version line, a ``# name name ...`` header, space-separated rows."""
    lines = [line for line in text.splitlines() if line.strip()]
    header_at = next((i for i, line in enumerate(lines) if line.startswith("#")), None)
    if header_at is None:
        raise AdapterError(COMPONENT, f"unexpected answer to show servers state: {text.strip()[:200]!r}")
    names = lines[header_at].lstrip("#").split()
    return [dict(zip(names, line.split(), strict=False)) for line in lines[header_at + 1 :]]


def _admin_state(bits: int) -> AdminState:
    if bits & _MAINT_BITS:
        return AdminState.MAINT
    return AdminState.DRAIN if bits & _DRAIN_BITS else AdminState.READY


def _checked_up(row: Mapping[str, str]) -> bool:
    """HAProxy's check counter ``check_health`` runs 0 … rise + fall - 1: the server is UP from ``rise`` on and is
    put at the top by each passed check; anything below the top is DOWN or on its way down."""
    if row.get("status") in _UP_STATUSES and not row.get("check_health"):
        return True  # "no check", or an HAProxy without the counter: its status is all there is
    top = _int(row, "check_rise") + _int(row, "check_fall") - 1
    return row.get("check_health") not in (None, "") and _int(row, "check_health") == top and top > 0


def _int(row: Mapping[str, str], key: str) -> int:
    value = row.get(key) or "0"
    return int(value) if value.lstrip("-").isdigit() else 0


class HAProxyRuntime:
    """Client of HAProxy's runtime API (``stats socket ... level admin``)."""

    def __init__(self, socket_path: Path | str, *, timeout: float = 2.0, max_connections: int = 8) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        # HAProxy serves 10 stats connections at a time by default ("stats maxconn"); stay below it.
        self._slots = asyncio.Semaphore(max_connections)

    async def execute(self, command: str) -> str:
        """Send one command on a fresh connection and return HAProxy's whole answer (stripped)."""
        where = str(self.socket_path)
        try:
            async with self._slots:
                return await asyncio.wait_for(self._exchange(command), self.timeout)
        except FileNotFoundError:
            detail = f"runtime API socket missing: {where} (is haproxy running?)"
        except ConnectionRefusedError:
            detail = f"connection refused on runtime API socket {where} (haproxy is not running)"
        except TimeoutError:
            detail = f"no answer to {command!r} within {self.timeout:g}s on {where}"
        except OSError as exc:
            detail = f"runtime API socket {where}: {exc.strerror or exc}"
        raise AdapterError(COMPONENT, detail)

    async def _exchange(self, command: str) -> str:
        reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            answer = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return answer.decode(errors="replace").strip()

    async def _change(self, command: str) -> None:
        """Commands that change something answer nothing on success, and a sentence on failure."""
        answer = await self.execute(command)
        if answer:
            raise AdapterError(COMPONENT, f"{command!r} refused: {answer}")

    async def info(self) -> dict[str, str]:
        answer = await self.execute("show info")
        pairs = (line.split(":", 1) for line in answer.splitlines() if ":" in line)
        info = {key.strip(): value.strip() for key, value in pairs}
        if "Pid" not in info:
            raise AdapterError(COMPONENT, f"unexpected answer to show info: {answer[:200]!r}")
        return info

    async def set_weight(self, backend: str, server: str, weight: int) -> None:
        """Absolute weight 0-256 (a ``%`` weight would be relative to the *initial* one: components.md §5)."""
        if not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight {weight} is outside 0-{MAX_WEIGHT}")
        await self._change(f"set server {backend}/{server} weight {weight}")

    async def set_state(self, backend: str, server: str, state: AdminState | str) -> None:
        await self._change(f"set server {backend}/{server} state {AdminState(state)}")

    async def reset_health(self, backend: str, server: str) -> None:
        """Mark the server DOWN with its check counter at zero: only a check that passes after this brings it UP."""
        await self._change(f"set server {backend}/{server} health down")

    async def server_states(self, backend: str) -> dict[str, ServerState]:
        """Every server of ``backend``: statistics from ``show stat``, admin state from ``show servers state``."""
        stat_text, state_text = await asyncio.gather(
            self.execute("show stat -1 4 -1"), self.execute(f"show servers state {backend}")
        )
        stats = [row for row in parse_stat_csv(stat_text) if row.get("pxname") == backend]
        if not stats:
            raise AdapterError(COMPONENT, f"no backend {backend!r} with servers in show stat")
        admin_bits = {row.get("srv_name", ""): _int(row, "srv_admin_state") for row in parse_servers_state(state_text)}
        states: dict[str, ServerState] = {}
        for row in stats:
            name = row.get("svname", "")
            check = " ".join(part for part in (row.get("check_status"), row.get("check_code")) if part)
            reason = row.get("last_chk") or row.get("check_desc") or ""
            states[name] = ServerState(
                name=name,
                weight=_int(row, "uweight") if row.get("uweight") else _int(row, "weight"),
                admin=_admin_state(admin_bits.get(name, 0)),
                status=row.get("status", ""),
                check=f"{check} ({reason})" if check and reason else check or reason or "none yet",
                sessions=_int(row, "scur"),
                requests=_int(row, "req_tot"),
                responses_5xx=_int(row, "hrsp_5xx"),
                response_ms=_int(row, "rtime"),
                checked_up=_checked_up(row),
            )
        return states


@dataclass(frozen=True, slots=True)
class FleetWeights:
    """Per-server weights, in the order the servers of each side were given."""

    original: tuple[int, ...]
    replacement: tuple[int, ...]


def _spread(total: int, count: int) -> tuple[int, ...]:
    """``total`` over ``count`` servers as evenly as integers allow (the first ones get the +1)."""
    base, extra = divmod(total, count)
    return tuple(base + 1 if i < extra else base for i in range(count))


@lru_cache(maxsize=1024)
def fleet_weights(percent: int, originals: int, replacements: int) -> FleetWeights:
    """Weights that send exactly ``percent`` % of requests to the replacement fleet, whatever the fleet sizes.

    HAProxy's roundrobin gives each server a share of requests proportional to its weight, so the replacement
    share is T_r / (T_r + T_o), where T_r and T_o are the summed weights of each side. For p % that means
    T_r : T_o = p : (100 - p) = a : b once divided by g = gcd(p, 100 - p), i.e. T_r = k·a and T_o = k·b for a
    whole k. Since a, b ≤ 100 and a server takes at most 256, k = 1 always fits: **every percentage is exact**.

    - Uniform weights (every server of a side equal) need R | k·a and O | k·b; the smallest such k is
      lcm(R / gcd(R, a), O / gcd(O, b)). When that fits under 256 per server it is used, scaled by the largest
      whole factor keeping every weight ≤ 100 (readbacks then look like HAProxy's default weight 100).
      E.g. 10 % with 2+2 servers: a=1, b=9, k=2 → replacement 1, original 9 → times 11 → 11 and 99.
    - Otherwise (e.g. 99 % with 10 originals and 1 replacement: each original would need 0.26) the largest k
      that fits is spread over each side's servers as evenly as integers allow: 99 % → replacement 198, two
      originals at 1 and eight at 0. Still exact; the few per-server differences are at most 1.

    0 % and 100 % give the side that gets nothing weight 0 (its health checks keep running).
    """
    if not 0 <= percent <= 100:
        raise ValueError(f"percent {percent} is outside 0-100")
    if (percent < 100 and originals < 1) or (percent > 0 and replacements < 1):
        raise ValueError(
            f"{percent} % cannot be split over {originals} original and {replacements} replacement servers"
        )
    if percent in (0, 100):
        on_replacement = FULL_WEIGHT if percent == 100 else 0
        return FleetWeights((FULL_WEIGHT - on_replacement,) * originals, (on_replacement,) * replacements)
    g = math.gcd(percent, 100 - percent)
    a, b = percent // g, (100 - percent) // g
    k = math.lcm(replacements // math.gcd(replacements, a), originals // math.gcd(originals, b))
    w_r, w_o = k * a // replacements, k * b // originals
    if max(w_r, w_o) <= MAX_WEIGHT:
        scale = max(1, FULL_WEIGHT // max(w_r, w_o))
        return FleetWeights((w_o * scale,) * originals, (w_r * scale,) * replacements)
    k = min(MAX_WEIGHT * replacements // a, MAX_WEIGHT * originals // b)
    return FleetWeights(_spread(k * b, originals), _spread(k * a, replacements))


@dataclass(frozen=True, slots=True)
class GroupPool:
    """Where one deployment group's hosts live in HAProxy: its backend, and each target's server name there."""

    backend: str
    servers: Mapping[str, str]  # target (host name) -> HAProxy server name
    deregistration_delay: float | None = None  # overrides the router's default for this group

    @classmethod
    def of_hosts(cls, backend: str, hosts: Sequence[str], **options: float) -> GroupPool:
        """The usual pool: server names are the sanitized host names (what haproxy_process renders)."""
        return cls(haproxy_name(backend), {host: haproxy_name(host) for host in hosts}, **options)

    def server(self, target: str) -> str:
        try:
            return self.servers[target]
        except KeyError:
            raise AdapterError(COMPONENT, f"target {target!r} is not a server of backend {self.backend}") from None


@dataclass(frozen=True, slots=True)
class _Roles:
    original: tuple[str, ...] = field(default_factory=tuple)  # HAProxy server names
    replacement: tuple[str, ...] = field(default_factory=tuple)


class HAProxyRouter:
    """TrafficRouter over HAProxy: drain/ready per host for in-place groups, fleet weights for blue/green ones."""

    def __init__(
        self,
        runtime: HAProxyRuntime,
        groups: Mapping[str, GroupPool],
        *,
        clock: Clock,
        deregistration_delay: float = 5.0,
        allow_timeout: float = 30.0,
        poll_interval: float = 0.05,
    ) -> None:
        self.runtime = runtime
        self.groups = dict(groups)
        self.clock = clock
        self.deregistration_delay = deregistration_delay
        self.allow_timeout = allow_timeout
        self.poll_interval = poll_interval
        self._roles: dict[str, _Roles] = {}

    def _pool(self, group: str) -> GroupPool:
        try:
            return self.groups[group]
        except KeyError:
            raise AdapterError(COMPONENT, f"group {group!r} has no HAProxy backend") from None

    # -- blue/green ------------------------------------------------------------------------------------------

    def set_roles(self, group: str, original: Sequence[str], replacement: Sequence[str]) -> None:
        """Which targets are the original fleet and which the replacement, for the deployment now running.

        Servers of the backend in neither list are left alone by ``set_weight``.
        """
        pool = self._pool(group)
        self._roles[group] = _Roles(tuple(pool.server(t) for t in original), tuple(pool.server(t) for t in replacement))

    async def prepare(self, group: str, original: Sequence[str], replacement: Sequence[str]) -> None:
        """TrafficRouter.prepare: the roles for the deployment about to shift traffic."""
        self.set_roles(group, original, replacement)

    def _roles_of(self, group: str) -> _Roles:
        roles = self._roles.get(group)
        if roles is None:
            raise AdapterError(COMPONENT, f"group {group!r}: no original/replacement roles set for this deployment")
        return roles

    async def set_weight(self, group: str, percent: int, *, wait: bool = True) -> None:
        """Give the replacement fleet ``percent`` % of requests (weights: see ``fleet_weights``).

        Weights follow health, never lead it: with ``wait``, nothing changes until HAProxy has seen every
        replacement server that is to take traffic healthy since this call (``_prove_healthy``); a replacement that
        fails raises with every weight still where it was. Then the servers that are to take traffic are weighted
        and set ``ready`` (a rollback must bring back an original fleet that BlockTraffic drained), then the others
        get weight 0, so there is never a moment with nowhere to send a request. At 0 % the replacement fleet is
        also drained: the state a blue/green group is in between deployments. About two commands per server, run
        concurrently: a reroute (``wait=False``) takes milliseconds.
        """
        pool, roles = self._pool(group), self._roles_of(group)
        try:
            weights = fleet_weights(percent, len(roles.original), len(roles.replacement))
        except ValueError as exc:
            raise AdapterError(COMPONENT, f"group {group!r}: {exc}") from None
        wanted = dict(zip(roles.original, weights.original, strict=True))
        wanted.update(zip(roles.replacement, weights.replacement, strict=True))

        async def open_up(server: str, weight: int) -> None:
            await self.runtime.set_weight(pool.backend, server, weight)
            await self.runtime.set_state(pool.backend, server, AdminState.READY)

        receiving = [s for s, w in wanted.items() if w > 0]
        if wait:
            await self._prove_healthy(pool, [s for s in receiving if s in roles.replacement])
        await asyncio.gather(*(open_up(s, wanted[s]) for s in receiving))
        await asyncio.gather(*(self.runtime.set_weight(pool.backend, s, 0) for s, w in wanted.items() if w == 0))
        if percent == 0:
            await asyncio.gather(
                *(self.runtime.set_state(pool.backend, s, AdminState.DRAIN) for s in roles.replacement)
            )

    async def _prove_healthy(self, pool: GroupPool, servers: Sequence[str]) -> None:
        """Return once HAProxy has seen each of ``servers`` healthy *since this call*; raise if it has not within
        ``allow_timeout``.

        A server taking traffic right now only has to be UP (resetting it would take it out of rotation). Any other
        one may still show the UP of the process it replaced — a drained server keeps being checked, and with
        ``fall 2`` one failed check against the new process still reads "UP 1/2" — so its health is reset first
        (``set server … health down`` zeroes HAProxy's check counter): only a check that passes after the reset,
        hence after the host's restart, which came before this call, brings it UP. A server in maintenance is not
        checked at all, so it is drained (checked, sent nothing) first.
        """
        if not servers:
            return
        states = await self.runtime.server_states(pool.backend)
        missing = [s for s in servers if s not in states]
        if missing:
            raise AdapterError(COMPONENT, f"backend {pool.backend} has no server {', '.join(missing)}")

        async def reset(server: str) -> None:
            if states[server].admin is AdminState.MAINT:
                await self.runtime.set_state(pool.backend, server, AdminState.DRAIN)
            await self.runtime.reset_health(pool.backend, server)

        await asyncio.gather(*(reset(s) for s in servers if not states[s].serving))
        deadline = self.clock.monotonic() + self.allow_timeout
        while True:
            states = await self.runtime.server_states(pool.backend)
            down = [s for s in servers if s not in states or not states[s].up]
            if not down:
                return
            if self.clock.monotonic() >= deadline:
                detail = "; ".join(f"{pool.backend}/{s}: {states[s].describe()}" if s in states else s for s in down)
                raise AdapterError(
                    COMPONENT, f"not seen UP by HAProxy's health check within {self.allow_timeout:g}s: {detail}"
                )
            await self.clock.sleep(self.poll_interval)

    async def verify_weight(self, group: str, percent: int) -> bool | None:
        """Read the weights back: does HAProxy send exactly ``percent`` % to the replacement? None if unreadable.

        Exact, because ``fleet_weights`` is: a True here means the percentage deploybot then reports *is* the
        read-back one, not a neighbour of it. Weights that send nothing anywhere are False.
        """
        totals = await self._weight_totals(group)
        if totals is None:
            return None
        replacement, original = totals
        return replacement + original > 0 and Fraction(100 * replacement, replacement + original) == percent

    async def read_share(self, group: str) -> Fraction | None:
        """The replacement's share (0-100) of new requests by the weights HAProxy holds now; None if unreadable or
        if no ready server has any weight."""
        totals = await self._weight_totals(group)
        if totals is None or sum(totals) == 0:
            return None
        return Fraction(100 * totals[0], sum(totals))

    async def _weight_totals(self, group: str) -> tuple[int, int] | None:
        """(replacement, original) summed weights of ``ready`` servers (drained or maintained ones get no new
        requests); health is not counted: a replacement that is not UP never got its weight (``_prove_healthy``)."""
        roles = self._roles.get(group)
        if roles is None or group not in self.groups:
            return None
        try:
            states = await self.runtime.server_states(self.groups[group].backend)
        except AdapterError:
            return None

        def total(names: Sequence[str]) -> int:
            ready = (states[n] for n in names if n in states)
            return sum(s.weight for s in ready if s.admin is AdminState.READY)

        return total(roles.replacement), total(roles.original)

    # -- in-place --------------------------------------------------------------------------------------------

    async def block(self, group: str, target: str) -> None:
        """Drain ``target``, then wait until it serves nothing (scur 0) or the deregistration delay is over."""
        pool = self._pool(group)
        server = pool.server(target)
        await self.runtime.set_state(pool.backend, server, AdminState.DRAIN)
        delay = self.deregistration_delay if pool.deregistration_delay is None else pool.deregistration_delay
        deadline = self.clock.monotonic() + delay
        while True:
            state = await self._server_state(pool, server)
            if state.sessions == 0 or self.clock.monotonic() >= deadline:
                return
            await self.clock.sleep(self.poll_interval)

    async def allow(self, group: str, target: str) -> None:
        """Set ``target`` ready once HAProxy's own health check has seen it UP since this call (the host was
        restarted before AllowTraffic: an UP from before may be its old process's); until then it gets nothing."""
        pool = self._pool(group)
        server = pool.server(target)
        await self._prove_healthy(pool, [server])
        await self.runtime.set_state(pool.backend, server, AdminState.READY)

    async def _server_state(self, pool: GroupPool, server: str) -> ServerState:
        states = await self.runtime.server_states(pool.backend)
        if server not in states:
            raise AdapterError(COMPONENT, f"backend {pool.backend} has no server {server!r}")
        return states[server]
