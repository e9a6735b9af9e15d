"""Config YAML -> typed EngineConfig, strictly, every problem located at file:line:column with its key path.

``parse_config`` is pure; ``load_config`` reads the file. Problems are collected, not raised one by one: someone
fixing a config wants the whole list at once. The file is read as a node tree by engine.core.yamlnode (so values keep
their marks and keys given twice are caught); merge keys (``<<: *defaults``) work. The format is documented at the
top of config/deploybot.example.yml; paths in it (``data_dir``, ``revision``) are resolved against the file's
directory. This module reads the top level, the users and roles, the server, custom configurations and
applications; config/groups.py reads the hosts and each deployment group.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.core.config.groups import (
    DEPLOYMENT_TYPES,
    GROUP_EXTRA_KEYS,
    LOAD_BALANCER_EXTRA_KEYS,
    NAME,
    GroupContext,
    People,
    extra_values,
    parse_group,
    parse_hosts,
    person_problem,
    read_name,
    read_people,
    resolve_path,
)
from engine.core.config.model import (
    GITHUB_USER,
    ROLE_PREFIX,
    Application,
    AwsAccount,
    DeploymentGroup,
    EngineConfig,
    ServerSettings,
    StoreSettings,
    TlsSettings,
    User,
)
from engine.core.configs import (
    DeploymentConfig,
    MinimumHealthyHosts,
    MinimumHealthyHostsType,
    TrafficRouting,
    TrafficRoutingType,
    validate_custom_config,
)
from engine.core.errors import ConfigError, Problem
from engine.core.model import Platform
from engine.core.policy import BOOTSTRAP_ADMIN
from engine.core.yamlnode import NULL_TAG, Entry, NodeReader, YamlLimits, did_you_mean, is_null

__all__ = [
    "APPLICATION_EXTRA_KEYS",
    "DEFAULT_CONFIG_PATH",
    "DEPLOYMENT_TYPES",
    "GROUP_EXTRA_KEYS",
    "LOAD_BALANCER_EXTRA_KEYS",
    "load_config",
    "parse_config",
]

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[3] / "config" / "deploybot.example.yml"
"""The embedded default configuration `deploybot serve` uses when given no --config."""

APPLICATION_EXTRA_KEYS = ("description",)
"""Application keys of later features, kept verbatim in ``Application.extra`` (the group's are GROUP_EXTRA_KEYS)."""
_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$")
_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
COMMENT_PERMISSIONS = ("write", "maintain", "admin")  # github.comment_permission, the default first
PERSON_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
"""A user or role name: lower-case, so that one person never has two spellings; matched exactly."""
# What each door knows a user by: (label in messages, pattern, what a bad value is told).
_USER_IDS = {
    "slack": ("Slack user id", re.compile(r"^[UW][A-Z0-9]{2,}$"), "a Slack user id (U… or W…)"),
    "github": ("GitHub login", re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}$"), "a GitHub login"),
    "aws_access_key_id": (
        "access key id",
        re.compile(r"^[A-Za-z0-9]{4,128}$"),
        "an access key id (letters and digits, like AKIA…; the secret never goes here)",
    ),
}
CONFIG_LIMITS = YamlLimits(what="config file", max_bytes=4 * 1024 * 1024, max_nodes=200_000, max_depth=100)
"""The most a config file may ask of the parser: room for thousands of hosts, refused before parsing past that."""
_DAY_SECONDS = 24 * 60 * 60
_APPLICATION_KEYS = (
    *("platform", "revision", "slack_channel", "github", "environments", "deployment_groups"),
    *APPLICATION_EXTRA_KEYS,
)


def parse_config(text: str, *, filename: str = "<config>", base_dir: str = ".") -> EngineConfig:
    """Parse and check a whole config; raises ConfigError with every problem found, sorted by position."""
    reader = NodeReader(filename, CONFIG_LIMITS)
    null = ScalarNode(NULL_TAG, "")
    root = reader.compose(text, _yaml_problem) or null
    if reader.problems:
        raise ConfigError(reader.problems)
    reader.check_duplicates(root)
    # Top-level "x-..." keys are ignored, so they can hold YAML anchors shared by groups (as in docker compose).
    pairs = root.value if isinstance(root, MappingNode) else []
    keys = [k.value for k, _ in pairs if isinstance(k, ScalarNode) and str(k.value).startswith("x-")]
    sections = ("server", "store", "users", "roles", "aws", "deployment_configs", "hosts", "applications")
    top = reader.fields(root, "", (*sections, *keys))
    users = _users(reader, top["users"].value) if "users" in top else None
    roles = _roles(reader, top["roles"].value if "roles" in top else null, People(users))
    people = People(users, roles)
    server = _server(reader, top["server"].value if "server" in top else null, base_dir, people)
    store = _store(reader, top["store"].value) if "store" in top else None
    configs = _deployment_configs(reader, top["deployment_configs"].value if "deployment_configs" in top else null)
    fleet = parse_hosts(reader, top["hosts"].value if "hosts" in top else null, server.listen_port)
    accounts = _aws_accounts(reader, top["aws"].value if "aws" in top else null)
    ctx = GroupContext(fleet, configs, base_dir, {}, accounts, people)
    applications: dict[str, Application] = {}
    apps_node = top["applications"].value if "applications" in top else null
    for name, entry in reader.named(apps_node, "applications").items():
        if not NAME.match(name):
            reader.report(entry.key, f"bad application name {name!r}: use letters, digits, '.', '_' or '-'", entry.path)
        if twin := next((a for a in applications if a.casefold() == name.casefold()), None):
            reader.report(entry.key, f"application {name!r} differs from {twin!r} only in case", entry.path)
            continue
        applications[name] = _application(reader, name, entry, ctx)
    if reader.problems:
        raise ConfigError(reader.sorted_problems())
    return EngineConfig(
        filename, server, applications, fleet.hosts, configs, base_dir, accounts, users, roles, store=store
    )


def load_config(path: str | Path) -> EngineConfig:
    """Read and parse a config file; paths in it resolve against its directory.

    Raises OSError (e.g. FileNotFoundError) when the file cannot be read and ConfigError when it is invalid.
    """
    file = Path(path)
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(str(path), 1, 1, f"not UTF-8 text (bad byte at offset {exc.start})")]) from exc
    return parse_config(text, filename=str(path), base_dir=str(file.resolve().parent))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem, context = getattr(exc, "problem", None), getattr(exc, "context", None)
    detail = f"{context}, {problem}" if (problem or "").startswith("but ") else problem or context or str(exc)
    return f"invalid YAML: {detail}"


