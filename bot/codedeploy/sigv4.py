"""AWS Signature Version 4 checks for the CodeDeploy-compatible API.

The signature is recomputed with botocore's own ``SigV4Auth`` over a request rebuilt from exactly what the client
signed (method, URL, the headers listed in ``SignedHeaders``, body), so canonicalisation quirks are botocore's, not
ours. Failures carry the AWS error name that clients already know how to branch on.

The check is strict: the credential scope must be ``DATE/REGION/codedeploy/aws4_request`` with DATE the
day of ``X-Amz-Date`` and REGION the server's (DEPLOYBOT_AWS_REGION, ``*`` for any), and ``SignedHeaders`` must cover
``host``, ``x-amz-date`` and ``x-amz-target`` — a signature made for another service, another region or with the
operation left unsigned is refused even when its arithmetic is right.
"""

from __future__ import annotations

import datetime
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import InvalidRegionError
from botocore.utils import validate_region_name

MAX_SKEW = datetime.timedelta(minutes=5)
SERVICE = "codedeploy"
TERMINATOR = "aws4_request"
ANY_REGION = "*"
# DEPLOYBOT_AWS_REGION unset: the region the docs' examples (and most clients' configuration) sign for. A fixed
# region, not ANY_REGION, so that a server nobody configured is still strict; a client signing for another region is
# told which one this server expects.
DEFAULT_REGION = "us-east-1"
# The date comes only from X-Amz-Date (no ``Date`` fallback), so that header is always required to be signed.
REQUIRED_SIGNED_HEADERS = ("host", "x-amz-date", "x-amz-target")


@dataclass(frozen=True, slots=True)
class AccessKey:
    access_key: str
    secret: str = field(repr=False)
    actor: str
    region: str = DEFAULT_REGION  # the region its credential scope must name; ANY_REGION accepts every region


class SignatureRejected(Exception):
    """Why a request's signature is refused: ``error`` is the AWS error name (without ``Exception``)."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error, self.message = error, message


def parse_region(raw: str | None) -> str:
    """DEPLOYBOT_AWS_REGION → the region credential scopes must name: a region name, ``*`` for any, unset or blank
    for DEFAULT_REGION. A value that is no region name (botocore's rule: a host label) raises ValueError."""
    region = (raw or "").strip()
    if not region:
        return DEFAULT_REGION
    if region == ANY_REGION:
        return region
    try:
        validate_region_name(region)
    except InvalidRegionError:
        raise ValueError(
            f"DEPLOYBOT_AWS_REGION {region!r} is not a region name (e.g. us-east-1) nor {ANY_REGION} (any region)"
        ) from None
    return region


def parse_keys(raw: str | None, *, region: str = DEFAULT_REGION) -> dict[str, AccessKey]:
    """``ACCESS_KEY:SECRET:ACTOR[,...]`` (DEPLOYBOT_AWS_KEYS) → keys by access key id, each signing for ``region``
    (see parse_region); malformed entries raise."""
    keys: dict[str, AccessKey] = {}
    for entry in (raw or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise ValueError("DEPLOYBOT_AWS_KEYS entries must look like ACCESS_KEY:SECRET:ACTOR")
        access, secret, actor = (p.strip() for p in parts)
        keys[access] = AccessKey(access, secret, actor, region)
    return keys


@dataclass(frozen=True, slots=True)
class _Authorization:
    access_key: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def _parse_authorization(value: str) -> _Authorization:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != "AWS4-HMAC-SHA256":
        raise SignatureRejected("IncompleteSignature", "only AWS4-HMAC-SHA256 signatures are supported")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, _, val = part.strip().partition("=")
        fields[key] = val
    try:
        access_key, date, region, service, terminator = fields["Credential"].split("/")
        signed = tuple(fields["SignedHeaders"].split(";"))
        signature = fields["Signature"]
        if not all((access_key, date, region, service, signature)):
            raise ValueError("an empty part")
    except (KeyError, ValueError):
        raise SignatureRejected(
            "IncompleteSignature",
            "Authorization needs Credential=KEY/DATE/REGION/SERVICE/aws4_request, SignedHeaders and Signature",
        ) from None
    if terminator != TERMINATOR:
        raise SignatureRejected(
            "IncompleteSignature", f"the credential scope ends with {terminator!r}; it must end with {TERMINATOR}"
        )
    if service != SERVICE:
        raise SignatureRejected(
            "InvalidSignature", f"credential scope names service {service}; this endpoint is {SERVICE}"
        )
    listed = {name.lower() for name in signed}
    missing = [name for name in REQUIRED_SIGNED_HEADERS if name not in listed]
    if missing:
        raise SignatureRejected("IncompleteSignature", f"SignedHeaders must include {', '.join(missing)}")
    return _Authorization(access_key, date, region, service, signed, signature)


def verify(
    keys: Mapping[str, AccessKey],
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime.datetime | None = None,
) -> AccessKey:
    """The key that signed this request; raises SignatureRejected (UnrecognizedClient, InvalidSignature, ...).

    The scope's region is checked last, once the signature is proven: only a holder of a key learns which region
    the server expects."""
    authorization = headers.get("Authorization")
    if not authorization:
        raise SignatureRejected("MissingAuthenticationToken", "the request is not signed (no Authorization header)")
    auth = _parse_authorization(authorization)
    key = keys.get(auth.access_key)
    if key is None:
        raise SignatureRejected("UnrecognizedClient", "The security token included in the request is invalid.")
    amz_date = headers.get("X-Amz-Date", "")
    try:
        signed_at = datetime.datetime.strptime(amz_date, SIGV4_TIMESTAMP).replace(tzinfo=datetime.UTC)
    except ValueError:
        raise SignatureRejected("IncompleteSignature", "X-Amz-Date is missing or not YYYYMMDDTHHMMSSZ") from None
    if auth.date != amz_date[:8]:
        raise SignatureRejected(
            "InvalidSignature", f"credential scope date {auth.date} is not the day of X-Amz-Date {amz_date}"
        )
    current = now or datetime.datetime.now(datetime.UTC)
    if abs(current - signed_at) > MAX_SKEW:
        raise SignatureRejected(
            "InvalidSignature",
            f"Signature expired: {amz_date} is more than 5 minutes from the server time "
            f"{current.strftime(SIGV4_TIMESTAMP)}",
        )
    wanted = {name.lower() for name in auth.signed_headers}
    # Temporary credentials (AWS_SESSION_TOKEN) add X-Amz-Security-Token: its value means nothing to deploybot,
    # but it must be covered by the signature like every other header the client sent with it.
    sent = {name.lower() for name in headers}
    if "x-amz-security-token" in sent and "x-amz-security-token" not in wanted:
        raise SignatureRejected("IncompleteSignature", "X-Amz-Security-Token must be listed in SignedHeaders")
    signed_headers = {name: value for name, value in headers.items() if name.lower() in wanted}
    rebuilt = AWSRequest(method=method, url=url, headers=signed_headers, data=body)
    rebuilt.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(key.access_key, key.secret), auth.service, auth.region)
    canonical = signer.canonical_request(rebuilt)
    expected = signer.signature(signer.string_to_sign(rebuilt, canonical), rebuilt)
    if not hmac.compare_digest(expected.encode(), auth.signature.encode()):
        raise SignatureRejected(
            "InvalidSignature",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method.",
        )
    if key.region not in (ANY_REGION, auth.region):
        raise SignatureRejected(
            "InvalidSignature",
            f"region {auth.region} does not match this server's {key.region} "
            f"(sign for {key.region}, or set DEPLOYBOT_AWS_REGION on the server)",
        )
    return key
