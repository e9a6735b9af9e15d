"""Config YAML -> typed EngineConfig, strictly, every problem located at file:line:column with its key path.

``parse_config`` is pure; ``load_config`` reads the file. Problems are collected, not raised one by one: someone
fixing a config wants the whole list at once. The parser walks PyYAML's node tree (``yaml.compose``) rather than
constructed objects, because only nodes keep their marks and show duplicate keys (the constructor silently keeps
the last one). Merge keys (``<<: *defaults``) work. The format is documented at the top of
config/deploybot.example.yml; paths in it (``data_dir``, ``revision``) are resolved against the file's directory.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Collection, Iterable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.configs import (
    DeploymentConfig,
    IncompatibleDeploymentConfig,
    MinimumHealthyHosts,
    MinimumHealthyHostsType,
    TrafficRouting,
    TrafficRoutingType,
    close_config_names,
    config_for_group,
    default_config_name,
    traffic_config_for_hosts,
    validate_custom_config,
)
from engine.errors import ConfigError, Problem, UnknownDeploymentConfig
from engine.model import AutoRollback, AutoRollbackEvent, DeploymentType, Platform
from engine.topology import (
    AlarmConfiguration,
    Application,
    BlueGreenOptions,
    DeploymentGroup,
    EngineConfig,
    Host,
    LoadBalancer,
    ServerSettings,
)

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "deploybot.example.yml"
"""The embedded default configuration `deploybot serve` uses when given no --config."""

# Keys of later features that are kept verbatim in the ``extra`` of the object they belong to. Anything else
# unknown is an error, so a typo never silently disables a setting.
APPLICATION_EXTRA_KEYS = ("description",)
GROUP_EXTRA_KEYS = (
    "function_name",
    "alias",
    "cluster",
    "service",
    "auto_scaling_groups",
    "region",
    "endpoint_url",
)
LOAD_BALANCER_EXTRA_KEYS = (
    "listener_arn",
    "test_listener_arn",
    "target_groups",
    "region",
    "endpoint_url",
    "backend",
)

DEPLOYMENT_TYPES = {"in-place": DeploymentType.IN_PLACE, "blue-green": DeploymentType.BLUE_GREEN}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$")
_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_MAX_WAIT_MINUTES = 2880

_T = TypeVar("_T")
_TAG = "tag:yaml.org,2002:"
_KINDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false", "null": "null"}
_KINDS |= {"timestamp": "a date", "binary": "binary data", "set": "a set", "omap": "an ordered mapping"}


class _Entry(NamedTuple):
    key: Node
    value: Node
    path: str


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _suggest(word: str, choices: Iterable[str], *, known: bool = False) -> str:
    """`` (did you mean 'x'?)``, or with ``known`` a short list of what exists, or nothing."""
    options = [str(choice) for choice in choices]
    folded = {choice.casefold().replace("_", "-"): choice for choice in options}
    match = folded.get(word.casefold().replace("_", "-")) or next(
        iter(difflib.get_close_matches(word, options, n=1, cutoff=0.6)), None
    )
    if match:
        return f" (did you mean {match!r}?)"
    return f"; known: {', '.join(options)}" if known and 0 < len(options) <= 12 else ""


def _scalar_kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _KINDS.get(node.tag.removeprefix(_TAG), f"a {node.tag} value")


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _TAG + "null"


class _Reader:
    """Typed access to YAML nodes; every failure becomes a Problem, and the caller gets a default to go on with."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[Problem] = []
        self._constructor = SafeConstructor()

    def report(self, node: Node, message: str, path: str) -> None:
        mark = node.start_mark
        self.problems.append(Problem(self.filename, mark.line + 1, mark.column + 1, message, path))

    def expect(self, node: Node, expected: str, path: str) -> None:
        self.report(node, f"expected {expected}, got {_scalar_kind(node)}", path)

    def check_duplicates(self, node: Node, path: str = "", seen: set[int] | None = None) -> None:
        """Report repeated mapping keys anywhere in the tree (before merge keys are flattened)."""
        seen = set() if seen is None else seen
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                self.check_duplicates(item, f"{path}[{index}]", seen)
        elif isinstance(node, MappingNode):
            first: dict[str, Node] = {}
            for key, value in node.value:
                name = str(key.value) if isinstance(key, ScalarNode) else ""
                if name and name in first and key.tag != _TAG + "merge":
                    line = first[name].start_mark.line + 1
                    self.report(key, f"duplicate key {name!r} (first given on line {line})", _join(path, name))
                first.setdefault(name, key)
                self.check_duplicates(value, _join(path, name), seen)

    def fields(
        self, node: Node, path: str, allowed: Collection[str], required: Collection[str] = ()
    ) -> dict[str, _Entry]:
        """A mapping with a fixed set of keys; null counts as an empty mapping."""
        if required and _is_null(node):
            self.expect(node, "a mapping", path)
        entries = self.named(node, path, allowed=allowed)
        for key in required:
            if key not in entries and isinstance(node, MappingNode):
                self.report(node, f"missing required key {key!r}", _join(path, key))
        return entries

    def named(self, node: Node, path: str, allowed: Collection[str] | None = None) -> dict[str, _Entry]:
        """A mapping from string keys to nodes (the last of repeated keys wins; repeats are reported elsewhere)."""
        if _is_null(node):
            return {}
        if not isinstance(node, MappingNode):
            self.expect(node, "a mapping", path)
            return {}
        try:
            self._constructor.flatten_mapping(node)
        except yaml.MarkedYAMLError as exc:
            self.report(node, f"bad merge key: {exc.problem}", path)
            return {}
        entries: dict[str, _Entry] = {}
        for key, value in node.value:
            if not (isinstance(key, ScalarNode) and key.tag == _TAG + "str"):
                self.report(key, f"expected a string key, got {_scalar_kind(key)} (quote it)", path)
                continue
            if allowed is not None and key.value not in allowed:
                hint = _suggest(key.value, allowed) or f"; expected one of: {', '.join(sorted(allowed))}"
                self.report(key, f"unknown key {key.value!r}{hint}", _join(path, key.value))
                continue
            entries[key.value] = _Entry(key, value, _join(path, key.value))
        return entries

    def items(self, node: Node, path: str) -> list[tuple[Node, str]]:
        """A list's items with their paths; null counts as an empty list."""
        if _is_null(node):
            return []
        if not isinstance(node, SequenceNode):
            self.expect(node, "a list", path)
            return []
        return [(item, f"{path}[{index}]") for index, item in enumerate(node.value)]

    def scalar(self, node: Node, path: str, kinds: Collection[str], expected: str) -> Any:
        if not (isinstance(node, ScalarNode) and node.tag.removeprefix(_TAG) in kinds):
            self.expect(node, expected, path)
            return None
        return self._constructor.construct_object(node)

    def string(self, node: Node, path: str) -> str | None:
        value = self.scalar(node, path, {"str"}, "a string")
        if value == "":
            self.report(node, "expected a non-empty string", path)
            return None
        return value  # type: ignore[no-any-return]

    def name(self, node: Node, path: str, what: str) -> str | None:
        value = self.string(node, path)
        if value is not None and not _NAME.match(value):
            self.report(node, f"bad {what} name {value!r}: use letters, digits, '.', '_' or '-'", path)
        return value

    def integer(self, node: Node, path: str, low: int = 0, high: int | None = None) -> int | None:
        value = self.scalar(node, path, {"int"}, "an integer")
        return value if value is None else self._within(node, path, value, low, high)

    def number(self, node: Node, path: str, low: float = 0, high: float | None = None) -> float | None:
        value = self.scalar(node, path, {"int", "float"}, "a number")
        return value if value is None else self._within(node, path, float(value), low, high)

    def _within(self, node: Node, path: str, value: _T, low: Any, high: Any) -> _T | None:
        if not value >= low or (high is not None and not value <= high):  # type: ignore[operator]  # NaN too
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            self.report(node, f"expected a value {bound}, got {value}", path)
            return None
        return value

    def boolean(self, node: Node, path: str) -> bool | None:
        return self.scalar(node, path, {"bool"}, "true or false")  # type: ignore[no-any-return]

    def choice(self, node: Node, path: str, choices: Collection[str]) -> str | None:
        value = self.scalar(node, path, {"str"}, f"one of {', '.join(choices)}")
        if value is not None and value not in choices:
            hint = _suggest(value, choices)
            self.report(node, f"expected one of {', '.join(choices)}, got {value!r}{hint}", path)
            return None
        return value  # type: ignore[no-any-return]

    def strings(self, node: Node, path: str) -> tuple[str, ...]:
        """A list of distinct non-empty strings."""
        values: list[str] = []
        for item, item_path in self.items(node, path):
            value = self.string(item, item_path)
            if value is not None and value in values:
                self.report(item, f"{value!r} is listed twice", item_path)
            elif value is not None:
                values.append(value)
        return tuple(values)

    def string_map(self, node: Node, path: str) -> dict[str, str]:
        pairs = {key: self.string(entry.value, entry.path) for key, entry in self.named(node, path).items()}
        return {key: value for key, value in pairs.items() if value is not None}

    def plain(self, node: Node, path: str) -> object:
        """Any YAML value as plain Python (for whitelisted ``extra`` keys)."""
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self.report(node, f"cannot read value: {exc.problem}", path)
            return None

    def get(self, entries: dict[str, _Entry], key: str, read: Callable[..., _T | None], default: _T, *args: Any) -> _T:
        """``read`` the value under ``key``; absent, null or invalid values give ``default``."""
        entry = entries.get(key)
        if entry is None or _is_null(entry.value):
            return default
        value = read(entry.value, entry.path, *args)
        return default if value is None else value


