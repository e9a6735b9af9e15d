"""ThreadStore: the record of what has been posted to Slack — where each deployment's thread lives — on disk.

``DATA_DIR/slack-threads.json``, replaced atomically (write a temporary file, then rename) whenever it changes:

    {"threads": {"d-…": ["C0CHANNEL", "1700000000.000100"], …},
     "requesters": {"d-…": "alice", …}}

- ``threads``: deployment id -> (channel id, parent message ts). A restarted server keeps editing the same message,
  and a deployment with no entry has no thread yet: the notifier's outbox gives it one (at start, for the last day).
- ``requesters``: who asked in Slack for a rollback (the engine creates rollbacks as ``codeDeployRollback``), so its
  thread keeps showing that person after a restart.

Why a file and not the store's intents table: this is the notifier's own memory of Slack, written only when a thread
is opened or a rollback is asked for, read once at start; it needs no transaction with the engine's rows, and the
outbox is derived (deployments minus threads), so nothing else must be stored to retry after a restart. The first
format (a bare ``{"d-…": [channel, ts]}``) is still read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class ThreadStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._threads: dict[str, tuple[str, str]] = {}
        self._requesters: dict[str, str] = {}
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        threads = data.get("threads") if isinstance(data.get("threads"), dict) else data
        for deployment_id, where in threads.items():
            if isinstance(where, list) and len(where) == 2 and all(isinstance(part, str) for part in where):
                self._threads[deployment_id] = (where[0], where[1])
        requesters = data.get("requesters")
        if isinstance(requesters, dict):
            self._requesters = {k: v for k, v in requesters.items() if isinstance(v, str)}

    def get(self, deployment_id: str) -> tuple[str, str] | None:
        return self._threads.get(deployment_id)

    def __contains__(self, deployment_id: object) -> bool:
        return deployment_id in self._threads

    def put(self, deployment_id: str, channel: str, ts: str) -> None:
        self._threads[deployment_id] = (channel, ts)
        self._save()

    def requester(self, deployment_id: str) -> str | None:
        return self._requesters.get(deployment_id)

    def put_requester(self, deployment_id: str, user: str) -> None:
        if self._requesters.get(deployment_id) != user:
            self._requesters[deployment_id] = user
            self._save()

    def _save(self) -> None:
        data = {"threads": {k: list(v) for k, v in self._threads.items()}, "requesters": self._requesters}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, indent=0), encoding="utf-8")
        temporary.chmod(0o600)  # the data dir's files are deploybot's alone
        os.replace(temporary, self.path)