def _listen(reader: NodeReader, node: Node, path: str) -> tuple[str, int] | None:
    value = reader.string(node, path)
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    ok = port.isdigit() and int(port) <= 65535 and bool(host) and (bracketed or ":" not in host)
    if ok:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            ok = not bracketed and bool(_HOSTNAME.match(host))
    if not ok:
        reader.report(node, f"bad listen address {value!r}: expected HOST:PORT, like 127.0.0.1:8080", path)
        return None
    return host, int(port)


def _tls(reader: NodeReader, node: Node, path: str, base_dir: str) -> TlsSettings | None:
    """``server.tls: {cert: PATH, key: PATH, ca: PATH}``: cert and key together (ca optional), each resolved against
    the config file's directory. Their contents are checked when the server starts (reading them is I/O)."""
    entries = reader.fields(node, path, ("cert", "key", "ca"), required=("cert", "key"))
    cert = reader.get(entries, "cert", reader.string, None)
    key = reader.get(entries, "key", reader.string, None)
    ca = reader.get(entries, "ca", reader.string, None)
    if cert is None or key is None:
        return None
    return TlsSettings(
        cert=resolve_path(base_dir, cert),
        key=resolve_path(base_dir, key),
        ca=resolve_path(base_dir, ca) if ca is not None else None,
    )


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _store(reader: NodeReader, node: Node) -> StoreSettings | None:
    """``store: {url: postgresql://USER@HOST:PORT/DATABASE, password_env: NAME}``; a URL holding a password is
    refused: the file is read by more people than the database's password should be."""
    entries = reader.fields(node, "store", ("url", "password_env"), required=("url",))
    url = reader.get(entries, "url", partial(_postgres_url, reader), None)
    password_env = reader.get(entries, "password_env", reader.string, None)
    if password_env is not None and not _ENV_NAME.match(password_env):
        message = f"bad environment variable name {password_env!r}: use letters, digits and '_'"
        reader.report(entries["password_env"].value, message, "store.password_env")
        return None
    return None if url is None else StoreSettings(url=url, password_env=password_env)


