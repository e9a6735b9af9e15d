"""``s3://`` names of revisions, read without touching S3 (pure): the CLI's ``push``, the API's revisions and
``plan`` all check a name the same way before anything is fetched."""

from __future__ import annotations

import re
from typing import TypedDict
from urllib.parse import parse_qs

from engine.core.errors import BadRevisionName


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ("bucket", "some/prefix"); raises ValueError naming what is wrong."""
    if not uri.startswith("s3://"):
        raise ValueError(f"expected s3://BUCKET/PREFIX, got {uri!r}")
    bucket, _, path = uri[len("s3://") :].partition("/")
    if not 3 <= len(bucket) <= 63 or not re.fullmatch(r"[a-z0-9][a-z0-9.-]*[a-z0-9]", bucket):
        shown = bucket if len(bucket) <= 80 else bucket[:60] + f"… ({len(bucket)} characters)"
        raise ValueError(f"{shown!r} is not an S3 bucket name (3-63 lower-case letters, digits, dots, hyphens)")
    return bucket, path.strip("/")


class S3RevisionUrl(TypedDict):
    """A parsed ``s3://`` revision URL; its keys are ``fetch_s3_revision``'s parameters of the same names."""

    bucket: str
    key: str
    version: str | None
    etag: str | None


MAX_KEY_LENGTH = 1024  # S3's own limit on an object key, in bytes


def parse_s3_revision_url(url: str) -> S3RevisionUrl:
    """``s3://bucket/key[?versionId=V&etag=E]`` → {bucket, key, version, etag}; raises ValueError."""
    path, _, query = url.partition("?")
    bucket, key = parse_s3_uri(path)
    if not key:
        raise ValueError(f"expected s3://BUCKET/KEY[?versionId=V&etag=E], got {url[:200]!r}")
    if len(key.encode()) > MAX_KEY_LENGTH:
        raise ValueError(f"an S3 object key is at most {MAX_KEY_LENGTH} bytes, got {len(key.encode())}")
    pinned = parse_qs(query)
    return {
        "bucket": bucket,
        "key": key,
        "version": next(iter(pinned.get("versionId") or ()), None),
        "etag": next(iter(pinned.get("etag") or ()), None),
    }


def checked_s3_revision_url(url: str) -> S3RevisionUrl:
    """``parse_s3_revision_url`` for a revision a request names: ``BadRevisionName`` (a 400 at the doors) when it
    cannot name an object, before anything is fetched."""
    try:
        return parse_s3_revision_url(url)
    except ValueError as exc:
        raise BadRevisionName(url, str(exc)) from None
