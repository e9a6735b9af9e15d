"""Trigger messages POSTed to a webhook, signed so the receiver can tell they come from deploybot and are fresh.

The body is the CodeDeploy-shaped JSON (engine/core/triggers.py). Headers:

  - ``X-Deploybot-Timestamp``: when this attempt was sent, epoch seconds;
  - ``X-Deploybot-Signature``: ``v1=`` + hex HMAC-SHA256 of ``<timestamp>.<body>``, keyed with the secret read from
    the environment variable the trigger names (``secret_env``) at each attempt;
  - ``X-Deploybot-Event``: the event name; ``X-Deploybot-Delivery``: the outbox key, the same on every retry (the
    receiver's deduplication key: delivery is at least once).

A 2xx answer is delivered. A 408, 429, 5xx, a timeout or a refused connection is tried again later (the outbox's
backoff); any other 4xx, or a secret that is not set, is not (the entry fails, and the log says why).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from engine.core.triggers import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    DeliveryFailed,
    sign_webhook,
)

TIMEOUT = aiohttp.ClientTimeout(total=10, connect=5)
_RETRYABLE_4XX = frozenset({408, 425, 429})


class WebhookTriggerSender:
    """``TriggerSender`` for ``webhook`` targets. ``now``: the clock stamping each attempt (the engine's)."""

    def __init__(self, now: Callable[[], float], *, environ: Mapping[str, str] | None = None) -> None:
        self.now = now
        self.environ = environ if environ is not None else os.environ
        self._session: aiohttp.ClientSession | None = None

    async def send(self, delivery: Mapping[str, Any]) -> None:
        target = delivery["target"]
        secret_env = str(target.get("secret_env") or "")
        secret = self.environ.get(secret_env)
        if not secret:
            raise DeliveryFailed(f"the webhook secret's environment variable {secret_env} is not set", permanent=True)
        body = json.dumps(delivery["message"], separators=(",", ":")).encode()
        timestamp = f"{self.now():.3f}"
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign_webhook(secret.encode(), timestamp, body),
            EVENT_HEADER: str(delivery["event"]),
            DELIVERY_HEADER: str(delivery.get("key") or ""),
        }
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        try:
            async with self._session.post(str(target["address"]), data=body, headers=headers) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryFailed(f"{target['address']} did not answer: {type(exc).__name__}: {exc}") from exc
        if 200 <= status < 300:
            return
        permanent = 400 <= status < 500 and status not in _RETRYABLE_4XX
        raise DeliveryFailed(f"{target['address']} answered HTTP {status}", permanent=permanent)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
