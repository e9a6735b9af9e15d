"""The GitHub front: signed webhooks (push, pull_request, deployment), merge-triggered deployments, GitHub
deployment statuses and the AppSpec check on pull requests. ``setup_github`` is the one entry point for bot/app.py."""

from __future__ import annotations

from bot.github.front import GITHUB, GitHubFront, describe, setup_github

__all__ = ["GITHUB", "GitHubFront", "describe", "setup_github"]
