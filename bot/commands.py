"""The chat grammar (pure): ``/deploy ...`` text in, one typed command value out, or a ParseError.

Shared by Slack slash commands and GitHub pull-request comments (bot/github/comment_commands.py), so both fronts
accept the same words. A front that knows which application is meant (a comment on a repository that feeds exactly
one) passes it as ``default_application``: then ``to ENV``, ``plan to ENV`` and ``rollback in ENV`` name it.
Verbs and keywords ignore case; application and environment names ignore case too and, when a ``Catalog`` of the
configured names is given, come back in their declared spelling — an unknown one is named in the error with the
closest known name. A malformed line gets the verb's usage line and, when one can be guessed, the closest valid
command ("did you mean ...").
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

USAGE: dict[str, str] = {
    "deploy": "/deploy APP[@REF] to ENV [with CONFIG]",
    "promote": "/deploy promote APP [from ENV] to ENV",
    "rollback": "/deploy rollback APP in ENV",
    "stop": "/deploy stop ID",
    "pause": "/deploy pause ID",
    "resume": "/deploy resume ID",
    "continue": "/deploy continue ID",
    "approve": "/deploy approve ID",
    "reject": "/deploy reject ID [reason]",
    "status": "/deploy status [APP|ID]",
    "where": "/deploy where APP",
    "history": "/deploy history APP [ENV]",
    "lock": "/deploy lock APP ENV [reason]",
    "unlock": "/deploy unlock APP ENV",
    "plan": "/deploy plan APP to ENV",
    "help": "/deploy help",
}
VERBS = tuple(v for v in USAGE if v != "deploy")
CONTROL_VERBS = ("stop", "pause", "resume", "continue")
DECISION_VERBS = ("approve", "reject")
DEPLOYMENT_ID = re.compile(r"^d-[A-Z0-9]{9}$", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/~^-]*$")

Catalog = Mapping[str, Sequence[str]]
"""Configured application names -> their environments (declared spelling)."""


@dataclass(frozen=True, slots=True)
class Deploy:
    application: str
    environment: str
    ref: str | None = None
    config: str | None = None


@dataclass(frozen=True, slots=True)
class Promote:
    application: str
    target: str
    source: str | None = None  # None: the environment before ``target`` in promotion order


@dataclass(frozen=True, slots=True)
class Rollback:
    application: str
    environment: str


@dataclass(frozen=True, slots=True)
class Control:
    action: str  # stop | pause | resume | continue
    deployment_id: str


@dataclass(frozen=True, slots=True)
class Decide:
    decision: str  # approve | reject
    deployment_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Status:
    application: str | None = None
    deployment_id: str | None = None


@dataclass(frozen=True, slots=True)
class Where:
    application: str


@dataclass(frozen=True, slots=True)
class History:
    application: str
    environment: str | None = None


@dataclass(frozen=True, slots=True)
class Lock:
    application: str
    environment: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Unlock:
    application: str
    environment: str


@dataclass(frozen=True, slots=True)
class Plan:
    application: str
    environment: str


@dataclass(frozen=True, slots=True)
class Help:
    pass


Command = Deploy | Promote | Rollback | Control | Decide | Status | Where | History | Lock | Unlock | Plan | Help


_Parser = Callable[[list[str], "_Names"], Command]


class ParseError(Exception):
    """A line that is not a command: what is wrong, the usage line, and the closest valid command if any."""

    def __init__(self, message: str, usage: str, suggestion: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage
        self.suggestion = suggestion

    def __str__(self) -> str:
        text = f"{self.message}\nUsage: {self.usage}"
        return text + (f"\nDid you mean `{self.suggestion}`?" if self.suggestion else "")


def help_text() -> str:
    return "\n".join(f"`{line}`" for line in USAGE.values())


def parse_command(text: str, catalog: Catalog | None = None, *, default_application: str | None = None) -> Command:
    """Parse the text after ``/deploy``; raises ParseError. ``catalog`` checks and normalizes names;
    ``default_application`` is the application a command without one means."""
    words = text.split()
    if default_application is not None:
        words = with_default_application(words, default_application)
    if not words:
        raise ParseError("say what to deploy where", USAGE["deploy"], "/deploy help")
    verb = words[0].casefold()
    parser = _PARSERS.get(verb)
    if parser is not None:
        return parser(words[1:], _Names(catalog))
    return _deploy_or_unknown(words, _Names(catalog))


def with_default_application(words: Sequence[str], application: str) -> list[str]:
    """``to ENV`` → ``APP to ENV``, ``plan to ENV`` → ``plan APP to ENV``, ``rollback in ENV`` →
    ``rollback APP in ENV``; any other words as they are."""
    words = list(words)
    if len(words) == 2 and _keyword(words[0], "to"):
        return [application, *words]
    if len(words) == 3 and (words[0].casefold(), words[1].casefold()) in (("plan", "to"), ("rollback", "in")):
        return [words[0], application, *words[1:]]
    if len(words) == 4 and _keyword(words[0], "to") and _keyword(words[2], "with"):
        return [application, *words]
    return words


# -- names ---------------------------------------------------------------------------------------------------


class _Names:
    """Checks names against the catalog (when there is one); errors name the unknown one and the closest."""

    def __init__(self, catalog: Catalog | None) -> None:
        self.catalog = catalog

    def app(self, name: str, usage: str, rebuild: _Rebuild | None = None) -> str:
        if not _NAME.match(name):
            raise ParseError(f"{name!r} is not an application name", usage)
        if self.catalog is None:
            return name
        found = _match(name, self.catalog)
        if found is None:
            close = _closest(name, self.catalog)
            hint = f" (did you mean {close}?)" if close else ""
            known = ", ".join(self.catalog) or "none"
            raise ParseError(
                f"unknown application {name!r}{hint}; known: {known}",
                usage,
                rebuild(close) if rebuild and close else None,
            )
        return found

    def env(self, app: str, name: str, usage: str, rebuild: _Rebuild | None = None) -> str:
        if not _NAME.match(name):
            raise ParseError(f"{name!r} is not an environment name", usage)
        if self.catalog is None or app not in self.catalog:
            return name
        envs = self.catalog[app]
        found = _match(name, envs)
        if found is None:
            close = _closest(name, envs)
            hint = f" (did you mean {close}?)" if close else ""
            raise ParseError(
                f"unknown environment {name!r} of {app}{hint}; {app} has: {', '.join(envs)}",
                usage,
                rebuild(close) if rebuild and close else None,
            )
        return found


class _Rebuild:
    """Rewrites the command with one corrected word, for "did you mean"."""

    def __init__(self, words: Sequence[str], index: int) -> None:
        self.words, self.index = list(words), index

    def __call__(self, replacement: str) -> str:
        words = [*self.words]
        words[self.index] = replacement
        return "/deploy " + " ".join(words)


def _match(name: str, known: Sequence[str] | Mapping[str, object]) -> str | None:
    wanted = name.casefold()
    return next((k for k in known if k.casefold() == wanted), None)


def _closest(name: str, known: Sequence[str] | Mapping[str, object]) -> str | None:
    by_fold = {k.casefold(): k for k in known}
    prefixed = [k for fold, k in by_fold.items() if fold.startswith(name.casefold())]
    if len(prefixed) == 1:  # "prod" for "production"
        return prefixed[0]
    close = difflib.get_close_matches(name.casefold(), list(by_fold), n=1, cutoff=0.6)
    return by_fold[close[0]] if close else None


def _keyword(word: str, expected: str) -> bool:
    return word.casefold() == expected


def _near(word: str, expected: str) -> bool:
    return difflib.SequenceMatcher(None, word.casefold(), expected).ratio() >= 0.5


# -- the verbs -----------------------------------------------------------------------------------------------


def _deploy_or_unknown(words: list[str], names: _Names) -> Command:
    """``APP[@REF] to ENV [with CONFIG]``, or a misspelt verb."""
    usage = USAGE["deploy"]
    first = words[0]
    close_verb = difflib.get_close_matches(first.casefold(), VERBS, n=1, cutoff=0.75)
    deploy_form = len(words) > 1 and _keyword(words[1], "to")
    if close_verb and not deploy_form:
        fixed = "/deploy " + " ".join([close_verb[0], *words[1:]])
        raise ParseError(f"unknown command {first!r}", USAGE[close_verb[0]], fixed)
    app_word, _, ref = first.partition("@")
    if "@" in first and not _REF.match(ref):
        raise ParseError(f"{ref!r} is not a git ref", usage)
    rest = words[1:]
    if len(rest) == 1 or (len(rest) >= 2 and not _keyword(rest[0], "to")):
        env_at = 1 if len(rest) >= 2 and _near(rest[0], "to") else 0
        suggestion = " ".join([first, "to", *rest[env_at:]])
        raise ParseError("expected `to ENV` after the application", usage, "/deploy " + suggestion)
    if not rest:
        raise ParseError(f"deploy {first} where?", usage, f"/deploy {first} to ENV")
    if len(rest) < 2:
        raise ParseError("expected an environment after `to`", usage)
    config = None
    tail = rest[2:]
    if tail:
        if not _keyword(tail[0], "with") or len(tail) != 2:
            corrected = None if _keyword(tail[-1], "with") else " ".join([first, "to", rest[1], "with", tail[-1]])
            raise ParseError(
                "expected `with CONFIG` after the environment", usage, corrected and "/deploy " + corrected
            )
        config = tail[1]
    app = names.app(app_word, usage, _Rebuild([app_word + (f"@{ref}" if ref else ""), *rest], 0) if not ref else None)
    env = names.env(app, rest[1], usage, _Rebuild(words, 2))
    return Deploy(app, env, ref or None, config)


def _promote(args: list[str], names: _Names) -> Command:
    usage = USAGE["promote"]
    if len(args) == 3 and _keyword(args[1], "to"):
        app = names.app(args[0], usage, _Rebuild(["promote", *args], 1))
        return Promote(app, names.env(app, args[2], usage, _Rebuild(["promote", *args], 3)))
    if len(args) == 5 and _keyword(args[1], "from") and _keyword(args[3], "to"):
        app = names.app(args[0], usage, _Rebuild(["promote", *args], 1))
        source = names.env(app, args[2], usage, _Rebuild(["promote", *args], 3))
        return Promote(app, names.env(app, args[4], usage, _Rebuild(["promote", *args], 5)), source)
    suggestion = None
    if len(args) == 2:
        suggestion = f"/deploy promote {args[0]} to {args[1]}"
    elif len(args) == 3:
        suggestion = f"/deploy promote {args[0]} from {args[1]} to {args[2]}"
    elif len(args) == 4:
        suggestion = f"/deploy promote {args[0]} from {args[1]} to {args[3]}"
    return _fail("promote", "expected `promote APP [from ENV] to ENV`", usage, suggestion)


def _rollback(args: list[str], names: _Names) -> Command:
    usage = USAGE["rollback"]
    if len(args) == 3 and _keyword(args[1], "in"):
        app = names.app(args[0], usage, _Rebuild(["rollback", *args], 1))
        return Rollback(app, names.env(app, args[2], usage, _Rebuild(["rollback", *args], 3)))
    suggestion = None
    if len(args) == 2:
        suggestion = f"/deploy rollback {args[0]} in {args[1]}"
    elif len(args) == 3:
        suggestion = f"/deploy rollback {args[0]} in {args[2]}"
    return _fail("rollback", "expected `rollback APP in ENV`", usage, suggestion)


def _deployment_id(verb: str, args: list[str], *, extra: bool = False) -> str:
    usage = USAGE[verb]
    if not args or (len(args) > 1 and not extra):
        return _fail(verb, f"`{verb}` takes one deployment id (d-XXXXXXXXX)", usage, None)
    if not DEPLOYMENT_ID.match(args[0]):
        candidate = args[0].upper().replace("D-", "d-", 1)
        suggestion = f"/deploy {verb} d-{candidate}" if re.fullmatch(r"[A-Z0-9]{9}", candidate) else None
        return _fail(verb, f"{args[0]!r} is not a deployment id (d- and nine letters or digits)", usage, suggestion)
    return "d-" + args[0][2:].upper()


def _control(verb: str) -> _Parser:
    def parse(args: list[str], names: _Names) -> Command:
        return Control(verb, _deployment_id(verb, args))

    return parse


def _decide(verb: str) -> _Parser:
    def parse(args: list[str], names: _Names) -> Command:
        deployment_id = _deployment_id(verb, args, extra=verb == "reject")
        return Decide(verb, deployment_id, " ".join(args[1:]))

    return parse


def _status(args: list[str], names: _Names) -> Command:
    if not args:
        return Status()
    if len(args) > 1:
        return _fail("status", "`status` takes at most one application or deployment id", USAGE["status"], None)
    if DEPLOYMENT_ID.match(args[0]):
        return Status(deployment_id="d-" + args[0][2:].upper())
    return Status(application=names.app(args[0], USAGE["status"], _Rebuild(["status", *args], 1)))


def _where(args: list[str], names: _Names) -> Command:
    if len(args) != 1:
        return _fail("where", "`where` takes one application", USAGE["where"], None)
    return Where(names.app(args[0], USAGE["where"], _Rebuild(["where", *args], 1)))


def _history(args: list[str], names: _Names) -> Command:
    usage = USAGE["history"]
    if not 1 <= len(args) <= 2:
        return _fail("history", "`history` takes an application and optionally an environment", usage, None)
    app = names.app(args[0], usage, _Rebuild(["history", *args], 1))
    env = names.env(app, args[1], usage, _Rebuild(["history", *args], 2)) if len(args) == 2 else None
    return History(app, env)


def _lock(args: list[str], names: _Names) -> Command:
    if len(args) < 2:
        return _fail("lock", "`lock` takes an application and an environment", USAGE["lock"], None)
    app = names.app(args[0], USAGE["lock"], _Rebuild(["lock", *args], 1))
    env = names.env(app, args[1], USAGE["lock"], _Rebuild(["lock", *args], 2))
    return Lock(app, env, " ".join(args[2:]))


def _unlock(args: list[str], names: _Names) -> Command:
    if len(args) != 2:
        suggestion = f"/deploy unlock {args[0]} {args[-1]}" if len(args) > 2 else None
        return _fail("unlock", "`unlock` takes an application and an environment", USAGE["unlock"], suggestion)
    app = names.app(args[0], USAGE["unlock"], _Rebuild(["unlock", *args], 1))
    return Unlock(app, names.env(app, args[1], USAGE["unlock"], _Rebuild(["unlock", *args], 2)))


def _plan(args: list[str], names: _Names) -> Command:
    usage = USAGE["plan"]
    if len(args) == 3 and _keyword(args[1], "to"):
        app = names.app(args[0], usage, _Rebuild(["plan", *args], 1))
        return Plan(app, names.env(app, args[2], usage, _Rebuild(["plan", *args], 3)))
    suggestion = None
    if len(args) == 2:
        suggestion = f"/deploy plan {args[0]} to {args[1]}"
    elif len(args) == 3:
        suggestion = f"/deploy plan {args[0]} to {args[2]}"
    return _fail("plan", "expected `plan APP to ENV`", usage, suggestion)


def _help(args: list[str], names: _Names) -> Command:
    return Help()


def _fail(verb: str, message: str, usage: str, suggestion: str | None) -> NoReturn:
    raise ParseError(message, usage, suggestion)


_PARSERS: dict[str, _Parser] = {
    "promote": _promote,
    "rollback": _rollback,
    **{verb: _control(verb) for verb in CONTROL_VERBS},
    **{verb: _decide(verb) for verb in DECISION_VERBS},
    "status": _status,
    "where": _where,
    "history": _history,
    "lock": _lock,
    "unlock": _unlock,
    "plan": _plan,
    "help": _help,
}
