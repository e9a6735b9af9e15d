"""Which revisions a caller of the API may name: anything the server fetches or holds, and server paths only where
the config says.

A revision is a stored bundle (``sha256:``), an S3 object (``s3://``), a git ref of the config's repository
(``git:``), a GitHub commit (``github:``), or else a path on the server. A path is the one kind that would let a
caller make the server read (and bundle, and answer about) any file it can read — ``var/agent-tokens.json``, a
300 MB directory — so the doors take one only when it lies, links followed, at or under the application's own
``revision`` or one of ``server.revision_roots``. The CLI never needs more: ``deploybot deploy --revision DIR``
bundles DIR on the caller's machine and uploads it. The server's own uses (an application's default revision, a
rollback, a promotion) do not pass through this rule.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

FETCHED_SCHEMES = ("sha256:", "s3://", "git:", "github:")


def names_server_path(revision: str) -> bool:
    """True when ``revision`` is a path on the server rather than something stored or fetched."""
    return not revision.startswith(FETCHED_SCHEMES)


def path_within(path: str, roots: Iterable[str]) -> bool:
    """``path`` is one of ``roots`` or below one of them (every path already absolute with its links resolved)."""
    for root in roots:
        trimmed = root.rstrip(os.sep)
        if path == (trimmed or os.sep) or path.startswith(trimmed + os.sep):
            return True
    return False
