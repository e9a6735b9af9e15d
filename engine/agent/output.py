"""Hook output capture: a size-capped ``scripts.log`` per deployment and a bounded tail for results (I/O).

A script may write gigabytes; the agent must neither fill the disk nor hold the output in memory. Every chunk is
written to the log until the deployment's log reaches its cap (then only counted), and copied into a fixed-size
tail buffer whose last bytes go back to the server as ``log_tail``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import BinaryIO

LOG_CAP_BYTES = 10 * 1024 * 1024
TAIL_BYTES = 4096


class TailBuffer:
    """The last ``limit`` bytes ever appended; memory never exceeds ``2 * limit``."""

    def __init__(self, limit: int = TAIL_BYTES) -> None:
        self.limit = limit
        self._data = bytearray()

    def append(self, chunk: bytes) -> None:
        if len(chunk) >= self.limit:
            self._data[:] = chunk[-self.limit :]
            return
        self._data += chunk
        excess = len(self._data) - self.limit
        if excess > 0:
            del self._data[:excess]

    def __len__(self) -> int:
        return len(self._data)

    def text(self) -> str:
        """Decoded tail whose UTF-8 encoding is at most ``limit`` bytes (a cut character is dropped)."""
        text = bytes(self._data).decode("utf-8", errors="replace")
        encoded = text.encode()
        if len(encoded) > self.limit:
            text = encoded[-self.limit :].decode("utf-8", errors="ignore")
        return text


def _stamp() -> bytes:
    now = time.time()
    return time.strftime("[%Y-%m-%d %H:%M:%S", time.localtime(now)).encode() + b".%03d]" % int(now % 1 * 1000)


class ScriptLog:
    """``logs/scripts.log`` in CodeDeploy's shape, capped at ``cap`` bytes per deployment.

    Header lines (``LifecycleEvent - X``, ``Script - loc``) are always written; script output stops at the cap and
    the number of bytes left out is written after the script that hit it.
    """

    def __init__(self, path: Path, cap: int = LOG_CAP_BYTES) -> None:
        self.path = path
        self.cap = cap
        # 0600: script output may hold whatever a hook printed; only the agent's user reads it.
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:  # the first event of a deployment: its logs directory is made then (once)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, flags, 0o600)
        self._file: BinaryIO = open(fd, "ab")  # noqa: SIM115
        self._size = self._file.tell()
        self._at_line_start = True
        self.dropped = 0

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ScriptLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._size += len(data)

    def header(self, text: str) -> None:
        self._end_line()
        self._write(_stamp() + b" " + text.encode() + b"\n")
        self._file.flush()

    def output(self, chunk: bytes) -> None:
        """One chunk of a script's merged stdout/stderr, each line prefixed with a time stamp and ``[stdout]``."""
        room = self.cap - self._size
        if room <= 0:
            self.dropped += len(chunk)
            return
        prefix = _stamp() + b" [stdout]"
        ends_line = chunk.endswith(b"\n")
        body = chunk[:-1] if ends_line else chunk
        text = body.replace(b"\n", b"\n" + prefix)
        if self._at_line_start:
            text = prefix + text
        if ends_line:
            text += b"\n"
        self._at_line_start = ends_line
        if len(text) > room:
            self.dropped += len(chunk) - int(len(chunk) * room / len(text))
            text = text[:room]
            self._at_line_start = False
        self._write(text)

    def end_script(self) -> None:
        """Close the script's output section, saying how much was left out because of the cap."""
        self._end_line()
        if self.dropped:
            self._write(
                _stamp()
                + b" [deploybot] log cap of %d bytes reached: %d bytes of output were not written\n"
                % (self.cap, self.dropped)
            )
            self.dropped = 0
        self._file.flush()

    def _end_line(self) -> None:
        if not self._at_line_start:
            self._write(b"\n")
            self._at_line_start = True
