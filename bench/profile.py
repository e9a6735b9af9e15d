"""Optional sampling profile of the server during a timed deployment (``python -m bench --profile``), via py-spy.

py-spy is not a dependency: ``.venv/bin/pip install py-spy`` first. It samples without pausing the server
(``--nonblocking``) and only threads holding the GIL (``--gil``), so the idle waitpid threads of 200 local agents
do not drown the picture; the collapsed stacks are kept next to results.json and summarized as the functions
with the largest share of samples (self and inclusive), project code first.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from rich.console import Console

_OWN_CODE = ("engine/", "bot/", "aiohttp/", "sqlite_utils/", "json/")
_ENTRY_POINTS = ("bot/__main__.py", "bot/cli/")  # in every stack: they say nothing


def _telling(frame: str) -> bool:
    return any(part in frame for part in _OWN_CODE) and not any(part in frame for part in _ENTRY_POINTS)


def _py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """``with Profiler(pid, output):`` samples ``pid`` while the block runs; ``summary`` reads the result."""

    def __init__(self, pid: int, output: Path, console: Console) -> None:
        self.pid, self.output, self.console = pid, output, console
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        executable = _py_spy()
        if executable is None:
            self.console.print("  [yellow]--profile: py-spy is not installed (.venv/bin/pip install py-spy)")
            return self
        argv = [executable, "record", "--pid", str(self.pid), "--format", "raw", "--rate", "200"]
        argv += ["--nonblocking", "--gil", "--output", str(self.output)]
        self._process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is None:
            return
        self._process.send_signal(signal.SIGINT)
        try:
            _, err = self._process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            _, err = self._process.communicate()
        if not self.output.exists():
            self.console.print(f"  [yellow]py-spy wrote no profile: {err.decode(errors='replace').strip()[-300:]}")
            self._process = None

    def summary(self, top: int = 15) -> None:
        if self._process is None or not self.output.exists():
            return
        own, inclusive, total = Counter[str](), Counter[str](), 0
        for line in self.output.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            frames, samples = stack.split(";"), int(count)
            total += samples
            own[frames[-1]] += samples
            for frame in set(frames):
                inclusive[frame] += samples
        if not total:
            return
        self.console.print(f"  server profile: {total} GIL-holding samples at 200 Hz; collapsed stacks: {self.output}")
        self.console.print("  self time:")
        for frame, samples in own.most_common(top):
            self.console.print(f"    {samples / total:6.1%}  {frame}")
        self.console.print("  inclusive, project and library code:")
        shown = [(f, n) for f, n in inclusive.most_common() if _telling(f)]
        for frame, samples in shown[:top]:
            self.console.print(f"    {samples / total:6.1%}  {frame}")