# ---------------------------------------------------------------------------------------------------- sections


class _Fleet(NamedTuple):
    hosts: dict[str, Host]
    ports: dict[int, str]  # port -> who uses it (local hosts, server, haproxy), for collision reports


def _listen(reader: _Reader, node: Node, path: str) -> tuple[str, int] | None:
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


def _url(reader: _Reader, node: Node, path: str) -> str | None:
    value = reader.string(node, path)
    if value is not None and not (urlsplit(value).scheme in ("http", "https") and urlsplit(value).netloc):
        reader.report(node, f"expected an http:// or https:// URL, got {value!r}", path)
        return None
    return value


def _resolve_path(base_dir: str, value: str) -> str:
    """Paths in the file are relative to its directory; ``git:REF`` and URLs are kept as they are."""
    if value.startswith("git:") or "://" in value:
        return value
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))


def _server(reader: _Reader, node: Node, base_dir: str) -> ServerSettings:
    keys = ("listen", "data_dir", "public_url", "heartbeat_timeout", "admins")
    entries = reader.fields(node, "server", keys)
    host, port = reader.get(entries, "listen", partial(_listen, reader), ("127.0.0.1", 8080))
    return ServerSettings(
        listen_host=host,
        listen_port=port,
        data_dir=_resolve_path(base_dir, reader.get(entries, "data_dir", reader.string, "var")),
        public_url=reader.get(entries, "public_url", partial(_url, reader), None),
        heartbeat_timeout=reader.get(entries, "heartbeat_timeout", reader.number, 60.0, 1),
        admins=reader.get(entries, "admins", reader.strings, ()),
    )