def _postgres_url(reader: NodeReader, node: Node, path: str) -> str | None:
    value = reader.string(node, path)
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError as exc:
        reader.report(node, f"bad PostgreSQL URL ({exc}): expected postgresql://USER@HOST:PORT/DATABASE", path)
        return None
    if parts.scheme not in ("postgresql", "postgres"):
        reader.report(node, f"expected a postgresql://USER@HOST:PORT/DATABASE URL, got {value!r}", path)
        return None
    if parts.password is not None:
        message = (
            "the URL holds a password, which must not be in the config file: remove it and set PGPASSWORD in "
            "the server's environment, or name the variable holding it with store.password_env"
        )
        reader.report(node, message, path)  # the value itself is not repeated: it holds the secret
        return None
    return value


def _server(reader: NodeReader, node: Node, base_dir: str, people: People) -> ServerSettings:
    keys = (
        *("listen", "data_dir", "public_url", "heartbeat_timeout", "agent_offline_after_seconds", "admins", "tls"),
        "revision_roots",
        "lease_seconds",
    )
    entries = reader.fields(node, "server", keys)
    host, port = reader.get(entries, "listen", partial(_listen, reader), ("127.0.0.1", 8080))
    return ServerSettings(
        listen_host=host,
        listen_port=port,
        data_dir=resolve_path(base_dir, reader.get(entries, "data_dir", reader.string, "var")),
        public_url=reader.get(entries, "public_url", reader.url, None),
        heartbeat_timeout=reader.get(entries, "heartbeat_timeout", reader.number, 60.0, 1, _DAY_SECONDS),
        agent_offline_after_seconds=reader.get(
            entries, "agent_offline_after_seconds", reader.number, 60.0, 1, _DAY_SECONDS
        ),
        admins=reader.get(entries, "admins", partial(read_people, reader), (), people),
        tls=reader.get(entries, "tls", partial(_tls, reader), None, base_dir),
        revision_roots=tuple(
            resolve_path(base_dir, root) for root in reader.get(entries, "revision_roots", reader.strings, ())
        ),
        lease_seconds=reader.get(entries, "lease_seconds", reader.number, 10.0, 1, 3600),
    )


def _users(reader: NodeReader, node: Node) -> dict[str, User]:
    """``users: {NAME: {slack, github, aws_access_key_id}}``: one name per person, and the id each door knows them
    by; an id may belong to one user only, or a door could not tell who asks."""
    users: dict[str, User] = {}
    owners: dict[tuple[str, str], str] = {}  # (key, id as compared) -> the user it belongs to
    for name, entry in reader.named(node, "users").items():
        refused = None
        if not PERSON_NAME.match(name):
            refused = f"bad user name {name!r}: use lower-case letters, digits, '.', '_' or '-'"
        elif name == BOOTSTRAP_ADMIN:
            refused = f"{name!r} is reserved for the bootstrap admin (the API token)"
        if refused is not None:
            reader.report(entry.key, refused, entry.path)
        fields = reader.fields(entry.value, entry.path, tuple(_USER_IDS))
        ids: dict[str, str | None] = {}
        for key, (label, pattern, expected) in _USER_IDS.items():
            value = ids[key] = reader.get(fields, key, reader.string, None)
            if value is None:
                continue
            where = fields[key]
            compared = value.casefold() if key == "github" else value
            if not pattern.match(value):
                reader.report(where.value, f"{value!r} is not {expected}", where.path)
            elif (other := owners.setdefault((key, compared), name)) != name:
                reader.report(where.value, f"{label} {value!r} is already used by user {other!r}", where.path)
        if refused is None:  # a refused name is not offered as a spelling hint
            users[name] = User(name, ids["slack"], ids["github"], ids["aws_access_key_id"])
    return users


