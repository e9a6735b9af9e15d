"""Who is asking, at the doors that know people by a chat or forge identity (pure).

Each door turns its caller into one deploybot user name before it asks ``engine.may`` (the one permission rule):

- with a ``users`` section, the user whose ``slack:`` id / ``github:`` login this is, or None when nobody declares
  it (the door then refuses, saying which line to add under ``users:``);
- without one, names are free-form: the Slack user id (``U0123ABC``) or the GitHub login itself is the name, so a
  config without ``users`` may list those in ``deployers``, ``approvers`` and ``rollbackers``. The bootstrap admin's
  reserved name is never one of them (a GitHub account could be called that): such a caller is nobody.

The words a door answers with are its own (bot/slack/replies.py, bot/github/triggers.py).
"""

from __future__ import annotations

from engine import BOOTSTRAP_ADMIN, EngineConfig


def _free_form(name: str) -> str | None:
    return None if not name or name.casefold() == BOOTSTRAP_ADMIN else name


def actor_from_slack(config: EngineConfig, slack_id: str) -> str | None:
    """The deploybot user a Slack user id acts as; None when ``users`` is declared and none has this id."""
    if config.users is None:
        return _free_form(slack_id)
    return config.user_by_slack(slack_id)


def actor_from_github(config: EngineConfig, login: str) -> str | None:
    """The deploybot user a GitHub login acts as (GitHub ignores the login's case, and so does the lookup); None
    when ``users`` is declared and none has this login."""
    if config.users is None:
        return _free_form(login)
    return config.user_by_github(login)
