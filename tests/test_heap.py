"""bot/heap.py: once settled, what startup built is never walked by the collector again; later garbage still goes.

Each check runs in a fresh interpreter: freezing the test process's own heap would change every test after it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import gc, json, weakref
import bot.heap

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a

startup = cycle()
bot.heap.settle()
tracked = {id(o) for o in gc.get_objects()}
later = cycle()
gone = weakref.ref(later)
del later
collected = gc.collect()
print(json.dumps({
    "frozen": gc.get_freeze_count(),
    "startup_tracked": id(startup) in tracked,
    "later_freed": gone() is None,
    "collected": collected,
    "thresholds": gc.get_threshold(),
}))
"""


def _probe() -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return dict(json.loads(done.stdout))


def test_settling_freezes_what_startup_built_and_still_frees_later_cycles() -> None:
    from bot.heap import OLDER_THRESHOLDS, YOUNG_THRESHOLD

    seen = _probe()
    assert int(str(seen["frozen"])) > 1000  # the interpreter and bot.heap's imports, at least
    assert seen["startup_tracked"] is False  # frozen: no generation holds it, so no collection walks it
    assert seen["later_freed"] is True  # a cycle made after settling is still collected
    assert int(str(seen["collected"])) >= 2
    assert seen["thresholds"] == [YOUNG_THRESHOLD, *OLDER_THRESHOLDS]