def _deployment_configs(reader: _Reader, node: Node) -> dict[str, DeploymentConfig]:
    configs: dict[str, DeploymentConfig] = {}
    for name, entry in reader.named(node, "deployment_configs").items():
        keys = ("compute_platform", "minimum_healthy_hosts", "traffic_routing")
        fields = reader.fields(entry.value, entry.path, keys, required=("compute_platform",))
        platform = Platform(reader.get(fields, "compute_platform", reader.choice, "server", tuple(Platform)))
        mhh = routing = None
        if (mhh_entry := fields.get("minimum_healthy_hosts")) and not _is_null(mhh_entry.value):
            sub = reader.fields(mhh_entry.value, mhh_entry.path, ("type", "value"), required=("type", "value"))
            kinds = ("HOST_COUNT", "FLEET_PERCENT")
            mhh = MinimumHealthyHosts(
                MinimumHealthyHostsType(reader.get(sub, "type", reader.choice, "HOST_COUNT", kinds)),
                reader.get(sub, "value", reader.integer, 0),
            )
        if (routing_entry := fields.get("traffic_routing")) and not _is_null(routing_entry.value):
            keys = ("type", "percentage", "interval_minutes")
            sub = reader.fields(routing_entry.value, routing_entry.path, keys, required=("type",))
            routing = TrafficRouting(
                TrafficRoutingType(reader.get(sub, "type", reader.choice, "AllAtOnce", tuple(TrafficRoutingType))),
                reader.get(sub, "percentage", reader.integer, 0),
                reader.get(sub, "interval_minutes", reader.integer, 0),
            )
        config = DeploymentConfig(name, platform, mhh, routing)
        for message in validate_custom_config(config):
            reader.report(entry.key, message, entry.path)
        configs[name] = config
    return configs


