"""The Slack front: bolt listeners (bot.slack.app), requests stored as intents (intents) and acted on once
(chatops), whether a click is still true (clicks), and the threaded notifier with its outbox (notifier, outbox,
threads)."""

from __future__ import annotations

from bot.slack.app import setup_slack

__all__ = ["setup_slack"]
