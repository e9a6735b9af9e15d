"""The CLI's async HTTP client for the JSON API, and where the CLI finds its server and token (does I/O).

Failures a person can fix get their own exception and a sentence that says how: no server (start it), a bad token
(why the server refused it, and where we looked), an engine refusal (the server's ``error``/``message`` and data,
kept for ``--json`` callers). Who the caller is comes from the token alone: the client sends no name of its own.

An https:// server's certificate is always verified, TLS 1.2 or later: against the CA file given (``--ca-file``,
else $DEPLOYBOT_CA_FILE) or the system CAs. A certificate that fails is its own error (ServerNotTrusted), saying
what failed and how to give the CA; there is no option to skip verification.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urlencode

# asyncio, ssl and the HTTP client load when a request is made: the CLI's parser reads the constants here at every
# start.
if TYPE_CHECKING:
    import ssl

    from engine import HttpClient

DEFAULT_SERVER_URL = "http://127.0.0.1:8080"
EXAMPLE_CONFIG = Path("config") / "deploybot.example.yml"
TOKEN_FILE = Path("var") / "api-token"
CA_FILE_VARIABLE = "DEPLOYBOT_CA_FILE"
"""The environment variable naming the CA file (PEM) that signed an https:// server's certificate."""
IDEMPOTENCY_HEADER = "Idempotency-Key"  # bot/idempotency.py: a repeat with the same key gets the first answer
RESEND_PAUSES = (0.5, 2.0)  # seconds before sending a changing request again (same key) after a dropped connection


class ClientError(Exception):
    """Root of the errors the CLI turns into one line on stderr."""


class ServerUnreachable(ClientError):
    def __init__(self, url: str, detail: str = "") -> None:
        self.url = url
        self.detail = detail
        super().__init__(f"deploybot server is not running at {url} — start it with `make run`")


class ConnectionDropped(ServerUnreachable):
    """No HTTP answer: the server closed the connection (``detail`` empty) or sent something else (``detail``:
    what was wrong with it). Often a plain http:// URL for an HTTPS server."""

    def __init__(self, url: str, detail: str = "") -> None:
        self.url = url
        self.detail = detail
        what = "answered something that is not HTTP" if detail else "closed the connection without answering"
        hint = " (if it speaks HTTPS, use an https:// URL)" if url.lower().startswith("http://") else ""
        ClientError.__init__(self, f"the server at {url} {what}{hint}")


class ServerNotTrusted(ClientError):
    """The server's TLS certificate failed verification; ``reason`` is OpenSSL's word for why (e.g. "self-signed
    certificate in certificate chain", "IP address mismatch, ...")."""

    def __init__(self, url: str, reason: str, *, ca_file: str | None = None) -> None:
        self.url = url
        self.reason = reason
        trusted = f"the CA file {ca_file}" if ca_file else "the system CAs"
        super().__init__(
            f"cannot trust the server {url}: certificate verify failed: {reason} (checked against {trusted}; "
            f"give the CA that signed its certificate with --ca-file PATH or ${CA_FILE_VARIABLE})"
        )


class TlsFailed(ClientError):
    """The TLS handshake failed for another reason than the certificate (e.g. the server does not speak TLS)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        super().__init__(f"TLS with {url} failed: {reason} (is it a plain http:// server?)")


class BadCaFile(ClientError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot use the CA file {path}: {reason}")


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Certificates and host names verified, TLS 1.2 or later, trusting ``ca_file`` (PEM) if given, else the system
    CAs; BadCaFile naming the file when it cannot be read or holds no certificate."""
    import ssl

    try:
        context = ssl.create_default_context(cafile=ca_file)
    except ssl.SSLError:  # before OSError, its base class
        raise BadCaFile(str(ca_file), "no PEM certificate in it") from None
    except OSError as exc:
        raise BadCaFile(str(ca_file), str(exc.strerror or exc)) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class BadToken(ClientError):
    """The server answered 401: ``reason`` is its word for why (missing, unknown token, expired, revoked)."""

    def __init__(self, looked_in: tuple[str, ...], found: bool, reason: str = "", message: str = "") -> None:
        self.looked_in = looked_in
        self.found = found
        self.reason = reason
        where = ", ".join(looked_in)
        if not found:
            text = f"no API token (looked in {where}; found none): set DEPLOYBOT_TOKEN or ask an admin for one"
        else:
            text = f"bad API token: {message or reason or 'refused'} (looked in {where})"
        super().__init__(text)


_PROBLEMS_HEADLINE = {"AppSpecInvalid": "the revision's AppSpec is invalid", "ConfigError": "the config is invalid"}