def _hosts(reader: _Reader, node: Node, server: ServerSettings) -> _Fleet:
    fleet = _Fleet({}, {server.listen_port: "the server's listen address"} if server.listen_port else {})
    for item, path in reader.items(node, "hosts"):
        fields = reader.fields(item, path, ("name", "local", "port", "tags"), required=("name",))
        name = reader.get(fields, "name", reader.name, None, "host")
        if name is None:
            continue
        host = Host(
            name=name,
            tags=reader.get(fields, "tags", reader.string_map, {}),
            local=reader.get(fields, "local", reader.boolean, False),
            port=reader.get(fields, "port", reader.integer, None, 1, 65535),
        )
        if name in fleet.hosts:
            reader.report(fields["name"].value, f"host {name!r} is declared twice", fields["name"].path)
            continue
        fleet.hosts[name] = host
        if host.local and host.port is not None:
            _claim_port(reader, fleet, host.port, f"local host {name!r}", fields["port"])
    return fleet


def _claim_port(reader: _Reader, fleet: _Fleet, port: int, user: str, entry: _Entry) -> None:
    if port in fleet.ports:
        reader.report(entry.value, f"port {port} of {user} is already used by {fleet.ports[port]}", entry.path)
    else:
        fleet.ports[port] = user


# ---------------------------------------------------------------------------------------------------- applications


class _Context(NamedTuple):
    fleet: _Fleet
    configs: dict[str, DeploymentConfig]
    base_dir: str
    group_names: dict[str, str]  # group name -> "app/env" that uses it


_GROUP_KEYS = (
    *("name", "deployment_type", "deployment_config", "traffic_config", "targets", "load_balancer", "alarms"),
    *("auto_rollback", "blue_green", "file_exists_behavior", "ignore_application_stop_failures"),
    *("deployers", "approvers", "required_approvals", *GROUP_EXTRA_KEYS),
)
_APPLICATION_KEYS = (
    *("platform", "revision", "slack_channel", "github", "environments", "deployment_groups"),
    *APPLICATION_EXTRA_KEYS,
)


