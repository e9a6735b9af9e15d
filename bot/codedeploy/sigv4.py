"""AWS Signature Version 4 checks for the CodeDeploy-compatible API.

The signature is recomputed with botocore's own ``SigV4Auth`` over a request rebuilt from exactly what the client
signed (method, URL, the headers listed in ``SignedHeaders``, body), so canonicalisation quirks are botocore's, not
ours. Failures carry the AWS error name that clients already know how to branch on.
"""

from __future__ import annotations

import datetime
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

MAX_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class AccessKey:
    access_key: str
    secret: str = field(repr=False)
    actor: str


class SignatureRejected(Exception):
    """Why a request's signature is refused: ``error`` is the AWS error name (without ``Exception``)."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error, self.message = error, message


def parse_keys(raw: str | None) -> dict[str, AccessKey]:
    """``ACCESS_KEY:SECRET:ACTOR[,...]`` (DEPLOYBOT_AWS_KEYS) → keys by access key id; malformed entries raise."""
    keys: dict[str, AccessKey] = {}
    for entry in (raw or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise ValueError("DEPLOYBOT_AWS_KEYS entries must look like ACCESS_KEY:SECRET:ACTOR")
        access, secret, actor = (p.strip() for p in parts)
        keys[access] = AccessKey(access, secret, actor)
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
    except (KeyError, ValueError):
        raise SignatureRejected(
            "IncompleteSignature",
            "Authorization needs Credential=KEY/DATE/REGION/SERVICE/aws4_request, SignedHeaders and Signature",
        ) from None
    if terminator != "aws4_request":
        raise SignatureRejected("IncompleteSignature", "the credential scope must end with aws4_request")
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
    """The key that signed this request; raises SignatureRejected (UnrecognizedClient, InvalidSignature, ...)."""
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
    return key
