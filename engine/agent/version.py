"""deploybot's installed version as the agent reports it (in its heartbeats and User-Agent), read without
importlib.metadata (I/O: the distribution's metadata files).
"""

from __future__ import annotations

import functools
import os
import sys


@functools.cache
def agent_version() -> str:
    """deploybot's installed version, read once: what ``importlib.metadata.version("deploybot")`` answers.

    The distribution's metadata is found as importlib.metadata finds it (the first ``.dist-info``/``.egg-info`` of
    the project along ``sys.path``) without importing importlib.metadata, which costs an idle agent more CPU at
    start (~12 ms, paid by each of a local fleet's agents) than everything else it needs for its first heartbeat
    but asyncio. Any other kind of install (a zip, a custom finder) is asked through importlib.metadata.
    """
    for entry in sys.path:
        try:
            with os.scandir(entry or ".") as names:
                found = [item.path for item in names if _is_deploybot_metadata(item.name)]
        except OSError:  # a zip or a path hook: importlib.metadata below knows those
            continue
        for path in sorted(found):
            version = _metadata_version(path)
            if version:
                return version
    from importlib import metadata

    try:
        return metadata.version("deploybot")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _is_deploybot_metadata(name: str) -> bool:
    """``deploybot-1.2.dist-info``, ``deploybot.egg-info`` and the like (names normalized as importlib.metadata
    does: case, ``-``, ``_`` and ``.`` do not matter)."""
    stem, dot, kind = name.rpartition(".")
    if not dot or kind.lower() not in ("dist-info", "egg-info"):
        return False
    project = stem.partition("-")[0]
    return project.lower().replace(".", "_").replace("-", "_") == "deploybot"


def _metadata_version(path: str) -> str:
    """The ``Version:`` header of a metadata directory (METADATA, else PKG-INFO) or file; "" when it has none."""
    for candidate in (os.path.join(path, "METADATA"), os.path.join(path, "PKG-INFO"), path):
        try:
            with open(candidate, encoding="utf-8", errors="replace") as file:
                for line in file:
                    if not line.strip():  # the headers end at the first blank line
                        break
                    key, _, value = line.partition(":")
                    if key.strip().lower() == "version":
                        return value.strip()
        except OSError:  # missing, or a directory
            continue
        return ""
    return ""