def _application(reader: _Reader, name: str, entry: _Entry, ctx: _Context) -> Application:
    required = ("environments", "deployment_groups")
    fields = reader.fields(entry.value, entry.path, _APPLICATION_KEYS, required=required)
    platform = Platform(reader.get(fields, "platform", reader.choice, "server", tuple(Platform)))
    declared: dict[str, tuple[Node, str]] = {}
    if (envs := fields.get("environments")) is not None:
        for item, path in reader.items(envs.value, envs.path):
            environment = reader.name(item, path, "environment")
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
            hint = _suggest(environment, declared, known=True)
            message = f"deployment group for undeclared environment {environment!r}{hint}"
            reader.report(group_entry.key, message, group_entry.path)
            continue
        groups[environment] = _group(reader, name, environment, platform, group_entry, ctx)
    for environment, (item, path) in declared.items():
        if environment not in group_entries:
            message = f"environment {environment!r} has no deployment group (add deployment_groups.{environment})"
            reader.report(item, message, path)
    repository, auto_deploy = _github(reader, fields, declared)
    revision = reader.get(fields, "revision", reader.string, None)
    return Application(
        name=name,
        platform=platform,
        environments=tuple(declared),
        groups=groups,
        revision=None if revision is None else _resolve_path(ctx.base_dir, revision),
        slack_channel=reader.get(fields, "slack_channel", reader.string, None),
        github_repository=repository,
        auto_deploy=auto_deploy,
        extra=_extra(reader, fields, APPLICATION_EXTRA_KEYS),
    )


def _github(
    reader: _Reader, fields: dict[str, _Entry], environments: Collection[str]
) -> tuple[str | None, dict[str, str] | None]:
    if (entry := fields.get("github")) is None:
        return None, None
    github = reader.fields(entry.value, entry.path, ("repository", "auto_deploy"), required=("repository",))
    repository = reader.get(github, "repository", reader.string, None)
    if repository is not None and not _REPOSITORY.match(repository):
        where = github["repository"]
        reader.report(where.value, f"expected OWNER/NAME, got {repository!r}", where.path)
    if (auto := github.get("auto_deploy")) is None or _is_null(auto.value):
        return repository, None
    rule = reader.fields(auto.value, auto.path, ("branch", "to"), required=("branch", "to"))
    target = rule.get("to")
    if target is not None and (env := reader.string(target.value, target.path)) and env not in environments:
        reader.report(
            target.value, f"unknown environment {env!r}{_suggest(env, environments, known=True)}", target.path
        )
    values = {key: reader.get(rule, key, reader.string, "") for key in ("branch", "to")}
    return repository, values


def _extra(reader: _Reader, fields: dict[str, _Entry], keys: Iterable[str]) -> dict[str, object]:
    return {key: reader.plain(fields[key].value, fields[key].path) for key in keys if key in fields}


# ---------------------------------------------------------------------------------------------------- groups


def _group(
    reader: _Reader, app: str, environment: str, platform: Platform, entry: _Entry, ctx: _Context
) -> DeploymentGroup:
    required = ("targets",) if platform is Platform.SERVER else ()
    fields = reader.fields(entry.value, entry.path, _GROUP_KEYS, required=required)
    name = reader.get(fields, "name", reader.name, f"{app}-{environment}", "deployment group")
    if name in ctx.group_names:
        where = fields.get("name") or _Entry(entry.key, entry.key, entry.path)
        reader.report(
            where.value, f"deployment group name {name!r} is also used by {ctx.group_names[name]}", where.path
        )
    ctx.group_names.setdefault(name, f"{app}/{environment}")
    server = platform is Platform.SERVER
    kind = DEPLOYMENT_TYPES[
        reader.get(fields, "deployment_type", reader.choice, "in-place" if server else "blue-green", DEPLOYMENT_TYPES)
    ]
    blue_green = kind is DeploymentType.BLUE_GREEN
    if not server and not blue_green:
        where = fields["deployment_type"]
        reader.report(where.value, f"{platform} deployments are always blue-green", where.path)
    config = reader.get(fields, "deployment_config", reader.string, default_config_name(platform))
    _check_config(reader, fields.get("deployment_config"), config, platform, "deployment", ctx)
    traffic = reader.get(fields, "traffic_config", reader.string, None)
    if (where := fields.get("traffic_config")) is not None and traffic is not None:
        if server and not blue_green:
            reader.report(where.value, "traffic_config applies only to blue-green deployments", where.path)
        elif server:
            _check_config(reader, where, traffic, platform, "traffic", ctx)
        elif traffic != config:
            message = f"a {platform} group shifts traffic by its deployment_config; leave traffic_config out"
            reader.report(where.value, message, where.path)
    if not server:
        traffic = config
    hosts, tags = _targets(reader, fields.get("targets"), platform, ctx)
    load_balancer = _load_balancer(reader, fields.get("load_balancer"), platform, f"{app}/{environment}", ctx)
    if server and blue_green and load_balancer is None and "deployment_type" in fields:
        where = fields["deployment_type"]
        reader.report(where.value, "blue-green deployments need a load_balancer to move traffic", where.path)
    approvers = reader.get(fields, "approvers", reader.strings, ())
    required_approvals = reader.get(fields, "required_approvals", reader.integer, 0)
    if approvers and required_approvals > len(approvers):
        where = fields["required_approvals"]
        reader.report(
            where.value,
            f"{required_approvals} approvals required but only {len(approvers)} approvers",
            where.path,
        )
    return DeploymentGroup(
        name=name,
        application=app,
        environment=environment,
        platform=platform,
        deployment_type=kind,
        deployment_config=config,
        traffic_config=traffic,
        hosts=hosts,
        target_tags=tags,
        load_balancer=load_balancer,
        alarms=_alarms(reader, fields.get("alarms")),
        auto_rollback=_auto_rollback(reader, fields.get("auto_rollback")),
        blue_green=_blue_green_options(reader, fields.get("blue_green"), blue_green),
        file_exists_behavior=reader.get(fields, "file_exists_behavior", reader.choice, "DISALLOW", _FILE_EXISTS),
        ignore_application_stop_failures=reader.get(fields, "ignore_application_stop_failures", reader.boolean, False),
        deployers=reader.get(fields, "deployers", reader.strings, ()),
        approvers=approvers,
        required_approvals=required_approvals,
        extra=_extra(reader, fields, GROUP_EXTRA_KEYS),
    )


