"""The Slack front: bolt listeners (bot.slack.app), command/button actions (chatops) and the threaded notifier."""

from __future__ import annotations

from bot.slack.app import setup_slack

__all__ = ["setup_slack"]
