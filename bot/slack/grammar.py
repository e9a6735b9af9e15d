"""The ``/deploy`` grammar as Slack takes it (pure): bot.commands' shared verbs, plus ``freeze`` and ``unfreeze``.

A freeze locks every environment at once (the release flow's ``"*"`` lock) and only admins may set or lift it.
These two verbs are Slack's alone for now; they move into bot.commands when another front takes them too.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot import commands as cmd

USAGE = {
    "freeze": "/deploy freeze [reason]",
    "unfreeze": "/deploy unfreeze",
}


@dataclass(frozen=True, slots=True)
class Freeze:
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Unfreeze:
    pass


SlackCommand = cmd.Command | Freeze | Unfreeze


def parse(text: str, catalog: cmd.Catalog | None = None) -> SlackCommand:
    """Parse the text after ``/deploy``; raises bot.commands.ParseError."""
    words = text.split()
    verb = words[0].casefold() if words else ""
    if verb == "freeze":
        return Freeze(" ".join(words[1:]))
    if verb == "unfreeze":
        if len(words) > 1:
            raise cmd.ParseError("`unfreeze` takes no arguments", USAGE["unfreeze"], "/deploy unfreeze")
        return Unfreeze()
    return cmd.parse_command(text, catalog)


def help_text() -> str:
    return cmd.help_text() + "\n" + "\n".join(f"`{line}`" for line in USAGE.values())