def _roles(reader: NodeReader, node: Node, people: People) -> dict[str, tuple[str, ...]]:
    """``roles: {ROLE: [USER, ...]}``, named elsewhere as ``@ROLE``; a role lists users only, so roles never nest."""
    roles: dict[str, tuple[str, ...]] = {}
    for name, entry in reader.named(node, "roles").items():
        members = read_people(reader, entry.value, entry.path, people, allow_roles=False)
        if PERSON_NAME.match(name):
            roles[name] = members
        else:
            message = f"bad role name {name!r}: use lower-case letters, digits, '.', '_' or '-'"
            reader.report(entry.key, message, entry.path)
    return roles


def _aws_accounts(reader: NodeReader, node: Node) -> dict[str, AwsAccount]:
    """``aws: {NAME: {region, profile, endpoint_url}}``; credentials never live here (standard chain or profile)."""
    accounts: dict[str, AwsAccount] = {}
    for name, entry in reader.named(node, "aws").items():
        fields = reader.fields(entry.value, entry.path, ("region", "profile", "endpoint_url"))
        accounts[name] = AwsAccount(
            name=name,
            region=reader.get(fields, "region", reader.string, None),
            profile=reader.get(fields, "profile", reader.string, None),
            endpoint_url=reader.get(fields, "endpoint_url", reader.url, None),
        )
    return accounts


def _deployment_configs(reader: NodeReader, node: Node) -> dict[str, DeploymentConfig]:
    configs: dict[str, DeploymentConfig] = {}
    for name, entry in reader.named(node, "deployment_configs").items():
        keys = ("compute_platform", "minimum_healthy_hosts", "traffic_routing")
        fields = reader.fields(entry.value, entry.path, keys, required=("compute_platform",))
        platform = Platform(reader.get(fields, "compute_platform", reader.choice, "server", tuple(Platform)))
        mhh = routing = None
        if (mhh_entry := fields.get("minimum_healthy_hosts")) and not is_null(mhh_entry.value):
            sub = reader.fields(mhh_entry.value, mhh_entry.path, ("type", "value"), required=("type", "value"))
            kinds = ("HOST_COUNT", "FLEET_PERCENT")
            mhh = MinimumHealthyHosts(
                MinimumHealthyHostsType(reader.get(sub, "type", reader.choice, "HOST_COUNT", kinds)),
                reader.get(sub, "value", reader.integer, 0),
            )
        if (routing_entry := fields.get("traffic_routing")) and not is_null(routing_entry.value):
            keys = ("type", "percentage", "interval_minutes")
            sub = reader.fields(routing_entry.value, routing_entry.path, keys, required=("type",))
            routing = TrafficRouting(
                TrafficRoutingType(reader.get(sub, "type", reader.choice, "AllAtOnce", tuple(TrafficRoutingType))),
                reader.get(sub, "percentage", reader.integer, 0),
                reader.get(sub, "interval_minutes", reader.number, 0),
            )
        config = DeploymentConfig(name, platform, mhh, routing)
        for message in validate_custom_config(config):
            reader.report(entry.key, message, entry.path)
        configs[name] = config
    return configs


def _application(reader: NodeReader, name: str, entry: Entry, ctx: GroupContext) -> Application:
    required = ("environments", "deployment_groups")
    fields = reader.fields(entry.value, entry.path, _APPLICATION_KEYS, required=required)
    platform = Platform(reader.get(fields, "platform", reader.choice, "server", tuple(Platform)))
    declared: dict[str, tuple[Node, str]] = {}
    if (envs := fields.get("environments")) is not None:
        for item, path in reader.items(envs.value, envs.path):
            environment = read_name(reader, item, path, "environment")
            if environment is None:
                continue
            twin = next((e for e in declared if e.casefold() == environment.casefold()), None)
            if twin is not None:
                reader.report(item, f"environment {environment!r} is listed twice", path)
                continue
            declared[environment] = (item, path)
        if isinstance(envs.value, SequenceNode) and not envs.value.value:
            reader.report(envs.value, "declare at least one environment", envs.path)
    groups: dict[str, DeploymentGroup] = {}
    group_entries = (
        reader.named(fields["deployment_groups"].value, fields["deployment_groups"].path)
        if ("deployment_groups" in fields)
        else {}
    )
    for environment, group_entry in group_entries.items():
        if environment not in declared:
            hint = did_you_mean(environment, declared, list_known=True)
            message = f"deployment group for undeclared environment {environment!r}{hint}"
            reader.report(group_entry.key, message, group_entry.path)
            continue
        groups[environment] = parse_group(reader, name, environment, platform, group_entry, ctx)
    for environment, (item, path) in declared.items():
        if environment not in group_entries:
            message = f"environment {environment!r} has no deployment group (add deployment_groups.{environment})"
            reader.report(item, message, path)
    repository, auto_deploy, environment_urls, deploy_as, comment_permission = _github(
        reader, fields, declared, ctx.people
    )
    revision = reader.get(fields, "revision", reader.string, None)
    return Application(
        name=name,
        platform=platform,
        environments=tuple(declared),
        groups=groups,
        revision=None if revision is None else resolve_path(ctx.base_dir, revision),
        slack_channel=reader.get(fields, "slack_channel", reader.string, None),
        github_repository=repository,
        auto_deploy=auto_deploy,
        github_environment_urls=environment_urls,
        github_deploy_as=deploy_as,
        github_comment_permission=comment_permission,
        extra=extra_values(reader, fields, APPLICATION_EXTRA_KEYS),
    )


