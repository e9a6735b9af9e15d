"""S3 revisions against moto in server mode: push, fetch with ETag and sha256 checks, zip/tar/AppSpec bundles, the
stored location, and the BUNDLE_* variables hooks get from it."""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine.adapters.aws.accounts import AwsClients
from engine.adapters.aws.s3 import S3Location, S3Revisions, object_key, push_revision
from engine.adapters.clock import SystemClock
from engine.agent.executor import hook_environment, s3_bundle_environment
from engine.bundles import read_member
from engine.core.agent_protocol import Command
from engine.core.errors import AdapterError, BundleError
from engine.core.model import LifecycleEvent, Platform
from engine.core.s3_urls import parse_s3_revision_url, parse_s3_uri
from engine.runtime.revisions import RevisionStore
from engine.store.sqlite import SqliteStore
from tests.moto_support import aws, aws_env, moto_endpoint, moto_reset  # noqa: F401

HELLO = Path(__file__).resolve().parent.parent / "examples" / "hello"
BUCKET = "artifacts"
LAMBDA_APPSPEC = """\
version: 0.0
Resources:
  - api:
      Type: AWS::Lambda::Function
      Properties: {Name: api, Alias: live, CurrentVersion: "1", TargetVersion: "2"}
"""


@pytest.fixture
async def revisions(tmp_path: Path) -> AsyncIterator[RevisionStore]:
    store = await SqliteStore.open(tmp_path / "deploybot.db")
    try:
        yield RevisionStore(store, tmp_path / "revisions", SystemClock())
    finally:
        await store.close()


@pytest.fixture
async def s3(aws: AwsClients) -> Any:  # noqa: F811
    client = await aws.get("s3")
    await client.create_bucket(Bucket=BUCKET)
    return client