class ApiError(ClientError):
    """The server refused: ``error`` is the engine's exception class name, ``body`` the whole JSON answer."""

    def __init__(self, status: int, error: str, message: str, body: Mapping[str, Any]) -> None:
        self.status = status
        self.error = error
        self.message = message
        self.body = dict(body)
        super().__init__(message)

    def lines(self) -> list[str]:
        """The message, then one ``file:line:column: message`` per located problem."""
        problems = self.body.get("problems") or ()
        out = [_PROBLEMS_HEADLINE.get(self.error, self.error) + ":" if problems else self.message]
        for problem in problems:
            if isinstance(problem, Mapping):
                where = f"{problem.get('file')}:{problem.get('line')}:{problem.get('column')}"
                out.append(f"  {where}: {problem.get('message')}")
        if self.body.get("usage"):
            out.append(f"  usage: {self.body['usage']}")
        return out


@dataclass(frozen=True, slots=True)
class TokenLookup:
    """The API token the CLI found (or not), and every place it looked, for the 401 message."""

    token: str | None
    looked_in: tuple[str, ...]


def find_repo_root(start: Path) -> Path | None:
    """The nearest directory at or above ``start`` holding config/deploybot.example.yml, else this checkout's."""
    for directory in (start.resolve(), *start.resolve().parents):
        if (directory / EXAMPLE_CONFIG).is_file():
            return directory
    package_root = Path(__file__).resolve().parent.parent
    return package_root if (package_root / EXAMPLE_CONFIG).is_file() else None


def find_api_token(environ: Mapping[str, str], cwd: Path) -> TokenLookup:
    """DEPLOYBOT_TOKEN, else ``var/api-token`` under ``cwd``, else under the repo root (where serve writes it)."""
    looked_in = ["$DEPLOYBOT_TOKEN"]
    if token := environ.get("DEPLOYBOT_TOKEN", "").strip():
        return TokenLookup(token, tuple(looked_in))
    candidates = [cwd / TOKEN_FILE]
    root = find_repo_root(cwd)
    if root is not None and (root / TOKEN_FILE).resolve() != candidates[0].resolve():
        candidates.append(root / TOKEN_FILE)
    for path in candidates:
        looked_in.append(str(path))
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if token:
            return TokenLookup(token, tuple(looked_in))
    return TokenLookup(None, tuple(looked_in))


