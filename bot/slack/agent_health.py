"""Trigger messages and agent-health announcements posted to a Slack channel.

The engine's trigger outbox (engine/runtime/triggers.py) stores one entry per announcement: "the agent on web-2
has gone silent" once per silence and "is back online" once when it talks again, in the channel of every
application deploying to that host (``slack_channel``), and the messages of group triggers whose target is
``slack: CHANNEL``. This sender posts an entry's one-line text. A rate limit, a 5xx or an unreachable Slack is
retried by the outbox with backoff; an answer that will not change (``channel_not_found``, ``not_in_channel``)
is not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient


class DeliveryFailed(Exception):
    """A failed post; ``permanent`` tells the outbox not to try again (its contract, engine/runtime/triggers.py)."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


_RETRYABLE = frozenset({"ratelimited", "internal_error", "service_unavailable", "request_timeout", "fatal_error"})


class SlackChannelSender:
    """``TriggerSender`` for ``slack`` targets."""

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client

    async def send(self, delivery: Mapping[str, Any]) -> None:
        channel = str(delivery["target"]["address"])
        try:
            await self.client.chat_postMessage(channel=channel, text=str(delivery["text"]))
        except SlackApiError as exc:
            error = str(exc.response.get("error") or "")
            status = int(getattr(exc.response, "status_code", 200) or 200)
            retry = error in _RETRYABLE or status >= 500 or status == 429
            raise DeliveryFailed(
                f"Slack refused the message to {channel}: {error or status}", permanent=not retry
            ) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise DeliveryFailed(f"Slack did not answer: {type(exc).__name__}: {exc}") from exc