def zipped(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo(str(path.relative_to(directory)))
                info.external_attr = (path.stat().st_mode & 0o777) << 16
                archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def tarred(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in sorted(directory.iterdir()):
            archive.add(path, arcname=path.name)
    return buffer.getvalue()


# -- push + fetch ------------------------------------------------------------------------------------------------


async def test_push_then_fetch_round_trip(aws: AwsClients, s3: Any, revisions: RevisionStore) -> None:  # noqa: F811
    pushed = await push_revision(aws, HELLO, BUCKET, "releases/", application="hello")
    assert pushed.key == f"releases/hello-{pushed.sha256[:12]}.tar.gz" and pushed.bundle_type == "tgz"
    head = await s3.head_object(Bucket=BUCKET, Key=pushed.key)
    assert head["Metadata"] == {"sha256": pushed.sha256}
    assert head["ETag"].strip('"') == pushed.etag and pushed.version is None  # an unversioned bucket

    fetched = await S3Revisions(aws, revisions).fetch(
        BUCKET, pushed.key, version=pushed.version, etag=pushed.etag, bundle_type="tgz"
    )
    assert fetched.sha256 == pushed.sha256, "a pushed canonical bundle stays the same revision once fetched"
    assert fetched.source == pushed.uri
    location = {"s3": {"bucket": BUCKET, "key": pushed.key, "version": None, "etag": pushed.etag, "bundle_type": "tgz"}}
    assert fetched.location == location == pushed.revision_location()
    stored = await revisions.get(fetched.sha256)
    assert stored.location == location and revisions.path(fetched.sha256).exists()
    assert not [p for p in revisions.directory.iterdir() if p.name.startswith("s3-")], "scratch files left"


async def test_push_is_idempotent_and_a_versioned_object_is_fetched_by_version(
    aws: AwsClients,  # noqa: F811
    s3: Any,
    revisions: RevisionStore,
    tmp_path: Path,
) -> None:
    await s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    first = await push_revision(aws, HELLO, BUCKET, "", application="hello")
    again = await push_revision(aws, HELLO, BUCKET, "", application="hello")
    assert first.key == again.key == f"hello-{first.sha256[:12]}.tar.gz"
    assert first.version and again.version and first.version != again.version

    changed = tmp_path / "hello"
    shutil.copytree(HELLO, changed)
    (changed / "VERSION").write_text("changed\n")
    other = await push_revision(aws, changed, BUCKET, "", application="hello")
    # The same key now holds other content; the first version is still fetchable by its id.
    await s3.put_object(
        Bucket=BUCKET, Key=first.key, Body=(await _body(s3, other.key)), Metadata={"sha256": other.sha256}
    )
    fetched = await S3Revisions(aws, revisions).fetch(BUCKET, first.key, version=first.version, etag=first.etag)
    assert fetched.sha256 == first.sha256
    assert fetched.location and fetched.location["s3"]["version"] == first.version
    latest = await S3Revisions(aws, revisions).fetch(BUCKET, first.key)
    assert latest.sha256 == other.sha256


async def _body(s3: Any, key: str) -> bytes:
    answer = await s3.get_object(Bucket=BUCKET, Key=key)
    async with answer["Body"] as stream:
        data: bytes = await stream.read()
    return data


async def test_an_etag_mismatch_is_refused(aws: AwsClients, s3: Any, revisions: RevisionStore) -> None:  # noqa: F811
    pushed = await push_revision(aws, HELLO, BUCKET, "releases", application="hello")
    wrong = "0" * 32
    with pytest.raises(BundleError, match=f"ETag differs.*expected {wrong}, got {pushed.etag}"):
        await S3Revisions(aws, revisions).fetch(BUCKET, pushed.key, etag=wrong)
    assert await revisions.store.get_revision(pushed.sha256) is None


async def test_content_that_no_longer_matches_its_sha256_metadata_is_refused(
    aws: AwsClients,  # noqa: F811
    s3: Any,
    revisions: RevisionStore,
) -> None:
    pushed = await push_revision(aws, HELLO, BUCKET, "releases", application="hello")
    original = await _body(s3, pushed.key)
    tampered = original[:-1] + bytes([original[-1] ^ 1])
    await s3.put_object(Bucket=BUCKET, Key=pushed.key, Body=tampered, Metadata={"sha256": pushed.sha256})
    with pytest.raises(BundleError, match=f"sha256 metadata.*expected {pushed.sha256}, got [0-9a-f]{{64}}"):
        await S3Revisions(aws, revisions).fetch(BUCKET, pushed.key)


@pytest.mark.parametrize(("bundle_type", "pack"), [("zip", zipped), ("tar", tarred), (None, zipped)])
async def test_zip_and_tar_bundles(
    aws: AwsClients,  # noqa: F811
    s3: Any,
    revisions: RevisionStore,
    bundle_type: str | None,
    pack: Any,
) -> None:
    await s3.put_object(Bucket=BUCKET, Key="hello.bundle", Body=pack(HELLO))
    fetched = await S3Revisions(aws, revisions).fetch(BUCKET, "hello.bundle", bundle_type=bundle_type)
    stored = revisions.path(fetched.sha256)
    assert read_member(stored, "appspec.yml") == (HELLO / "appspec.yml").read_bytes()
    assert fetched.location and fetched.location["s3"]["bundle_type"] == (bundle_type or "zip")
    if bundle_type == "tar":  # same files, modes and times as the pushed directory: the same revision
        pushed = await push_revision(aws, HELLO, BUCKET, "canonical", application="hello")
        assert fetched.sha256 == pushed.sha256


async def test_a_bare_lambda_appspec(aws: AwsClients, s3: Any, revisions: RevisionStore) -> None:  # noqa: F811
    await s3.put_object(Bucket=BUCKET, Key="api/appspec.yml", Body=LAMBDA_APPSPEC.encode())
    fetched = await S3Revisions(aws, revisions).fetch(
        BUCKET, "api/appspec.yml", bundle_type="YAML", platform=Platform.LAMBDA
    )
    row = await revisions.store.get_revision(fetched.sha256)
    assert row is not None and row["platform"] == "lambda"
    assert fetched.location and fetched.location["s3"]["bundle_type"] == "YAML"


@pytest.mark.parametrize(
    ("key", "bundle_type", "error", "match"),
    [
        ("hello.zip", "tgz", BundleError, "bundleType tgz but the object is a zip archive"),
        ("hello.zip", "rar", BundleError, "unknown bundleType 'rar'"),
        ("notes.txt", None, BundleError, "neither a zip nor a tar archive"),
        ("missing.zip", None, AdapterError, "s3: NoSuchKey"),
    ],
)
async def test_wrong_bundles_are_refused(
    aws: AwsClients,  # noqa: F811
    s3: Any,
    revisions: RevisionStore,
    key: str,
    bundle_type: str | None,
    error: type[Exception],
    match: str,
) -> None:
    await s3.put_object(Bucket=BUCKET, Key="hello.zip", Body=zipped(HELLO))
    await s3.put_object(Bucket=BUCKET, Key="notes.txt", Body=b"just text")
    with pytest.raises(error, match=match):
        await S3Revisions(aws, revisions).fetch(BUCKET, key, bundle_type=bundle_type)


async def test_a_bundle_larger_than_allowed_is_refused(
    aws: AwsClients,  # noqa: F811
    s3: Any,
    revisions: RevisionStore,
) -> None:
    await s3.put_object(Bucket=BUCKET, Key="hello.zip", Body=zipped(HELLO))
    with pytest.raises(BundleError, match="larger than 100 bytes"):
        await S3Revisions(aws, revisions, max_bytes=100).fetch(BUCKET, "hello.zip")


# -- pure bits ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://artifacts/releases/web", ("artifacts", "releases/web")),
        ("s3://artifacts/releases/", ("artifacts", "releases")),
        ("s3://artifacts", ("artifacts", "")),
    ],
)
def test_parse_s3_uri(uri: str, expected: tuple[str, str]) -> None:
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "match"),
    [("artifacts/x", "expected s3://"), ("s3://ab/x", "not an S3 bucket"), ("s3://Big_Bucket/x", "not an S3")],
)
def test_parse_s3_uri_errors(uri: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_s3_uri(uri)


def test_object_key() -> None:
    sha = "ab" * 32
    assert object_key("/releases/web/", "hello", sha) == "releases/web/hello-abababababab.tar.gz"
    assert object_key("", "my app", sha) == "my-app-abababababab.tar.gz"


# -- hooks see where the bundle came from ------------------------------------------------------------------------


def command(revision: dict[str, Any]) -> Command:
    spec = {
        "deployment_id": "d-1",
        "application_name": "hello",
        "deployment_group_name": "hello-prod",
        "deployment_group_id": "hello-prod",
        "revision": {"sha256": "0" * 64, "url": "/agent/v1/bundles/x", **revision},
    }
    return Command.from_json({"id": 1, "deployment_id": "d-1", "event": "AfterInstall", "spec": spec})


def test_hooks_get_bundle_variables_of_an_s3_revision() -> None:
    location = S3Location(BUCKET, "releases/hello-abc.tar.gz", "v1", "e7", "ab" * 32, "tgz").revision_location()
    base = {"PATH": "/bin", "BUNDLE_KEY": "stale", "BUNDLE_VERSION": "stale"}
    env = hook_environment(
        command({"location": location}).spec, LifecycleEvent.AFTER_INSTALL, host="h", prefix=None, extra={}, base=base
    )
    assert {k: v for k, v in env.items() if k.startswith("BUNDLE_")} == {
        "BUNDLE_BUCKET": BUCKET,
        "BUNDLE_KEY": "releases/hello-abc.tar.gz",
        "BUNDLE_VERSION": "v1",
        "BUNDLE_ETAG": "e7",
    }
    unversioned = s3_bundle_environment({"location": {"s3": {**location["s3"], "version": None}}})
    assert "BUNDLE_VERSION" not in unversioned and unversioned["BUNDLE_ETAG"] == "e7"
    plain = hook_environment(command({}).spec, LifecycleEvent.AFTER_INSTALL, host="h", prefix=None, extra={}, base=base)
    assert not [k for k in plain if k.startswith("BUNDLE_")], "a local revision has no BUNDLE_* (stale ones dropped)"


def test_a_pinned_url_reads_back_as_its_location() -> None:
    pushed = S3Location("artifacts", "rel/app-1.tar.gz", "v7", "abc", "f" * 64)
    assert parse_s3_revision_url(pushed.pinned_uri) == {
        "bucket": "artifacts",
        "key": "rel/app-1.tar.gz",
        "version": "v7",
        "etag": "abc",
    }
    with pytest.raises(ValueError, match="expected s3://BUCKET/KEY"):
        parse_s3_revision_url("s3://artifacts")