_FILE_EXISTS = ("DISALLOW", "OVERWRITE", "RETAIN")


def _check_config(
    reader: _Reader, entry: _Entry | None, name: str, platform: Platform, usage: str, ctx: _Context
) -> None:
    """Report a configuration name that is unknown or cannot serve as this group's deployment/traffic config."""
    if entry is None:
        return
    try:
        if usage == "deployment":
            config_for_group(name, platform, ctx.configs)
        else:
            traffic_config_for_hosts(name, ctx.configs)
    except UnknownDeploymentConfig:
        close = close_config_names(name, ctx.configs)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        reader.report(entry.value, f"unknown deployment configuration {name!r}{hint}", entry.path)
    except IncompatibleDeploymentConfig:
        if usage == "traffic":
            needs = "a configuration with traffic_routing"
        elif platform is Platform.SERVER:
            needs = "a configuration with minimum_healthy_hosts"
        else:
            needs = f"a {platform} traffic configuration, like {default_config_name(platform)}"
        reader.report(entry.value, f"{name!r} cannot be used here: expected {needs}", entry.path)


def _targets(
    reader: _Reader, entry: _Entry | None, platform: Platform, ctx: _Context
) -> tuple[tuple[str, ...], dict[str, str]]:
    if entry is None or (_is_null(entry.value) and platform is not Platform.SERVER):
        return (), {}
    if platform is Platform.SERVER and _is_null(entry.value):
        reader.expect(entry.value, "a mapping with 'hosts' or 'tags'", entry.path)
        return (), {}
    if platform is not Platform.SERVER:
        reader.report(entry.key, f"a {platform} group has no host targets", entry.path)
        return (), {}
    fields = reader.fields(entry.value, entry.path, ("hosts", "tags"))
    if len(fields) != 1:
        if isinstance(entry.value, MappingNode) and len(entry.value.value) == len(fields):
            reader.report(entry.value, "expected exactly one of 'hosts' (names) or 'tags' (a selector)", entry.path)
        return (), {}
    hosts: list[str] = []
    if (names := fields.get("hosts")) is not None:
        listed = reader.items(names.value, names.path)
        for item, path in listed:
            host = reader.string(item, path)
            if host is not None and host not in ctx.fleet.hosts:
                reader.report(item, f"unknown host {host!r}{_suggest(host, ctx.fleet.hosts, known=True)}", path)
            elif host in hosts:
                reader.report(item, f"host {host!r} is listed twice", path)
            elif host is not None:
                hosts.append(host)
        if not listed and isinstance(names.value, SequenceNode):
            reader.report(names.value, "expected at least one host", names.path)
        return tuple(hosts), {}
    selector = fields["tags"]
    tags = reader.string_map(selector.value, selector.path)
    if not any(host.matches(tags) for host in ctx.fleet.hosts.values()):
        shown = ", ".join(f"{key}={value}" for key, value in tags.items()) or "nothing"
        reader.report(selector.value, f"no declared host has the tags {shown}", selector.path)
    return (), tags