class ApiClient:
    """Keep-alive connections to one server (engine's HttpClient); use as ``async with ApiClient(url, token=...) as
    api:``.

    ``ca_file`` (``--ca-file``) is the PEM file of the CA that signed an https:// server's certificate; without it,
    $DEPLOYBOT_CA_FILE of ``environ`` (default: the process environment), else the system CAs.
    """

    CONNECT_SECONDS = 5.0
    READ_SECONDS = 120.0  # each read: long polls last up to 60 s

    def __init__(
        self,
        base_url: str,
        *,
        token: TokenLookup,
        ca_file: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        environ = os.environ if environ is None else environ
        chosen = ca_file if ca_file is not None else environ.get(CA_FILE_VARIABLE, "").strip()
        self.ca_file: str | None = str(chosen) if chosen else None
        self._http: HttpClient | None = None

    async def __aenter__(self) -> ApiClient:
        from engine import HttpClient

        # Loading the system CAs costs ~20 ms: a plain http:// server needs none (a CA file given is still read, so a
        # bad one is said whatever the URL).
        https = self.base_url.lower().startswith("https://")
        tls = tls_context(self.ca_file) if https or self.ca_file else None
        try:
            self._http = HttpClient(self.base_url, tls=tls, user_agent="deploybot-cli")
        except ValueError as exc:  # not an http(s):// URL
            raise ServerUnreachable(self.base_url, str(exc)) from None
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._http is not None:
            await self._http.close()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        data: BinaryIO | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One API call. A call that changes something carries a fresh ``Idempotency-Key`` and is sent again with
        the same key when the connection drops before the answer, or while the first is still running: the server
        answers a repeat with the first one's answer (bot/idempotency.py), so nothing is done twice. An uploaded
        file is sent again from where it stood."""
        import asyncio
        import uuid

        if params:
            path += "?" + urlencode(params)
        if method in ("GET", "HEAD"):
            return await self._send(method, path, json, data, headers or {})
        sent = {**(headers or {}), IDEMPOTENCY_HEADER: uuid.uuid4().hex}
        start = data.tell() if data is not None else 0
        for pause in (*RESEND_PAUSES, None):
            if data is not None:
                data.seek(start)
            try:
                return await self._send(method, path, json, data, sent)
            except ConnectionDropped:
                if pause is None:
                    raise
            except ApiError as exc:
                if pause is None or exc.error != "RequestInProgress":
                    raise
            await asyncio.sleep(pause)
        raise AssertionError("unreachable: the last try returns or raises")

    async def _send(
        self, method: str, path: str, json_body: object, data: BinaryIO | None, headers: Mapping[str, str]
    ) -> Any:
        import ssl

        from engine import ConnectionEnded, ProtocolBroken

        assert self._http is not None, "use ApiClient as an async context manager"
        url = self.base_url + path
        sent = dict(headers)
        if self.token.token:
            sent["Authorization"] = f"Bearer {self.token.token}"
        content_type = sent.pop("Content-Type", "application/json")
        try:
            response = await self._http.request(
                method,
                path,
                json_body=json_body,
                body=data,
                content_type=content_type,
                headers=sent,
                total=None,
                connect=self.CONNECT_SECONDS,
                read=self.READ_SECONDS,
            )
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or str(exc)
            raise ServerNotTrusted(self.base_url, reason, ca_file=self.ca_file) from None
        except ssl.SSLError as exc:  # e.g. an https:// URL for a plain-HTTP server
            raise TlsFailed(self.base_url, exc.reason or str(exc)) from None
        except (ConnectionEnded, ConnectionResetError, BrokenPipeError):
            raise ConnectionDropped(self.base_url) from None
        except ProtocolBroken as exc:  # something that is not HTTP
            raise ConnectionDropped(self.base_url, str(exc)) from None
        except (OSError, TimeoutError) as exc:
            raise ServerUnreachable(self.base_url, str(exc) or type(exc).__name__) from exc
        status, raw = response.status, response.body
        if status == 204:
            return None
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            text = raw[:200].decode("utf-8", "replace")
            raise ApiError(status, "BadResponse", f"not a deploybot answer from {url}: {text}", {}) from None
        if status == 401:
            refusal = body if isinstance(body, dict) else {}
            reason, message = str(refusal.get("reason") or ""), str(refusal.get("message") or "")
            raise BadToken(self.token.looked_in, self.token.token is not None, reason, message)
        if status >= 400:
            body = body if isinstance(body, dict) else {}
            error = str(body.get("error") or f"HTTP{status}")
            raise ApiError(status, error, str(body.get("message") or error), body)
        return body

    # -- the API, one method per route ------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", "/healthz")
        return result

    async def upload_revision(self, bundle: Path, *, source: str, application: str | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/gzip", "X-Deploybot-Source": source}
        if application:
            headers["X-Deploybot-Application"] = application  # its platform decides how the AppSpec is checked
        with bundle.open("rb") as body:
            result: dict[str, Any] = await self._request("POST", "/api/v1/revisions", data=body, headers=headers)
        return result

    async def start(
        self,
        application: str,
        environment: str,
        *,
        revision: str | None = None,
        config: str | None = None,
        description: str = "",
        ignore_alarms: bool = False,
    ) -> dict[str, Any]:
        body = _request_body(application, environment, revision, config, description)
        if ignore_alarms:
            body["ignore_alarms"] = True
        result: dict[str, Any] = await self._request("POST", "/api/v1/deployments", json=body)
        return result

    async def plan(
        self,
        application: str,
        environment: str,
        *,
        revision: str | None = None,
        config: str | None = None,
        from_env: str | None = None,
    ) -> dict[str, Any]:
        body = _request_body(application, environment, revision, config, "")
        if from_env:
            body["from"] = from_env
        result: dict[str, Any] = await self._request("POST", "/api/v1/plan", json=body)
        return result

    async def get(self, deployment_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", f"/api/v1/deployments/{quote(deployment_id, safe='')}")
        return result

    async def list_deployments(
        self, application: str | None = None, environment: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        params: dict[str, str] = {"limit": str(limit)}
        if application:
            params["application"] = application
        if environment:
            params["environment"] = environment
        result = await self._request("GET", "/api/v1/deployments", params=params)
        return list(result["deployments"])

    async def watch(self, deployment_id: str, *, after: int, wait: float = 25.0) -> dict[str, Any]:
        params = {"after": str(after), "wait": f"{wait:g}"}
        path = f"/api/v1/deployments/{quote(deployment_id, safe='')}/watch"
        result: dict[str, Any] = await self._request("GET", path, params=params)
        return result

    async def stop(self, deployment_id: str, *, rollback: bool | None = None) -> dict[str, Any]:
        path = f"/api/v1/deployments/{quote(deployment_id, safe='')}/stop"
        result: dict[str, Any] = await self._request("POST", path, json={"rollback": rollback})
        return result

    async def control(self, deployment_id: str, action: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "POST", f"/api/v1/deployments/{quote(deployment_id, safe='')}/{action}"
        )
        return result

    async def rollback(self, application: str, environment: str) -> dict[str, Any]:
        app, env = quote(application, safe=""), quote(environment, safe="")
        path = f"/api/v1/applications/{app}/environments/{env}/rollback"
        result: dict[str, Any] = await self._request("POST", path)
        return result

    # -- release flow

    async def promote(
        self,
        application: str,
        source: str,
        target: str,
        *,
        override: bool = False,
        revision: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"from": source, "to": target, "override": override}
        if revision:
            body["revision"] = revision
        path = f"/api/v1/applications/{quote(application, safe='')}/promote"
        result: dict[str, Any] = await self._request("POST", path, json=body)
        return result

    async def where(self, application: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", f"/api/v1/applications/{quote(application, safe='')}/where")
        return result

    async def locks(self) -> list[dict[str, Any]]:
        result = await self._request("GET", "/api/v1/locks")
        return list(result["locks"])

    async def lock(
        self, application: str, environment: str, *, reason: str = "", minutes: float | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"application": application, "environment": environment, "reason": reason}
        if minutes is not None:
            body["expires_in_minutes"] = minutes
        result: dict[str, Any] = await self._request("POST", "/api/v1/locks", json=body)
        return result

    async def unlock(self, application: str, environment: str) -> dict[str, Any]:
        body = {"application": application, "environment": environment}
        result: dict[str, Any] = await self._request("DELETE", "/api/v1/locks", json=body)
        return result

    async def approve(self, deployment_id: str) -> dict[str, Any]:
        path = f"/api/v1/deployments/{quote(deployment_id, safe='')}/approve"
        result: dict[str, Any] = await self._request("POST", path)
        return result

    async def reject(self, deployment_id: str, *, reason: str = "") -> dict[str, Any]:
        path = f"/api/v1/deployments/{quote(deployment_id, safe='')}/reject"
        result: dict[str, Any] = await self._request("POST", path, json={"reason": reason})
        return result

    async def queue(self, application: str | None = None, environment: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("application", application), ("environment", environment)) if v}
        result = await self._request("GET", "/api/v1/queue", params=params)
        return list(result["queue"])

    async def hosts(self) -> list[dict[str, Any]]:
        result = await self._request("GET", "/api/v1/hosts")
        return list(result["hosts"])

    async def register_s3_revision(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``{"s3": {bucket, key, version?, etag?, bundle_type?}, "application"?: APP}``: the server fetches it."""
        result: dict[str, Any] = await self._request("POST", "/api/v1/revisions", json=dict(body))
        return result

    async def hook_executions(self, deployment_id: str | None = None) -> list[dict[str, Any]]:
        params = {"deployment_id": deployment_id} if deployment_id else {}
        result = await self._request("GET", "/api/v1/lifecycle-hooks", params=params)
        return list(result["executions"])

    async def put_hook_status(self, execution_id: str, status: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "PUT", f"/api/v1/lifecycle-hooks/{execution_id}", json={"status": status}
        )
        return result

    async def applications(self) -> list[dict[str, Any]]:
        result = await self._request("GET", "/api/v1/applications")
        return list(result["applications"])

    # -- API tokens (admins)

    async def create_token(self, user: str, *, name: str, expires_in: float | None = None) -> dict[str, Any]:
        """The new token's document; its ``token`` is the secret, shown this once."""
        body: dict[str, Any] = {"user": user, "name": name}
        if expires_in is not None:
            body["expires_in"] = expires_in
        result: dict[str, Any] = await self._request("POST", "/api/v1/tokens", json=body)
        return result

    async def tokens(self, user: str | None = None) -> list[dict[str, Any]]:
        result = await self._request("GET", "/api/v1/tokens", params={"user": user} if user else {})
        return list(result["tokens"])

    async def revoke_token(self, token_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("DELETE", f"/api/v1/tokens/{quote(token_id, safe='')}")
        return result


def _request_body(
    application: str, environment: str, revision: str | None, config: str | None, description: str
) -> dict[str, Any]:
    body: dict[str, Any] = {"application": application, "environment": environment}
    if revision:
        body["revision"] = revision
    if config:
        body["config"] = config
    if description:
        body["description"] = description
    return body
