"""Helpers for the Slack tests: really signed slash-command and button requests, and scripted agents."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier

SECRET = "test-signing-secret"
BOT_TOKEN = "xoxb-test-token"


def signed(body: str, *, ts: float | None = None, secret: str = SECRET, retry: int | None = None) -> dict[str, str]:
    stamp = str(int(ts if ts is not None else time.time()))
    headers = {
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    if retry is not None:
        headers["X-Slack-Retry-Num"] = str(retry)
        headers["X-Slack-Retry-Reason"] = "http_timeout"
    return headers


def slash_body(text: str, *, user: str = "U0ALICE", channel: str = "C0DEPLOYS", response_url: str = "") -> str:
    return urlencode(
        {
            "token": "unused",
            "team_id": "T0TEAM",
            "team_domain": "example",
            "channel_id": channel,
            "channel_name": "deploys",
            "user_id": user,
            "user_name": user.lower(),
            "command": "/deploy",
            "text": text,
            "api_app_id": "A0APP",
            "response_url": response_url,
            "trigger_id": "1.2.3",
        }
    )


def button_body(
    action: str, deployment_id: str, *, user: str = "U0ALICE", response_url: str = "", message_ts: str = "1.1"
) -> str:
    payload: dict[str, Any] = {
        "type": "block_actions",
        "team": {"id": "T0TEAM", "domain": "example"},
        "user": {"id": user, "username": user.lower(), "team_id": "T0TEAM"},
        "api_app_id": "A0APP",
        "token": "unused",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": "C0DEPLOYS", "is_ephemeral": False},
        "trigger_id": "1.2.3",
        "channel": {"id": "C0DEPLOYS", "name": "deploys"},
        "message": {"ts": message_ts, "text": "deployment"},
        "response_url": response_url,
        "actions": [
            {
                "type": "button",
                "action_id": f"deploy.{action}",
                "block_id": "deployment-actions",
                "value": deployment_id,
                "text": {"type": "plain_text", "text": action},
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    return urlencode({"payload": json.dumps(payload)})


class ScriptedAgents:
    """One task per host, long-polling the real Fleet port and answering every command with success (or
    ``fail`` for the given (host, event) pairs)."""

    def __init__(self, deployer: Any, hosts: list[str], *, fail: set[tuple[str, str]] | None = None) -> None:
        self.deployer, self.fail = deployer, fail or set()
        self.tasks = [asyncio.ensure_future(self._agent(h)) for h in hosts]

    async def _agent(self, host: str) -> None:
        fleet = self.deployer.fleet
        while True:
            command = await fleet.next_command(host, wait=0.5)
            if command is None:
                continue
            failed = (host, command["event"]) in self.fail
            result = {"status": "Failed", "error_code": 4, "message": "script failed"} if failed else {}
            result = result or {"status": "Succeeded"}
            await fleet.report_result(host, command["id"], {**result, "log_tail": f"{host} {command['event']} output"})

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