def _load_balancer(
    reader: _Reader, entry: _Entry | None, platform: Platform, group: str, ctx: _Context
) -> LoadBalancer | None:
    if entry is None or _is_null(entry.value):
        return None
    if isinstance(entry.value, ScalarNode) and entry.value.value == "none":
        return None
    keys = ("type", "port", "health_check", "deregistration_delay", *LOAD_BALANCER_EXTRA_KEYS)
    fields = reader.fields(entry.value, entry.path, keys, required=("type",))
    kind = reader.get(fields, "type", reader.choice, "none", ("haproxy", "elbv2", "none"))
    if kind == "none":
        return None
    if platform is Platform.LAMBDA or (platform is Platform.ECS and kind == "haproxy"):
        reader.report(
            fields["type"].value, f"a {platform} group cannot use a {kind} load balancer", fields["type"].path
        )
    port = reader.get(fields, "port", reader.integer, None, 1, 65535)
    if kind == "haproxy" and port is None and "port" not in fields:
        reader.report(entry.value, "missing required key 'port' (the HAProxy frontend port)", f"{entry.path}.port")
    elif kind == "haproxy" and port is not None:
        _claim_port(reader, ctx.fleet, port, f"the load balancer of {group}", fields["port"])
    health_check = reader.get(fields, "health_check", reader.string, "/health")
    if not health_check.startswith("/"):
        where = fields["health_check"]
        reader.report(where.value, f"expected a path starting with '/', got {health_check!r}", where.path)
    return LoadBalancer(
        type=kind,
        port=port,
        health_check=health_check,
        deregistration_delay=reader.get(fields, "deregistration_delay", reader.number, 5.0, 0),
        extra=_extra(reader, fields, LOAD_BALANCER_EXTRA_KEYS),
    )


def _alarms(reader: _Reader, entry: _Entry | None) -> AlarmConfiguration:
    if entry is None:
        return AlarmConfiguration()
    fields = reader.fields(entry.value, entry.path, ("enabled", "ignore_poll_alarm_failure", "alarms"))
    alarms: list[dict[str, object]] = []
    listed = reader.items(fields["alarms"].value, fields["alarms"].path) if "alarms" in fields else []
    for item, path in listed:
        if isinstance(item, MappingNode):
            alarm = reader.fields(item, path, ("name",), required=("name",))
            name = reader.get(alarm, "name", reader.string, None)
        else:
            name = reader.string(item, path)
        if name is not None and any(a["name"] == name for a in alarms):
            reader.report(item, f"alarm {name!r} is listed twice", path)
        elif name is not None:
            alarms.append({"name": name})
    if len(alarms) > 10:
        reader.report(fields["alarms"].value, f"at most 10 alarms, got {len(alarms)}", fields["alarms"].path)
    return AlarmConfiguration(
        enabled=reader.get(fields, "enabled", reader.boolean, False),
        ignore_poll_alarm_failure=reader.get(fields, "ignore_poll_alarm_failure", reader.boolean, False),
        alarms=tuple(alarms),
    )


