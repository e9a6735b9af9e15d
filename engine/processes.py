"""One process told apart from a later one that gets the same pid (Linux): its pid and its start time, field 22 of
``/proc/PID/stat`` (clock ticks after boot), which a reused pid has later. The server checks it before signalling a
local agent from a pid file, and the agent before ending an orphaned hook's process group after a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Self


def start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat``; None for no such process or a zombie (exited, not yet reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if len(fields) < 20 or fields[0] == "Z":
        return None
    return int(fields[19])


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> Self | None:
        """The process ``pid`` is now; None when there is none (or only a zombie)."""
        started = start_time(pid)
        return cls(pid, started) if started is not None else None

    def running(self) -> bool:
        """Still alive, not a zombie, and still this very process."""
        return start_time(self.pid) == self.start_time
