"""The engine's exception tree (pure). Errors carry data; words are chosen only at the edge (CLI, API, chat).

EngineError
├── ConfigError                 config YAML problems, each with file:line and key path (.problems)
├── AppSpecInvalid              appspec.yml problems, each with line:column (.problems)
├── UnknownDeploymentConfig     a configuration name that is neither built in nor custom (.name)
├── InvalidTransition           the state machine was sent an event its state cannot take (.state, .event)
├── NotFound
│   ├── ApplicationNotFound     (.application)
│   ├── EnvironmentNotFound     (.application, .environment)
│   ├── DeploymentNotFound      (.deployment_id)
│   └── RevisionNotFound        (.sha256)
├── BundleError                 an unsafe or unreadable revision bundle (.reason, .member)
├── DeploymentRefused           a request the release flow will not start (.reason)
└── AdapterError                a real component failed (.component, .detail)
"""

from __future__ import annotations

from dataclasses import dataclass


class EngineError(Exception):
    """Root of every error the engine raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One located problem in a user's file: ``file:line:column: message`` at the edge."""

    file: str
    line: int
    column: int
    message: str
    path: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        at = f" ({self.path})" if self.path else ""
        return f"{where}: {self.message}{at}"


class ConfigError(EngineError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class AppSpecInvalid(EngineError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class UnknownDeploymentConfig(EngineError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown deployment configuration {name!r}")


class InvalidTransition(EngineError):
    def __init__(self, state: str, event: str) -> None:
        self.state = state
        self.event = event
        super().__init__(f"a deployment in state {state} cannot take event {event}")


class NotFound(EngineError):
    pass


class ApplicationNotFound(NotFound):
    def __init__(self, application: str, known: tuple[str, ...] = ()) -> None:
        self.application = application
        self.known = known
        super().__init__(f"no application named {application!r}")


class EnvironmentNotFound(NotFound):
    def __init__(self, application: str, environment: str, known: tuple[str, ...] = ()) -> None:
        self.application = application
        self.environment = environment
        self.known = known
        super().__init__(f"application {application!r} has no environment {environment!r}")


class DeploymentNotFound(NotFound):
    def __init__(self, deployment_id: str) -> None:
        self.deployment_id = deployment_id
        super().__init__(f"no deployment {deployment_id!r}")


class RevisionNotFound(NotFound):
    def __init__(self, sha256: str) -> None:
        self.sha256 = sha256
        super().__init__(f"no stored revision {sha256}")


class BundleError(EngineError):
    def __init__(self, reason: str, member: str = "") -> None:
        self.reason = reason
        self.member = member
        super().__init__(f"{reason}: {member}" if member else reason)


class BadRevisionName(EngineError):
    """A revision named in a form that cannot name anything (a malformed ``s3://`` URL): the request is at fault,
    nothing was fetched."""

    def __init__(self, revision: str, reason: str) -> None:
        self.revision = revision if len(revision) <= 200 else revision[:200] + "…"
        self.reason = reason
        super().__init__(f"bad revision: {reason}")


class DeploymentRefused(EngineError):
    def __init__(self, reason: str, **details: object) -> None:
        self.reason = reason
        self.details = details
        super().__init__(reason)


class AdapterError(EngineError):
    def __init__(self, component: str, detail: str) -> None:
        self.component = component
        self.detail = detail
        super().__init__(f"{component}: {detail}")


class LifecycleHookNotFound(NotFound):
    """A status callback for a hook execution that is not waiting (unknown, already answered, or timed out)."""

    def __init__(self, execution_id: str, deployment_id: str | None = None) -> None:
        self.execution_id = execution_id
        self.deployment_id = deployment_id
        super().__init__(f"no lifecycle hook execution {execution_id!r} is waiting for a status")


class InvalidLifecycleHookStatus(EngineError):
    def __init__(self, status: str) -> None:
        self.status = status
        super().__init__(f"a lifecycle hook status must be Succeeded or Failed, got {status!r}")