def _auto_rollback(reader: _Reader, entry: _Entry | None) -> AutoRollback:
    if entry is None:
        return AutoRollback()
    fields = reader.fields(entry.value, entry.path, ("enabled", "events"))
    enabled = reader.get(fields, "enabled", reader.boolean, False)
    if "events" not in fields or _is_null(fields["events"].value):
        return AutoRollback(enabled, frozenset({AutoRollbackEvent.DEPLOYMENT_FAILURE} if enabled else ()))
    names = tuple(AutoRollbackEvent)
    events = [
        reader.choice(item, path, names) for item, path in reader.items(fields["events"].value, fields["events"].path)
    ]
    return AutoRollback(enabled, frozenset(AutoRollbackEvent(event) for event in events if event is not None))


def _blue_green_options(reader: _Reader, entry: _Entry | None, blue_green: bool) -> BlueGreenOptions:
    if entry is None or _is_null(entry.value):
        return BlueGreenOptions()
    if not blue_green:
        reader.report(entry.key, "blue_green options apply only to blue-green deployments", entry.path)
    keys = ("ready_action", "ready_wait_minutes", "terminate_action", "termination_wait_minutes")
    fields = reader.fields(entry.value, entry.path, keys)
    minutes = (reader.integer, 0, 0, _MAX_WAIT_MINUTES)
    return BlueGreenOptions(
        ready_action=reader.get(fields, "ready_action", reader.choice, "CONTINUE_DEPLOYMENT", _READY_ACTIONS),
        ready_wait_minutes=reader.get(fields, "ready_wait_minutes", *minutes),
        terminate_action=reader.get(fields, "terminate_action", reader.choice, "KEEP_ALIVE", _TERMINATE_ACTIONS),
        termination_wait_minutes=reader.get(fields, "termination_wait_minutes", *minutes),
    )


_READY_ACTIONS = ("CONTINUE_DEPLOYMENT", "STOP_DEPLOYMENT")
_TERMINATE_ACTIONS = ("TERMINATE", "KEEP_ALIVE")


# ---------------------------------------------------------------------------------------------------- entry points


def parse_config(text: str, *, filename: str = "<config>", base_dir: str = ".") -> EngineConfig:
    """Parse and check a whole config; raises ConfigError with every problem found, sorted by position."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader) or yaml.compose("{}", Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem, context = getattr(exc, "problem", None), getattr(exc, "context", None)
        detail = f"{context}, {problem}" if (problem or "").startswith("but ") else problem or context or str(exc)
        raise ConfigError([Problem(filename, line, column, f"invalid YAML: {detail}")]) from exc
    reader = _Reader(filename)
    reader.check_duplicates(root)
    # Top-level "x-..." keys are ignored, so they can hold YAML anchors shared by groups (as in docker compose).
    pairs = root.value if isinstance(root, MappingNode) else []
    keys = [k.value for k, _ in pairs if isinstance(k, ScalarNode) and str(k.value).startswith("x-")]
    top = reader.fields(root, "", ("server", "deployment_configs", "hosts", "applications", *keys))
    null = ScalarNode(_TAG + "null", "")
    server = _server(reader, top["server"].value if "server" in top else null, base_dir)
    configs = _deployment_configs(reader, top["deployment_configs"].value if "deployment_configs" in top else null)
    fleet = _hosts(reader, top["hosts"].value if "hosts" in top else null, server)
    ctx = _Context(fleet, configs, base_dir, {})
    applications: dict[str, Application] = {}
    apps_node = top["applications"].value if "applications" in top else null
    for name, entry in reader.named(apps_node, "applications").items():
        if not _NAME.match(name):
            reader.report(entry.key, f"bad application name {name!r}: use letters, digits, '.', '_' or '-'", entry.path)
        if twin := next((a for a in applications if a.casefold() == name.casefold()), None):
            reader.report(entry.key, f"application {name!r} differs from {twin!r} only in case", entry.path)
            continue
        applications[name] = _application(reader, name, entry, ctx)
    if reader.problems:
        raise ConfigError(sorted(reader.problems, key=lambda p: (p.line, p.column)))
    return EngineConfig(filename, server, applications, fleet.hosts, configs, base_dir)


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
