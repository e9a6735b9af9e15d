"""Revisions kept in S3, as CodeDeploy's ``S3Location``: ``push_revision`` uploads one, ``S3Revisions`` fetches one.

Pushing builds the canonical bundle (engine/bundles.py) and uploads it as ``<prefix>/<application>-<sha256[:12]>
.tar.gz`` with the bundle's sha256 in the object's metadata, so the same content always lands under the same key.

Fetching checks what it downloaded before anything else sees it: the object's ETag against the one the caller was
given (the object was not replaced since it was registered), and the content against the ``sha256`` metadata when
the object has one (pushed by us; catches an object altered in place, whose metadata stayed). Any archive S3 holds
works (bundleType ``tgz``, ``tar`` or ``zip``; ``YAML``/``JSON`` is a bare Lambda or ECS AppSpec); it is stored
through the RevisionStore with its location, so hooks get BUNDLE_BUCKET / BUNDLE_KEY / BUNDLE_VERSION /
BUNDLE_ETAG.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode

from botocore.exceptions import BotoCoreError, ClientError

from engine.adapters.aws.accounts import AwsClients, aws_error
from engine.bundles import DEFAULT_MAX_BYTES, build_bundle
from engine.core.errors import BundleError
from engine.core.model import Platform, Revision
from engine.ports import RevisionArchive

COMPONENT = "s3"
BUNDLE_TYPES = ("tgz", "tar", "zip", "YAML", "JSON")  # CodeDeploy's bundleType values
SHA256_METADATA = "sha256"  # x-amz-meta-sha256
_CHUNK = 1024 * 1024
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class S3Location:
    """An uploaded revision: where it is, and the ETag, version and sha256 that identify this very upload."""

    bucket: str
    key: str
    version: str | None
    etag: str | None
    sha256: str | None
    bundle_type: str = "tgz"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def pinned_uri(self) -> str:
        """``s3://bucket/key?versionId=V&etag=E``: this very upload (a later push to the same key is not it);
        ``parse_s3_revision_url`` reads it back."""
        pinned = {"versionId": self.version, "etag": self.etag}
        query = urlencode({k: v for k, v in pinned.items() if v})
        return f"{self.uri}?{query}" if query else self.uri

    def revision_location(self) -> dict[str, Any]:
        """``{"s3": {bucket, key, version, etag, bundle_type}}``: what the API and the revisions table keep."""
        return {"s3": {k: v for k, v in asdict(self).items() if k != "sha256"}}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def object_key(prefix: str, application: str, sha256: str) -> str:
    """``<prefix>/<application>-<sha256[:12]>.tar.gz`` (no leading slash when the prefix is empty)."""
    name = f"{_UNSAFE_KEY_CHARS.sub('-', application).strip('-') or 'revision'}-{sha256[:12]}.tar.gz"
    prefix = prefix.strip("/")
    return f"{prefix}/{name}" if prefix else name


async def push_revision(
    clients: AwsClients, source_dir: Path, bucket: str, prefix: str, *, application: str
) -> S3Location:
    """Bundle ``source_dir`` canonically and upload it (``aws deploy push``); raises BundleError or AdapterError."""
    with tempfile.TemporaryDirectory(prefix="deploybot-push-") as scratch:
        built = await asyncio.to_thread(build_bundle, source_dir, Path(scratch))
        key = object_key(prefix, application, built.sha256)
        s3 = await clients.get("s3")
        try:
            with built.path.open("rb") as body:
                answer = await s3.put_object(
                    Bucket=bucket,
                    Key=key,
                    Body=body,
                    ContentType="application/gzip",
                    Metadata={SHA256_METADATA: built.sha256},
                )
        except (ClientError, BotoCoreError) as exc:
            raise aws_error(COMPONENT, exc) from exc
    return S3Location(bucket, key, answer.get("VersionId"), _unquoted(answer.get("ETag")), built.sha256, "tgz")


class S3Revisions:
    """Fetches revisions from S3 into the revision archive (the RevisionStore), checked on the way."""

    def __init__(self, clients: AwsClients, revisions: RevisionArchive, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.clients = clients
        self.revisions = revisions
        self.max_bytes = max_bytes

    async def fetch(
        self,
        bucket: str,
        key: str,
        *,
        version: str | None = None,
        etag: str | None = None,
        bundle_type: str | None = None,
        platform: Platform = Platform.SERVER,
    ) -> Revision:
        """Download ``s3://bucket/key`` (that ``version``), check it, and store it with its location.

        Raises:
            BundleError: the ETag or the sha256 metadata differs (both values named), an unknown or wrong
                ``bundle_type``, a bundle larger than allowed, or an unsafe archive.
            AdapterError: S3 failed (no such bucket, key or version; access denied; unreachable).
            AppSpecInvalid: the revision's AppSpec is invalid.
        """
        kind = _bundle_type(bundle_type)
        uri = f"s3://{bucket}/{key}" + (f"?versionId={version}" if version else "")
        self.revisions.directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="s3-", dir=self.revisions.directory) as scratch:
            download = Path(scratch) / "object"
            got_etag, got_version, metadata, sha256 = await self._download(bucket, key, version, etag, download, uri)
            expected_sha = metadata.get(SHA256_METADATA)
            if expected_sha and expected_sha.lower() != sha256:
                raise BundleError(
                    "the S3 object does not match its sha256 metadata", f"{uri}: expected {expected_sha}, got {sha256}"
                )
            kind = _checked_kind(download, kind, uri)
            source = download
            if kind in ("YAML", "JSON"):  # a bare AppSpec (Lambda/ECS): a revision whose only file it is
                source = Path(scratch) / "revision"
                source.mkdir()
                download.rename(source / "appspec.yml")
            location = {
                "s3": {"bucket": bucket, "key": key, "version": got_version, "etag": got_etag, "bundle_type": kind}
            }
            return await self.revisions.add(source, label=f"s3://{bucket}/{key}", platform=platform, location=location)

    async def _download(
        self, bucket: str, key: str, version: str | None, etag: str | None, dest: Path, uri: str
    ) -> tuple[str | None, str | None, Mapping[str, str], str]:
        """(ETag, version, metadata, sha256 of the content) of the object, written to ``dest``."""
        s3 = await self.clients.get("s3")
        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version:
            params["VersionId"] = version
        try:
            answer = await s3.get_object(**params)
            stream = answer["Body"]  # aiobotocore's StreamingBody: read(n) in chunks, closed on leaving
            async with stream:
                got_etag = _unquoted(answer.get("ETag"))
                if etag and _unquoted(etag) != got_etag:
                    raise BundleError(
                        "the S3 object's ETag differs from the expected one", f"{uri}: expected {etag}, got {got_etag}"
                    )
                length = answer.get("ContentLength")
                if isinstance(length, int) and length > self.max_bytes:
                    raise BundleError(f"the S3 object is larger than {self.max_bytes} bytes", uri)
                with dest.open("wb") as out:
                    sha256 = await self._copy(stream, out, uri)
        except (ClientError, BotoCoreError) as exc:
            raise aws_error(COMPONENT, exc) from exc
        return got_etag, answer.get("VersionId") or version, answer.get("Metadata") or {}, sha256

    async def _copy(self, stream: Any, out: BinaryIO, uri: str) -> str:
        digest = hashlib.sha256()
        size = 0
        while chunk := await stream.read(_CHUNK):
            size += len(chunk)
            if size > self.max_bytes:
                raise BundleError(f"the S3 object is larger than {self.max_bytes} bytes", uri)
            digest.update(chunk)
            out.write(chunk)
        return digest.hexdigest()


def _bundle_type(value: str | None) -> str | None:
    if value is None:
        return None
    for known in BUNDLE_TYPES:
        if value.casefold() == known.casefold():
            return known
    raise BundleError(f"unknown bundleType {value!r} (expected one of {', '.join(BUNDLE_TYPES)})")


def _checked_kind(path: Path, declared: str | None, uri: str) -> str:
    """The bundle type the content really has; a declared type that disagrees with it is an error."""
    with path.open("rb") as handle:
        head = handle.read(2)
    if zipfile.is_zipfile(path):
        actual = "zip"
    elif head == _GZIP_MAGIC:
        actual = "tgz"
    elif tarfile.is_tarfile(path):
        actual = "tar"
    else:
        actual = None
    if declared in ("YAML", "JSON"):
        if actual is not None:
            raise BundleError(f"bundleType {declared} but the object is a {actual} archive", uri)
        return declared
    if actual is None:
        raise BundleError("the S3 object is neither a zip nor a tar archive", uri)
    if declared is not None and (declared == "zip") != (actual == "zip"):  # tar and tgz extract alike
        raise BundleError(f"bundleType {declared} but the object is a {actual} archive", uri)
    return actual


def _unquoted(etag: str | None) -> str | None:
    return etag.strip().strip('"') if etag else None
