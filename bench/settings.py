"""What one ``python -m bench`` run asks of every scenario: each scenario is ``(Settings) -> list[Figure]``."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

SCALE_TARGET_HOSTS = 200  # DESIGN §5: 200 hosts AllAtOnce in 10 s
SWARM_HOSTS = (50, 200, 1000)  # bench/swarm.py's sizes by default; 2,000 on request (BENCH_SWARM_HOSTS, --swarm-hosts)
OVERHEAD_ROUNDS = 7  # issue 19: at least 7 interleaved rounds each side, median and range
SWARM_ROUNDS = 7  # timed deployments per swarm size, and rounds of each floor after them: median and range
QUIET_SHARE = 0.10  # a round in which other processes used more of the machine than this is not a quiet one
QUIET_WAIT_S = 20.0  # an overhead round, or a swarm size, waits up to this long for the machine to be quiet first


@dataclass(frozen=True, slots=True)
class Settings:
    console: Console
    hosts_large: int = SCALE_TARGET_HOSTS
    pickup_runs: int = 20
    overhead_hosts: int = 20
    overhead_runs: int = OVERHEAD_ROUNDS
    swarm_hosts: tuple[int, ...] = SWARM_HOSTS
    swarm_rounds: int = SWARM_ROUNDS
    swarm_idle_s: float = 5.0  # each size's idle fleet is measured over one heartbeat period (the agents' 5 s)
    keep: bool = False
    profile_dir: Path | None = None  # set: py-spy the server during the last timed deployment, files go here

    @contextlib.contextmanager
    def scenario_dir(self, name: str) -> Iterator[Path]:
        """A fresh temporary directory for one scenario (or one size of it), removed afterwards unless ``keep``."""
        path = Path(tempfile.mkdtemp(prefix=f"deploybot-bench-{name}-"))
        try:
            yield path
        finally:
            if self.keep:
                self.console.print(f"  [dim]kept {path}[/dim]")
            else:
                shutil.rmtree(path, ignore_errors=True)
