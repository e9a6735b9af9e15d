"""The typed configuration: applications, their environments and deployment groups, the host fleet (pure).

config/parse.py builds these from the YAML file and guarantees their consistency (every environment has exactly one
group, every target host is declared, every configuration name resolves), so code holding an ``EngineConfig`` can
look things up without re-validating. Names of applications and environments are matched case-insensitively,
because they are typed by people in chat ("deploy Hello to Production"). User and role names are lower-case by
their pattern and matched exactly: each door turns its caller into one of them (engine.core.policy decides).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.core.errors import ApplicationNotFound, EnvironmentNotFound
from engine.core.model import AutoRollback, DeploymentType, Platform
from engine.core.triggers import Trigger

if TYPE_CHECKING:
    from engine.core.configs import DeploymentConfig

_UNSAFE_ID_CHARS = re.compile(r"[^a-z0-9._-]+")
ROLE_PREFIX = "@"
"""How a permission list names a role rather than a user: ``@release``."""
FROM_CONFIG_FILE = "config file"
FROM_API = "API"
"""Where an application (and its groups) comes from: ``Application.origin``."""
GITHUB_USER = "github"
"""Who merge-triggered deployments act as unless an application's ``github.deploy_as`` names another user: a
group whose ``deployers`` list is set must list it for merges to deploy there (with a ``users`` section, it must be
declared there too)."""


def expand(entries: Iterable[str], roles: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The user names a permission list stands for, in order without repeats: each ``@role`` replaced by its
    members (an undeclared role stands for nobody; the loader refuses it anyway)."""
    names: dict[str, None] = {}
    for entry in entries:
        if entry.startswith(ROLE_PREFIX):
            names.update(dict.fromkeys(roles.get(entry.removeprefix(ROLE_PREFIX), ())))
        else:
            names[entry] = None
    return tuple(names)


@dataclass(frozen=True, slots=True)
class User:
    """One person, and the ids each door knows them by. Every door turns its caller into this one name (a Slack
    user id, a GitHub login, a CodeDeploy API access key id, an API token) before the policy is asked."""

    name: str
    slack: str | None = None  # a Slack user id, U… or W…
    github: str | None = None  # a GitHub login (GitHub ignores its case, and so does the lookup)
    aws_access_key_id: str | None = None  # the id of a key in DEPLOYBOT_AWS_KEYS; never the secret


@dataclass(frozen=True, slots=True)
class Host:
    """One host of the fleet. ``local`` hosts are agent processes that ``deploybot serve`` spawns itself;
    ``port`` is where the deployed application listens on that host (what a load balancer forwards to)."""

    name: str
    tags: Mapping[str, str] = field(default_factory=dict)
    local: bool = False
    port: int | None = None

    def matches(self, selector: Mapping[str, str]) -> bool:
        """True when the host carries every tag of ``selector`` (an empty selector matches nothing)."""
        return bool(selector) and all(self.tags.get(key) == value for key, value in selector.items())


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    """Traffic control for a server group: ``haproxy`` (local, via its runtime API) or ``elbv2`` (AWS).

    ``extra`` holds the whitelisted type-specific keys (see loader.LOAD_BALANCER_EXTRA_KEYS).
    """

    type: str
    port: int | None = None
    health_check: str = "/health"
    deregistration_delay: float = 5.0
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AlarmConfiguration:
    """CodeDeploy's ``alarmConfiguration``: any listed alarm in ALARM stops the deployment."""

    enabled: bool = False
    ignore_poll_alarm_failure: bool = False
    alarms: tuple[Mapping[str, object], ...] = ()  # {"name", "type": cloudwatch|haproxy|http, thresholds...}
    poll_seconds: float = 5.0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(str(alarm["name"]) for alarm in self.alarms)


