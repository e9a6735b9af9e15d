"""CodeDeploy ``RevisionLocation``s: checked, cleaned, and classified (pure).

Four kinds reach deploybot:

- ``S3`` with the reserved bucket ``deploybot``: a revision deploybot already has. The key is ``sha256:<hex>`` (a
  stored bundle, e.g. one uploaded with ``deploybot deploy``), or a server-side path or ``git:REF`` resolved as
  ``deploybot deploy --revision`` would. This shape was chosen over a new revision type because every CodeDeploy
  client can already write it (``aws deploy create-deployment --s3-location bucket=deploybot,key=sha256:...``),
  and GetDeployment hands it back the same way;
- ``S3`` with any other bucket: an object fetched from S3 (``bundleType`` tar, tgz, zip, or YAML/JSON for an AppSpec
  alone; ``version`` and ``eTag`` pin it);
- ``GitHub``: ``repository`` (owner/name) at ``commitId``, downloaded as the commit's tarball;
- ``AppSpecContent`` (or its older name ``String``): a Lambda or ECS AppSpec given inline, stored as a bundle that
  holds only ``appspec.yml``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from bot.codedeploy.shapes import ApiError

REVISION_BUCKET = "deploybot"
BUNDLE_TYPES = ("tar", "tgz", "zip", "YAML", "JSON")
INLINE_TYPES = {"AppSpecContent": "appSpecContent", "String": "string"}
_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_COMMIT = re.compile(r"^[0-9a-fA-F]{7,40}$")
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")


def normalized_location(revision: object) -> dict[str, Any]:
    """The location with only the members its ``revisionType`` uses, empty ones dropped; raises ApiError
    (RevisionRequired, InvalidRevision) naming what is wrong."""
    if revision is None:
        raise ApiError("RevisionRequired", "revision is required")
    if not isinstance(revision, Mapping):
        raise ApiError("InvalidRevision", "revision must be a RevisionLocation object")
    kind = revision.get("revisionType")
    if kind == "S3":
        return {"revisionType": "S3", "s3Location": _s3(revision.get("s3Location"))}
    if kind == "GitHub":
        return {"revisionType": "GitHub", "gitHubLocation": _github(revision.get("gitHubLocation"))}
    if kind in INLINE_TYPES:
        member = INLINE_TYPES[kind]
        return {"revisionType": kind, member: _inline(revision.get(member), member)}
    raise ApiError(
        "InvalidRevision", f"revisionType {kind!r} is not one of S3, GitHub, AppSpecContent, String (see the README)"
    )


def _s3(location: object) -> dict[str, Any]:
    if not isinstance(location, Mapping):
        raise ApiError("InvalidRevision", "an S3 revision needs s3Location {bucket, key}")
    out = {k: str(location[k]).strip() for k in ("bucket", "key", "bundleType", "version", "eTag") if location.get(k)}
    if not out.get("bucket") or not out.get("key"):
        raise ApiError("InvalidRevision", "s3Location needs both bucket and key")
    if out.get("bundleType") and out["bundleType"] not in BUNDLE_TYPES:
        raise ApiError("InvalidRevision", f"bundleType {out['bundleType']!r} is not one of {', '.join(BUNDLE_TYPES)}")
    if out["bucket"] == REVISION_BUCKET:  # deploybot's own bundles are canonical tar.gz files, never versioned
        if out["key"].startswith("sha256:") and not _SHA256.match(out["key"]):
            raise ApiError("InvalidRevision", f"key {out['key']!r} is not sha256: and 64 lower-case hex digits")
        return {"bucket": REVISION_BUCKET, "key": out["key"], "bundleType": "tgz"}
    return out


def _github(location: object) -> dict[str, Any]:
    if not isinstance(location, Mapping):
        raise ApiError("InvalidRevision", "a GitHub revision needs gitHubLocation {repository, commitId}")
    repository = str(location.get("repository") or "").strip()
    commit = str(location.get("commitId") or "").strip()
    if not _REPOSITORY.match(repository):
        raise ApiError("InvalidRevision", f"repository {repository!r} is not owner/name")
    if not _COMMIT.match(commit):
        raise ApiError("InvalidRevision", f"commitId {commit!r} is not a commit SHA (7 to 40 hex digits)")
    return {"repository": repository, "commitId": commit.lower()}


def _inline(location: object, member: str) -> dict[str, Any]:
    content = location.get("content") if isinstance(location, Mapping) else None
    if not isinstance(content, str) or not content.strip():
        raise ApiError("InvalidRevision", f"{member}.content must hold the AppSpec text")
    digest = hashlib.sha256(content.encode()).hexdigest()
    given = location.get("sha256") if isinstance(location, Mapping) else None
    if given and str(given).lower() != digest:
        raise ApiError("InvalidRevision", f"{member}.sha256 {given} does not match the content (sha256 {digest})")
    return {"content": content, "sha256": digest}


def stored_key(location: Mapping[str, Any]) -> str | None:
    """The deploybot revision a ``deploybot``-bucket location names (``sha256:…``, a path, ``git:REF``), else None."""
    s3 = location.get("s3Location") or {}
    if location.get("revisionType") == "S3" and s3.get("bucket") == REVISION_BUCKET:
        return str(s3["key"])
    return None


def stored_location(sha256: str) -> dict[str, Any]:
    """How a stored revision is named in CodeDeploy's shapes."""
    return {
        "revisionType": "S3",
        "s3Location": {"bucket": REVISION_BUCKET, "key": f"sha256:{sha256}", "bundleType": "tgz"},
    }


def is_pinned(location: Mapping[str, Any]) -> bool:
    """True when the location always names the same content (so a bundle fetched once can be reused)."""
    kind = location.get("revisionType")
    if kind == "S3":
        s3 = location["s3Location"]
        return bool(s3.get("version") or s3.get("eTag")) or str(s3.get("key", "")).startswith("sha256:")
    return kind in ("GitHub", *INLINE_TYPES)


def inline_content(location: Mapping[str, Any]) -> str | None:
    member = INLINE_TYPES.get(str(location.get("revisionType")))
    return str(location[member]["content"]) if member else None
