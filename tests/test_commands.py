"""The chat grammar: every command form, case-insensitivity, and the usage + "did you mean" of malformed lines."""

from __future__ import annotations

import pytest

from bot.commands import (
    USAGE,
    Control,
    Decide,
    Deploy,
    Help,
    History,
    Lock,
    ParseError,
    Plan,
    Promote,
    Rollback,
    Status,
    Unlock,
    Where,
    help_text,
    parse_command,
)

CATALOG = {"hello": ["staging", "production"], "api": ["dev", "prod"]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello to staging", Deploy("hello", "staging")),
        ("HELLO TO Staging", Deploy("hello", "staging")),
        ("hello@v1.2.3 to production", Deploy("hello", "production", ref="v1.2.3")),
        (
            "hello@feature/x to staging with CodeDeployDefault.AllAtOnce",
            Deploy("hello", "staging", "feature/x", "CodeDeployDefault.AllAtOnce"),
        ),
        ("promote hello to production", Promote("hello", "production")),
        ("Promote hello FROM staging to production", Promote("hello", "production", "staging")),
        ("rollback hello in production", Rollback("hello", "production")),
        ("stop d-ABCDEFGH1", Control("stop", "d-ABCDEFGH1")),
        ("pause d-abcdefgh1", Control("pause", "d-ABCDEFGH1")),
        ("resume d-ABCDEFGH1", Control("resume", "d-ABCDEFGH1")),
        ("continue d-ABCDEFGH1", Control("continue", "d-ABCDEFGH1")),
        ("approve d-ABCDEFGH1", Decide("approve", "d-ABCDEFGH1")),
        ("reject d-ABCDEFGH1 not on a friday", Decide("reject", "d-ABCDEFGH1", "not on a friday")),
        ("status", Status()),
        ("status hello", Status(application="hello")),
        ("status d-ABCDEFGH1", Status(deployment_id="d-ABCDEFGH1")),
        ("where Hello", Where("hello")),
        ("history hello", History("hello")),
        ("history hello PRODUCTION", History("hello", "production")),
        ("lock hello production db migration", Lock("hello", "production", "db migration")),
        ("unlock hello production", Unlock("hello", "production")),
        ("plan hello to production", Plan("hello", "production")),
        ("help", Help()),
        ("  HELP  ", Help()),
    ],
)
def test_valid_commands(text: str, expected: object) -> None:
    assert parse_command(text, CATALOG) == expected


def test_without_a_catalog_names_are_kept_as_typed() -> None:
    assert parse_command("Other to QA") == Deploy("Other", "QA")


@pytest.mark.parametrize(
    ("text", "message", "usage", "suggestion"),
    [
        ("hello staging", "expected `to ENV`", "deploy", "/deploy hello to staging"),
        ("hello ot staging", "expected `to ENV`", "deploy", "/deploy hello to staging"),
        ("hello", "deploy hello where?", "deploy", "/deploy hello to ENV"),
        ("", "say what to deploy where", "deploy", "/deploy help"),
        (
            "helo to staging",
            "unknown application 'helo' (did you mean hello?); known: hello, api",
            "deploy",
            "/deploy hello to staging",
        ),
        (
            "hello to prod",
            "unknown environment 'prod' of hello (did you mean production?)",
            "deploy",
            "/deploy hello to production",
        ),
        ("hello to qa", "unknown environment 'qa' of hello; hello has: staging, production", "deploy", None),
        ("rolback hello in staging", "unknown command 'rolback'", "rollback", "/deploy rollback hello in staging"),
        ("rollback hello staging", "expected `rollback APP in ENV`", "rollback", "/deploy rollback hello in staging"),
        ("promote hello staging production", "expected", "promote", "/deploy promote hello from staging to production"),
        ("promote hello production", "expected", "promote", "/deploy promote hello to production"),
        ("stop", "takes one deployment id", "stop", None),
        ("stop 123", "is not a deployment id", "stop", None),
        ("approve ABCDEFGH1", "is not a deployment id", "approve", "/deploy approve d-ABCDEFGH1"),
        ("plan hello production", "expected `plan APP to ENV`", "plan", "/deploy plan hello to production"),
        (
            "unlock hello production now",
            "takes an application and an environment",
            "unlock",
            "/deploy unlock hello now",
        ),
        ("where", "takes one application", "where", None),
        ("hello to staging with", "expected `with CONFIG`", "deploy", None),
        ("hello to staging using X", "expected `with CONFIG`", "deploy", "/deploy hello to staging with X"),
        ("hello@..bad to staging", "is not a git ref", "deploy", None),
    ],
)
def test_malformed_lines_get_usage_and_the_closest_command(
    text: str, message: str, usage: str, suggestion: str | None
) -> None:
    with pytest.raises(ParseError) as info:
        parse_command(text, CATALOG)
    assert message in info.value.message
    assert info.value.usage == USAGE[usage]
    if suggestion is not None:
        assert info.value.suggestion == suggestion
        assert f"Did you mean `{suggestion}`?" in str(info.value)
    assert f"Usage: {USAGE[usage]}" in str(info.value)


def test_help_lists_every_form() -> None:
    assert help_text().count("\n") == len(USAGE) - 1
    assert "`/deploy lock APP ENV [reason]`" in help_text()