def _github(
    reader: NodeReader, fields: dict[str, Entry], environments: Collection[str], people: People
) -> tuple[str | None, dict[str, object] | None, dict[str, str], str, str]:
    if (entry := fields.get("github")) is None:
        return None, None, {}, GITHUB_USER, COMMENT_PERMISSIONS[0]
    allowed = ("repository", "auto_deploy", "environment_urls", "deploy_as", "comment_permission")
    github = reader.fields(entry.value, entry.path, allowed, required=("repository",))
    deploy_as = _deploy_as(reader, github.get("deploy_as"), people)
    comment_permission = reader.get(github, "comment_permission", reader.string, None) or COMMENT_PERMISSIONS[0]
    if comment_permission not in COMMENT_PERMISSIONS:
        where = github["comment_permission"]
        reader.report(where.value, f"expected one of {', '.join(COMMENT_PERMISSIONS)}", where.path)
        comment_permission = COMMENT_PERMISSIONS[0]
    repository = reader.get(github, "repository", reader.string, None)
    if repository is not None and not _REPOSITORY.match(repository):
        where = github["repository"]
        reader.report(where.value, f"expected OWNER/NAME, got {repository!r}", where.path)
    urls: dict[str, str] = reader.get(github, "environment_urls", reader.string_map, {})
    for env in urls:
        if env not in environments:
            where = github["environment_urls"]
            hint = did_you_mean(env, environments, list_known=True)
            reader.report(where.value, f"unknown environment {env!r}{hint}", f"{where.path}.{env}")
    if (auto := github.get("auto_deploy")) is None or is_null(auto.value):
        return repository, None, urls, deploy_as, comment_permission
    keys = ("branch", "to", "require_checks", "checks_timeout_minutes")
    rule = reader.fields(auto.value, auto.path, keys, required=("branch", "to"))
    target = rule.get("to")
    if target is not None and (to := reader.string(target.value, target.path)) and to not in environments:
        reader.report(
            target.value, f"unknown environment {to!r}{did_you_mean(to, environments, list_known=True)}", target.path
        )
    values: dict[str, object] = {key: reader.get(rule, key, reader.string, "") for key in ("branch", "to")}
    if "require_checks" in rule:
        values["require_checks"] = reader.get(rule, "require_checks", reader.strings, ())
        values["checks_timeout_minutes"] = reader.get(rule, "checks_timeout_minutes", reader.number, 30.0)
    elif "checks_timeout_minutes" in rule:
        where = rule["checks_timeout_minutes"]
        reader.report(where.key, "checks_timeout_minutes needs require_checks", where.path)
    return repository, values, urls, deploy_as, comment_permission


def _deploy_as(reader: NodeReader, entry: Entry | None, people: People) -> str:
    """``github.deploy_as``: the one user (not a role) merges deploy as; a declared one once ``users`` exists."""
    name = None if entry is None else reader.string(entry.value, entry.path)
    if entry is None or name is None:
        return GITHUB_USER
    if name.startswith(ROLE_PREFIX):
        problem: str | None = f"deploy_as names one user, not a role: {name!r}"
    else:
        problem = person_problem(name, people, allow_roles=False)
    if problem is not None:
        reader.report(entry.value, problem, entry.path)
        return GITHUB_USER
    return name
