"""A local fake of the GitHub REST API (aiohttp on 127.0.0.1, port 0) that records every call.

It serves what deploybot uses: commit tarballs (``/repos/o/r/tarball/REF`` answers 302 to another path of the same
host, which returns a gzip tarball with one top directory, like codeload; 404 for a commit it does not hold),
commits by full or short SHA, combined statuses and check runs with configurable colours, deployments and their
statuses, check runs (or 403 when ``check_runs_allowed`` is False), commit statuses, pull request files, file
contents, and GitHub App installation tokens (the JWT is verified against the app's public key). For pull-request
comment deploys: pull requests (``pulls``), collaborators' permissions (``permissions``, login -> role; 404 for
anyone else), reactions on comments, and issue comments created, listed and edited (``comments``, with every
version of each body in ``comment_bodies``). A tarball can be
held back until the test sets its ``tarball_gates`` event (a slow download, without time). ``signed`` builds a
webhook request the way GitHub signs it; the ``*_payload`` helpers build the events' bodies.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    authorization: str | None
    body: Any


@dataclass
class FakeGitHub:
    commits: dict[str, dict[str, str | bytes]] = field(default_factory=dict)  # sha -> {path: content}
    commit_dates: dict[str, str] = field(default_factory=dict)  # sha -> the committer date GitHub reports (ISO 8601)
    executable: set[str] = field(default_factory=set)  # paths written with mode 0755
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # sha -> [{context, state}]
    check_runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # sha -> [{name, status, conclusion}]
    pull_files: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # number -> [{filename, status}]
    check_runs_allowed: bool = True
    app_id: str | None = None
    app_public_key: bytes | None = None
    installation_id: int = 99
    token_lifetime: float = 3600.0
    clock: Callable[[], float] = time.time  # what "now" is for the expiry of issued tokens
    redirect_to: str | None = None  # absolute base URL for tarball redirects (another host); default: same host
    tarball_failures: int = 0  # answer this many tarball downloads with 502 before serving them
    tarball_gates: dict[str, asyncio.Event] = field(default_factory=dict)  # sha -> served once the test sets it
    calls: list[Call] = field(default_factory=list)
    deployments: dict[int, dict[str, Any]] = field(default_factory=dict)
    tokens_issued: int = 0
    pulls: dict[int, dict[str, Any]] = field(default_factory=dict)  # number -> {"head": {"sha"}, "state"}
    permissions: dict[str, str] = field(default_factory=dict)  # login -> admin | maintain | write | triage | read
    reactions: list[tuple[int, str]] = field(default_factory=list)  # (comment id, content)
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> {"id", "number", "body"}
    comment_bodies: dict[int, list[str]] = field(default_factory=dict)  # id -> each body it had, in order
    _runner: web.AppRunner | None = None
    url: str = ""

    # -- running ---------------------------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- what tests read -------------------------------------------------------------------------------------

    def called(self, method: str, prefix: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path.startswith(prefix)]

    def exactly(self, method: str, path: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path == path]

    def deployment_states(self, github_id: int) -> list[str]:
        return [s["state"] for s in self.deployments[github_id]["statuses"]]

    # -- content ---------------------------------------------------------------------------------------------

    def tarball(self, owner: str, repo: str, sha: str) -> bytes:
        buffer = io.BytesIO()
        top = f"{owner}-{repo}-{sha[:7]}"
        with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
            tar.pax_headers = {"comment": sha}  # GitHub's pax_global_header carries the commit
            directory = tarfile.TarInfo(top)
            directory.type, directory.mode = tarfile.DIRTYPE, 0o775
            tar.addfile(directory)
            for path, content in sorted(self.commits[sha].items()):
                data = content.encode() if isinstance(content, str) else content
                info = tarfile.TarInfo(f"{top}/{path}")
                info.size, info.mtime = len(data), int(time.time())
                info.mode = 0o755 if path in self.executable else 0o644
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    # -- the API ---------------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        auth = request.headers.get("Authorization")
        self.calls.append(Call(request.method, request.path, dict(request.query), auth, body))
        parts = request.path.strip("/").split("/")
        method = request.method
        if parts[:1] == ["codeload"] and self.tarball_failures > 0:
            self.tarball_failures -= 1
            return _error(502, "bad gateway")
        if parts[:1] == ["codeload"]:
            _, owner, repo, sha = parts
            gate = self.tarball_gates.get(sha)
            if gate is not None:
                await gate.wait()
            return web.Response(body=self.tarball(owner, repo, sha), content_type="application/x-gzip")
        if parts[:2] == ["app", "installations"] and parts[3:] == ["access_tokens"]:
            return self._access_token(auth)
        if parts[0] != "repos" or auth is None:
            return _error(401 if auth is None else 404, "not found")
        owner, repo, rest = parts[1], parts[2], parts[3:]
        if rest == ["installation"]:
            self._check_jwt(auth)
            return web.json_response({"id": self.installation_id})
        if rest[:1] == ["tarball"] and method == "GET":
            if rest[1] not in self.commits:
                return _error(404, "Not Found")
            base = self.redirect_to or ""
            raise web.HTTPFound(f"{base}/codeload/{owner}/{repo}/{rest[1]}")
        if rest[:1] == ["commits"] and len(rest) == 2 and method == "GET":
            matches = [sha for sha in self.commits if sha.startswith(rest[1].lower())]
            if len(matches) != 1:
                return _error(404 if not matches else 422, "No commit found for SHA: " + rest[1])
            date = self.commit_dates.get(matches[0], "2026-01-01T00:00:00Z")
            return web.json_response({"sha": matches[0], "commit": {"committer": {"date": date}}})
        if rest[:1] == ["commits"] and rest[2:] == ["status"]:
            statuses = list(reversed(self.statuses.get(rest[1], [])))
            return web.json_response({"state": "pending", "statuses": statuses})
        if rest[:1] == ["commits"] and rest[2:] == ["check-runs"]:
            runs = self.check_runs.get(rest[1], [])
            return web.json_response({"total_count": len(runs), "check_runs": runs})
        if rest == ["deployments"] and method == "POST":
            github_id = len(self.deployments) + 1
            self.deployments[github_id] = {**body, "id": github_id, "statuses": []}
            return web.json_response({"id": github_id, **body}, status=201)
        if rest[:1] == ["deployments"] and rest[2:] == ["statuses"] and method == "POST":
            known = self.deployments.setdefault(int(rest[1]), {"id": int(rest[1]), "statuses": []})
            known["statuses"].append(body)
            return web.json_response({"id": len(known["statuses"]), **body}, status=201)
        if rest == ["check-runs"] and method == "POST":
            if not self.check_runs_allowed:
                return _error(403, "Resource not accessible by personal access token")
            return web.json_response({"id": 1, **body}, status=201)
        if rest[:1] == ["statuses"] and method == "POST":
            self.statuses.setdefault(rest[1], []).append(body)
            return web.json_response(body, status=201)
        if rest[:1] == ["pulls"] and len(rest) == 2 and method == "GET":
            pull = self.pulls.get(int(rest[1]))
            return web.json_response({"number": int(rest[1]), **pull}) if pull else _error(404, "Not Found")
        if rest[:1] == ["collaborators"] and rest[2:] == ["permission"]:
            role = self.permissions.get(rest[1])
            if role is None:
                return _error(404, f"{rest[1]} is not a user")
            legacy = {"maintain": "write", "triage": "read"}.get(role, role)
            return web.json_response({"permission": legacy, "role_name": role, "user": {"login": rest[1]}})
        if rest[:2] == ["issues", "comments"] and rest[3:] == ["reactions"] and method == "POST":
            self.reactions.append((int(rest[2]), body["content"]))
            return web.json_response({"id": len(self.reactions), "content": body["content"]}, status=201)
        if rest[:2] == ["issues", "comments"] and len(rest) == 3 and method == "PATCH":
            comment = self.comments.get(int(rest[2]))
            if comment is None:
                return _error(404, "Not Found")
            comment["body"] = body["body"]
            self.comment_bodies[comment["id"]].append(body["body"])
            return web.json_response(comment)
        if rest[:1] == ["issues"] and rest[2:] == ["comments"] and method == "POST":
            comment_id = 9000 + len(self.comments) + 1
            self.comments[comment_id] = {"id": comment_id, "number": int(rest[1]), "body": body["body"]}
            self.comment_bodies[comment_id] = [body["body"]]
            return web.json_response(self.comments[comment_id], status=201)
        if rest[:1] == ["issues"] and rest[2:] == ["comments"] and method == "GET":
            return web.json_response([c for c in self.comments.values() if c["number"] == int(rest[1])])
        if rest[:1] == ["pulls"] and rest[2:] == ["files"]:
            return web.json_response(self.pull_files.get(int(rest[1]), []))
        if rest[:1] == ["contents"]:
            content = self.commits.get(request.query.get("ref", ""), {}).get("/".join(rest[1:]))
            if content is None:
                return _error(404, "Not Found")
            data = content.encode() if isinstance(content, str) else content
            encoded = base64.b64encode(data).decode()
            return web.json_response({"type": "file", "encoding": "base64", "content": encoded})
        return _error(404, "Not Found")

    def _check_jwt(self, auth: str | None) -> dict[str, Any]:
        assert auth is not None and auth.lower().startswith("bearer "), auth
        assert self.app_public_key is not None
        claims = jwt.decode(auth.split(" ", 1)[1], self.app_public_key, algorithms=["RS256"])
        assert claims["iss"] == self.app_id, claims
        return dict(claims)

    def _access_token(self, auth: str | None) -> web.Response:
        self._check_jwt(auth)
        self.tokens_issued += 1
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock() + self.token_lifetime))
        return web.json_response({"token": f"ghs_fake{self.tokens_issued}", "expires_at": expires}, status=201)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


def signed(secret: str, event: str, payload: dict[str, Any], delivery: str) -> tuple[bytes, dict[str, str]]:
    """A webhook request body and headers, signed as GitHub does (``X-Hub-Signature-256``)."""
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signature,
    }
    return body, headers


def push_payload(repository: str, branch: str, sha: str, pusher: str = "octocat") -> dict[str, Any]:
    return {
        "ref": f"refs/heads/{branch}",
        "after": sha,
        "deleted": False,
        "pusher": {"name": pusher},
        "sender": {"login": pusher},
        "repository": {"full_name": repository},
    }


def pull_request_payload(
    repository: str, number: int, head_sha: str, *, action: str = "opened", base: str = "main", merge_sha: str = ""
) -> dict[str, Any]:
    return {
        "action": action,
        "number": number,
        "pull_request": {
            "number": number,
            "head": {"sha": head_sha},
            "base": {"ref": base},
            "merged": action == "closed" and bool(merge_sha),
            "merge_commit_sha": merge_sha or None,
            "merged_by": {"login": "merger"},
        },
        "sender": {"login": "author"},
        "repository": {"full_name": repository},
    }


def status_payload(repository: str, sha: str, context: str, state: str) -> dict[str, Any]:
    """A ``status`` event: a commit status was posted (``state`` pending, success, failure or error)."""
    return {"sha": sha, "context": context, "state": state, "repository": {"full_name": repository}}


def check_run_payload(repository: str, sha: str, name: str, conclusion: str | None) -> dict[str, Any]:
    """A ``check_run`` event: completed with ``conclusion``, or (None) created and queued."""
    run = {
        "head_sha": sha,
        "name": name,
        "status": "completed" if conclusion else "queued",
        "conclusion": conclusion,
    }
    return {
        "action": "completed" if conclusion else "created",
        "check_run": run,
        "repository": {"full_name": repository},
    }


def issue_comment_payload(
    repository: str,
    number: int,
    body: str,
    *,
    login: str = "alice",
    comment_id: int = 501,
    on_pull: bool = True,
    action: str = "created",
    sender_type: str = "User",
) -> dict[str, Any]:
    """An ``issue_comment`` event: ``login`` commented ``body`` on pull request (or issue) ``number``."""
    issue: dict[str, Any] = {"number": number, "title": f"#{number}"}
    if on_pull:
        issue["pull_request"] = {"url": f"https://api.github.test/repos/{repository}/pulls/{number}"}
    user = {"login": login, "type": sender_type}
    return {
        "action": action,
        "issue": issue,
        "comment": {"id": comment_id, "body": body, "user": user},
        "repository": {"full_name": repository},
        "sender": user,
    }


def deployment_payload(
    repository: str, sha: str, environment: str, *, github_id: int = 4242, sender: str = "ci-bot"
) -> dict[str, Any]:
    """A ``deployment`` event: someone created a deployment on GitHub."""
    deployment = {
        "id": github_id,
        "sha": sha,
        "ref": "main",
        "environment": environment,
        "task": "deploy",
        "creator": {"login": sender},
    }
    return {
        "action": "created",
        "deployment": deployment,
        "repository": {"full_name": repository},
        "sender": {"login": sender},
    }
