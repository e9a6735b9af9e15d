"""How the long-running server treats Python's cyclic garbage collector once it has started.

Everything the server builds at startup (modules, the configuration, the engine, the aiohttp app, the Slack and
GitHub clients: about 100,000 container objects) lives as long as the process. Left in the collector's generations,
each full collection walks all of it again, and on a small VM walking costs 1-2 us an object: a 1,000-host deployment
spent about 0.2 s per full collection and several seconds in all in collections that found almost nothing to free.
So, once startup is over, ``settle`` collects what startup left behind, freezes the rest (``gc.freeze``: the
collector never looks at it again), and collects young objects less often: a request's objects are mostly freed by
reference counting before a collection would see them, so a larger first threshold walks fewer of them, at the cost
of holding a few MB more of cyclic garbage between collections.

What a young collection walks is mostly the requests in flight (a held result POST or a parked long poll is ~70
container objects: its coroutines, headers, parser, response), and that does not shrink when collections are
rarer: each collection walks about all of them again, and finds nothing to free (the server makes next to no cyclic
garbage). So how often they come is the whole cost. With a first threshold of 20,000, a 1,000-host deployment
(~60,000 such objects at once) ran a young collection every ~800 host-events, 9 % of the server's CPU; at 100,000
the net growth of a 1,000-host deployment stays under it and none runs, and a 2,000-host one runs 5 instead of 58
(plus 3 of the middle generation). A collection takes as long as before (the same objects in flight): the longest
at 2,000 hosts was 122 ms, as long as the middle generation's at 20,000 (118 ms).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 100_000
"""Allocations (less deallocations) of container objects between two collections of the youngest generation
(CPython's default is 700)."""
OLDER_THRESHOLDS = (20, 20)
"""Collections of one generation between two of the next (CPython's default is 10 and 10)."""


def settle() -> None:
    """Call once, when startup is over and before serving: see the module docstring."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
