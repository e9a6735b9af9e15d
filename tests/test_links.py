"""Signed, expiring page links (pure) and the page URL builder."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from bot.pages.links import LinkCheck, page_url, pages_secret, sign, signed_query, verify
from bot.settings import Settings

PATH = "/deployments/d-ABC"
NOW = 1_800_000_000.0
EXPIRES = int(NOW) + 60
GOOD = sign(PATH, EXPIRES, "k")


@pytest.mark.parametrize(
    ("path", "exp", "sig", "expected"),
    [
        (PATH, str(EXPIRES), GOOD, LinkCheck.VALID),
        (PATH, None, None, LinkCheck.MISSING),
        (PATH, str(EXPIRES), None, LinkCheck.MALFORMED),
        (PATH, "tomorrow", GOOD, LinkCheck.MALFORMED),
        (PATH, str(EXPIRES + 3600), GOOD, LinkCheck.TAMPERED),  # an extended expiry is tampering, not expiry
        ("/deployments/d-OTHER", str(EXPIRES), GOOD, LinkCheck.TAMPERED),
        (PATH, str(EXPIRES), GOOD[:-1] + ("0" if GOOD[-1] != "0" else "1"), LinkCheck.TAMPERED),
    ],
)
def test_verify(path: str, exp: str | None, sig: str | None, expected: LinkCheck) -> None:
    assert verify(path, exp, sig, "k", now=NOW) is expected


def test_expired_link_is_reported_as_expired() -> None:
    assert verify(PATH, str(EXPIRES), GOOD, "k", now=EXPIRES + 1) is LinkCheck.EXPIRED


def test_signature_depends_on_the_secret() -> None:
    assert sign(PATH, EXPIRES, "k") != sign(PATH, EXPIRES, "other")
    assert verify(PATH, str(EXPIRES), GOOD, "other", now=NOW) is LinkCheck.TAMPERED


def test_signed_query_round_trips() -> None:
    query = parse_qs(signed_query(PATH, EXPIRES, "k"))
    assert verify(PATH, query["exp"][0], query["sig"][0], "k", now=NOW) is LinkCheck.VALID


def test_secret_prefers_the_pages_secret_then_the_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "api-token"
    assert pages_secret(Settings(api_token_file=token_file)) is None
    assert pages_secret(Settings(api_token_file=token_file, api_token="env")) == "env"
    token_file.write_text("from-file\n")
    assert pages_secret(Settings(api_token_file=token_file, api_token="env")) == "from-file"
    assert pages_secret(Settings(api_token_file=token_file, pages_secret="pages")) == "pages"


def test_page_url_is_signed_for_the_ttl(tmp_path: Path) -> None:
    settings = Settings(api_token_file=tmp_path / "none", pages_secret="k")
    url = page_url(settings, "d-ABC", base_url="https://deploy.example/", ttl=timedelta(hours=1), now=NOW)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://deploy.example/deployments/d-ABC"
    query = parse_qs(parts.query)
    assert int(query["exp"][0]) == int(NOW) + 3600
    assert verify(parts.path, query["exp"][0], query["sig"][0], "k", now=NOW) is LinkCheck.VALID


def test_page_url_is_plain_when_unsigned_or_without_a_secret(tmp_path: Path) -> None:
    plain = "https://d.example/deployments/d-ABC"
    with_secret = Settings(api_token_file=tmp_path / "none", pages_secret="k")
    assert page_url(with_secret, "d-ABC", base_url="https://d.example", signed=False) == plain
    assert page_url(Settings(api_token_file=tmp_path / "none"), "d-ABC", base_url="https://d.example") == plain