@dataclass(frozen=True, slots=True)
class BlueGreenOptions:
    """CodeDeploy's ``blueGreenDeploymentConfiguration``: when to reroute, and what to do with the old fleet."""

    ready_action: str = "CONTINUE_DEPLOYMENT"
    ready_wait_minutes: float = 0
    terminate_action: str = "KEEP_ALIVE"
    termination_wait_minutes: float = 0
    # greenFleetProvisioningOption: "discover_existing" (the group's own hosts, in halves) or
    # "copy_auto_scaling_group" (each deployment copies ``auto_scaling_group``, the current copy after the first)
    green_fleet_provisioning: str = "discover_existing"
    auto_scaling_group: str | None = None

    @property
    def copies_auto_scaling_group(self) -> bool:
        return self.green_fleet_provisioning == "copy_auto_scaling_group"


@dataclass(frozen=True, slots=True)
class DeploymentGroup:
    """The one deployment group of an application in one environment."""

    name: str
    application: str
    environment: str
    platform: Platform
    deployment_type: DeploymentType
    deployment_config: str
    traffic_config: str | None
    hosts: tuple[str, ...] = ()
    target_tags: Mapping[str, str] = field(default_factory=dict)
    load_balancer: LoadBalancer | None = None
    alarms: AlarmConfiguration = AlarmConfiguration()
    auto_rollback: AutoRollback = field(default_factory=AutoRollback)
    blue_green: BlueGreenOptions = BlueGreenOptions()
    file_exists_behavior: str = "DISALLOW"
    ignore_application_stop_failures: bool = False
    # Who may act here, as written: user names and ``@role``s (EngineConfig.members expands them). Empty means
    # "not set": anyone, except in production, where only admins (see engine.core.policy).
    deployers: tuple[str, ...] = ()
    approvers: tuple[str, ...] = ()
    rollbackers: tuple[str, ...] = ()  # unset: the deployers
    required_approvals: int = 0
    watch_minutes: float = 0  # alarms stay armed this long after success; a firing alarm then rolls back
    # Release flow: what a request meets while locked, how long an approval counts, and how long a revision must
    # have run here before it may be promoted from here.
    lock_policy: str = "refuse"  # "refuse" | "queue"
    approval_ttl_minutes: float = 60
    min_soak_minutes: float = 0
    extra: Mapping[str, object] = field(default_factory=dict)
    # Notifications of deployment and instance events (engine/core/triggers.py), and what a deployment meets when
    # a target's agent is offline: "refuse" it (naming the hosts), or "proceed" (those hosts fail).
    triggers: tuple[Trigger, ...] = ()
    offline_hosts: str = "proceed"

    def group_id(self) -> str:
        """A stable id that survives renaming the group and case changes: ``hello-staging``; safe in file names."""
        raw = f"{self.application}-{self.environment}".lower()
        return _UNSAFE_ID_CHARS.sub("_", raw)


@dataclass(frozen=True, slots=True)
class Application:
    """An application, its environments in promotion order and one group per environment.

    ``revision`` is the default revision source: a path already resolved against the config file's directory by the
    loader (or ``git:REF``).
    """

    name: str
    platform: Platform
    environments: tuple[str, ...]
    groups: Mapping[str, DeploymentGroup]
    revision: str | None = None
    slack_channel: str | None = None
    github_repository: str | None = None
    # {"branch": str, "to": str} and, when a gate is configured, "require_checks": tuple[str, ...] (status contexts
    # or check-run names that must be green) and "checks_timeout_minutes": float.
    auto_deploy: Mapping[str, object] | None = None
    github_environment_urls: Mapping[str, str] = field(default_factory=dict)  # environment -> its public URL
    github_deploy_as: str = GITHUB_USER  # the user merges into ``auto_deploy.branch`` deploy as
    # The least repository permission (write | maintain | admin) a commenter needs to deploy from a PR comment.
    github_comment_permission: str = "write"
    extra: Mapping[str, object] = field(default_factory=dict)
    origin: str = FROM_CONFIG_FILE  # or FROM_API: created through the CodeDeploy API (engine/runtime/registry.py)

    def environment(self, name: str) -> str:
        """The declared spelling of environment ``name`` (case-insensitive); raises EnvironmentNotFound."""
        wanted = name.casefold()
        for environment in self.environments:
            if environment.casefold() == wanted:
                return environment
        raise EnvironmentNotFound(self.name, name, self.environments)

    def next_environment(self, environment: str) -> str | None:
        """The environment after ``environment`` in promotion order, None for the last one."""
        index = self.environments.index(self.environment(environment))
        return self.environments[index + 1] if index + 1 < len(self.environments) else None


class Applications(Mapping[str, Application]):
    """``EngineConfig.applications``: the config file's applications (``declared``), then those created through the
    CodeDeploy API (``api``, which engine/runtime/registry.py keeps current), so everything holding the config sees
    both without being told. A name both use is the file's (the registry refuses to create one anyway)."""

    def __init__(self, declared: Mapping[str, Application]) -> None:
        self.declared = declared
        self.api: Mapping[str, Application] = {}

    def __getitem__(self, name: str) -> Application:
        found = self.declared.get(name)
        return found if found is not None else self.api[name]

    def __iter__(self) -> Iterator[str]:
        yield from self.declared
        yield from (name for name in self.api if name not in self.declared)

    def __len__(self) -> int:
        return len(self.declared) + sum(1 for name in self.api if name not in self.declared)


@dataclass(frozen=True, slots=True)
class AwsAccount:
    """Where AWS calls for a group go: region, an optional named profile (otherwise the standard credential chain:
    environment, shared files, instance role) and an optional ``endpoint_url`` for any AWS-compatible endpoint."""

    name: str = "default"
    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """``server.tls``: the server speaks HTTPS with ``cert`` (PEM: its certificate, then any intermediates) and
    ``key`` (PEM, unencrypted). ``ca`` is the CA certificate that signed ``cert``, for a private CA: local agents
    are given it and the server prints it for remote ones; without it clients use the system CAs. Paths are resolved
    against the config file's directory; whether the files are readable and match is checked when the server
    starts (this module does no I/O)."""

    cert: str
    key: str
    ca: str | None = None


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """The ``store`` section: deploybot's state in the PostgreSQL database at ``url``
    (``postgresql://USER@HOST:PORT/DATABASE``), which several servers may share; without the section, SQLite in
    ``server.data_dir``. The password is never in the file (the loader refuses a URL holding one): ``password_env``
    names the environment variable that holds it; otherwise PostgreSQL's own PGPASSWORD or ~/.pgpass apply."""

    url: str
    password_env: str | None = None


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The ``server`` section. ``data_dir`` (and ``tls``'s paths) are already resolved against the config file's
    directory."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    data_dir: str = "var"
    public_url: str | None = None
    heartbeat_timeout: float = 60.0
    admins: tuple[str, ...] = ()  # user names and @roles, as written
    tls: TlsSettings | None = None
    revision_roots: tuple[str, ...] = ()
    """Directories (resolved against the config file's) under which an API caller may name a server-side path as a
    revision, besides each application's own ``revision``; see engine/core/revision_paths.py."""
    agent_offline_after_seconds: float = 60.0
    """An agent not heard from for this long is offline: announced once, shown by plan, refused per group."""
    lease_seconds: float = 10.0
    """How long a replica's lease on a deployment group lasts unrenewed (renewed every third of it): a replica that
    dies is taken over within this time (engine/core/leases.py; docs/postgresql.md "Replicas")."""

    @property
    def scheme(self) -> str:
        """``https`` when the server speaks TLS (``server.tls``), else ``http``."""
        return "https" if self.tls is not None else "http"

    @property
    def url(self) -> str:
        """Where agents and users reach the server: ``public_url`` or the listen address."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{self.scheme}://{host}:{self.listen_port}"


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The whole configuration. ``deployment_configs`` holds the custom configurations only (built-ins live in
    engine.core.configs); ``source`` is the file it came from and ``base_dir`` that file's directory.

    ``users`` is None when the file declares no ``users`` section: names in permission lists are then free-form
    (whatever a door calls its caller). Once declared, it is the whole vocabulary: the loader refuses any other name.
    """

    source: str
    server: ServerSettings
    applications: Mapping[str, Application]
    hosts: Mapping[str, Host]
    deployment_configs: Mapping[str, DeploymentConfig]
    base_dir: str = "."
    aws_accounts: Mapping[str, AwsAccount] = field(default_factory=dict)
    users: Mapping[str, User] | None = None
    roles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # role name (without "@") -> user names
    store: StoreSettings | None = None  # None: SQLite in server.data_dir
    # Door identities -> user name, built once here so every request's lookup is one dict access.
    _by_slack: Mapping[str, str] = field(init=False, repr=False, compare=False)
    _by_github: Mapping[str, str] = field(init=False, repr=False, compare=False)  # casefolded login
    _by_access_key: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.applications, Applications):
            object.__setattr__(self, "applications", Applications(self.applications))
        users = tuple((self.users or {}).values())
        object.__setattr__(self, "_by_slack", {u.slack: u.name for u in users if u.slack})
        object.__setattr__(self, "_by_github", {u.github.casefold(): u.name for u in users if u.github})
        object.__setattr__(self, "_by_access_key", {u.aws_access_key_id: u.name for u in users if u.aws_access_key_id})

    def user_by_slack(self, slack_id: str) -> str | None:
        """The user whose Slack user id this is, or None (unknown, or no ``users`` section)."""
        return self._by_slack.get(slack_id)

    def user_by_github(self, login: str) -> str | None:
        """The user with this GitHub login (ignoring case, as GitHub does), or None."""
        return self._by_github.get(login.casefold())

    def user_by_access_key(self, access_key_id: str) -> str | None:
        """The user a CodeDeploy API access key id belongs to, or None."""
        return self._by_access_key.get(access_key_id)

    def members(self, entries: Iterable[str]) -> tuple[str, ...]:
        """The user names a permission list (``server.admins``, a group's ``deployers``, ...) stands for, with its
        ``@role``s expanded; what ``actor in ...`` checks must use."""
        return expand(entries, self.roles)

    def aws_account(self, name: str = "default") -> AwsAccount:
        """The named account; "default" exists even when the config has no ``aws`` section (standard chain)."""
        return self.aws_accounts.get(name) or AwsAccount(name)

    def application(self, name: str) -> Application:
        """The application called ``name``, ignoring case; raises ApplicationNotFound listing the known ones."""
        found = self.applications.get(name)
        if found is not None:
            return found
        wanted = name.casefold()
        for application in self.applications.values():
            if application.name.casefold() == wanted:
                return application
        raise ApplicationNotFound(name, tuple(self.applications))

    def group(self, application: str, environment: str) -> DeploymentGroup:
        """The group of ``application`` in ``environment`` (both case-insensitive); raises EnvironmentNotFound."""
        app = self.application(application)
        return app.groups[app.environment(environment)]

    def targets(self, group: DeploymentGroup) -> tuple[Host, ...]:
        """The hosts a group deploys to: its named hosts in the given order, else the hosts matching its tags in
        declaration order."""
        if group.hosts:
            return tuple(self.hosts[name] for name in group.hosts)
        return tuple(host for host in self.hosts.values() if host.matches(group.target_tags))

    def groups(self) -> Iterator[DeploymentGroup]:
        """Every deployment group, application by application, in promotion order."""
        for application in self.applications.values():
            for environment in application.environments:
                yield application.groups[environment]

    def local_hosts(self) -> tuple[Host, ...]:
        """The hosts ``deploybot serve`` spawns as agent processes."""
        return tuple(host for host in self.hosts.values() if host.local)

    def deployment_config(self, name: str) -> DeploymentConfig:
        """Resolve a configuration name, built-in or custom; raises UnknownDeploymentConfig."""
        from engine.core.configs import resolve_config

        return resolve_config(name, self.deployment_configs)
