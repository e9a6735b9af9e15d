"""Config loader, part two (pure): the host fleet and deployment groups, with what hangs off a group.

A group names its targets (hosts or a tag selector), its configurations, load balancer, alarms, automatic rollback
and blue/green options, and who may act on it; each is checked against what the rest of the file declares (hosts,
custom configurations, ports in use, users and roles), so a group that could not deploy is refused when the file is
read. parse.py calls in here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import NamedTuple

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.core.config.model import (
    ROLE_PREFIX,
    AlarmConfiguration,
    BlueGreenOptions,
    DeploymentGroup,
    Host,
    LoadBalancer,
    User,
    expand,
)
from engine.core.config.triggers import OFFLINE_HOSTS, read_triggers
from engine.core.configs import (
    DeploymentConfig,
    IncompatibleDeploymentConfig,
    close_config_names,
    config_for_group,
    default_config_name,
    traffic_config_for_hosts,
)
from engine.core.errors import UnknownDeploymentConfig
from engine.core.model import AutoRollback, AutoRollbackEvent, DeploymentType, Platform
from engine.core.policy import BOOTSTRAP_ADMIN
from engine.core.yamlnode import Entry, NodeReader, did_you_mean, is_null

# Keys of later features that are kept verbatim in the ``extra`` of the object they belong to. Anything else
# unknown is an error, so a typo never silently disables a setting.
GROUP_EXTRA_KEYS = (
    "function_name",  # Lambda: when set, a revision whose AppSpec names another function is refused
    "alias",  # Lambda: likewise for the alias
    "cluster",  # ECS
    "service",  # ECS
    "aws_account",  # the `aws` account the group's AWS calls use (default "default")
    "hook_timeout_minutes",  # Lambda/ECS: how long a hook function may take to report its status (default 60)
)
# `extra["ec2_tags"]` is set from `targets: {ec2_tags: ...}` (resolved with DescribeInstances at each deployment).
LOAD_BALANCER_EXTRA_KEYS = (
    "listener_arn",
    "test_listener_arn",
    "target_groups",
    "backend",
)

# The retired Slack-only permission lists, and the list each became: they are refused with what to write instead.
SLACK_GROUP_KEYS = {"slack_deployers": "deployers", "slack_approvers": "approvers", "slack_rollbackers": "rollbackers"}
DEPLOYMENT_TYPES = {"in-place": DeploymentType.IN_PLACE, "blue-green": DeploymentType.BLUE_GREEN}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_MAX_WAIT_MINUTES = 2880
_FILE_EXISTS = ("DISALLOW", "OVERWRITE", "RETAIN")
_READY_ACTIONS = ("CONTINUE_DEPLOYMENT", "STOP_DEPLOYMENT")
_TERMINATE_ACTIONS = ("TERMINATE", "KEEP_ALIVE")
# greenFleetProvisioningOption, in the file's spelling (CodeDeploy's upper-case names are accepted too)
_GREEN_FLEET_PROVISIONING = ("discover_existing", "copy_auto_scaling_group")
COPY_AUTO_SCALING_GROUP = "copy_auto_scaling_group"
_ASG_NAME = re.compile(r"^[^:\x00-\x1f]{1,255}$")  # EC2 Auto Scaling's ResourceName (no ':' in a plain name)
_GROUP_KEYS = (
    *("name", "deployment_type", "deployment_config", "traffic_config", "targets", "load_balancer", "alarms"),
    *("auto_rollback", "blue_green", "file_exists_behavior", "ignore_application_stop_failures"),
    *("deployers", "approvers", "rollbackers", "required_approvals", "watch_minutes", *GROUP_EXTRA_KEYS),
    *("lock_policy", "approval_ttl_minutes", "min_soak_minutes", "triggers", "offline_hosts"),
    *SLACK_GROUP_KEYS,
)
_LOCK_POLICIES = ("refuse", "queue")
_WEEK = 7 * 24 * 60  # minutes: the longest approval lifetime or soak time
_ALARM_TYPES = ("cloudwatch", "haproxy", "http")
_ALARM_KEYS = ("name", "type", "max_5xx_percent", "max_response_ms", "window_seconds", "min_requests", "url")
_ALARM_KEYS_ALL = (*_ALARM_KEYS, "expect_status")


class Fleet(NamedTuple):
    hosts: dict[str, Host]
    ports: dict[int, str]  # port -> who uses it (local hosts, server, haproxy), for collision reports


class People(NamedTuple):
    """What a permission list may name: the declared users (None: no ``users`` section, names are free-form) and
    the declared roles (role name -> its users)."""

    users: Mapping[str, User] | None = None
    roles: Mapping[str, tuple[str, ...]] = {}


class GroupContext(NamedTuple):
    """What a group is checked against: the rest of the file."""

    fleet: Fleet
    configs: dict[str, DeploymentConfig]
    base_dir: str
    group_names: dict[str, str]  # group name -> "app/env" that uses it
    aws_accounts: Mapping[str, object] = {}  # the `aws` section's account names
    people: People = People()


def read_name(reader: NodeReader, node: Node, path: str, what: str) -> str | None:
    """A name that is safe in ids, file names and chat commands."""
    value = reader.string(node, path)
    if value is not None and not NAME.match(value):
        reader.report(node, f"bad {what} name {value!r}: use letters, digits, '.', '_' or '-'", path)
    return value


def read_people(
    reader: NodeReader, node: Node, path: str, people: People, *, allow_roles: bool = True
) -> tuple[str, ...]:
    """A permission list (``server.admins``, a group's ``deployers``, ...) as written: user names and ``@role``s.

    A role must be declared; once a ``users`` section exists, so must every user. The bootstrap admin is never
    listed: it may do everything already. A role's own member list takes users only (``allow_roles=False``).
    """
    names: list[str] = []
    for item, item_path in reader.items(node, path):
        name = reader.string(item, item_path)
        if name is None:
            continue
        if name in names:
            reader.report(item, f"{name!r} is listed twice", item_path)
        elif (problem := person_problem(name, people, allow_roles=allow_roles)) is not None:
            reader.report(item, problem, item_path)
        else:
            names.append(name)
    return tuple(names)


def person_problem(name: str, people: People, *, allow_roles: bool) -> str | None:
    """Why ``name`` may not stand in a permission list, or None."""
    if name == BOOTSTRAP_ADMIN:
        return f"{name!r} is the bootstrap admin: it may do everything and is never listed"
    if name.startswith(ROLE_PREFIX):
        if not allow_roles:
            return f"a role lists users, not other roles: {name!r}"
        if name.removeprefix(ROLE_PREFIX) in people.roles:
            return None
        known = [ROLE_PREFIX + role for role in people.roles]
        return f"unknown role {name!r}{did_you_mean(name, known, list_known=True) or ' (declare it under roles)'}"
    if people.users is None or name in people.users:
        return None
    return f"unknown user {name!r}{did_you_mean(name, people.users, list_known=True)}"


def resolve_path(base_dir: str, value: str) -> str:
    """Paths in the file are relative to its directory; ``git:REF`` and URLs are kept as they are."""
    if value.startswith("git:") or "://" in value:
        return value
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))


def extra_values(reader: NodeReader, fields: dict[str, Entry], keys: Iterable[str]) -> dict[str, object]:
    """The whitelisted keys of later features, as plain Python, for an ``extra`` mapping."""
    return {key: reader.plain(fields[key].value, fields[key].path) for key in keys if key in fields}


def parse_hosts(reader: NodeReader, node: Node, server_port: int) -> Fleet:
    """The ``hosts`` list; the server's own port is taken, so no local host may listen on it."""
    fleet = Fleet({}, {server_port: "the server's listen address"} if server_port else {})
    for item, path in reader.items(node, "hosts"):
        fields = reader.fields(item, path, ("name", "local", "port", "tags"), required=("name",))
        name = reader.get(fields, "name", partial(read_name, reader), None, "host")
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
            claim_port(reader, fleet, host.port, f"local host {name!r}", fields["port"])
    return fleet


def claim_port(reader: NodeReader, fleet: Fleet, port: int, user: str, entry: Entry) -> None:
    if port in fleet.ports:
        reader.report(entry.value, f"port {port} of {user} is already used by {fleet.ports[port]}", entry.path)
    else:
        fleet.ports[port] = user


def parse_group(
    reader: NodeReader, app: str, environment: str, platform: Platform, entry: Entry, ctx: GroupContext
) -> DeploymentGroup:
    """The deployment group of ``app`` in ``environment``, checked against the rest of the file (``ctx``)."""
    # A group that copies its Auto Scaling group deploys to the copy's instances: it names no targets.
    copies = platform is Platform.SERVER and _copies_auto_scaling_group(entry.value)
    required = ("targets",) if platform is Platform.SERVER and not copies else ()
    fields = reader.fields(entry.value, entry.path, _GROUP_KEYS, required=required)
    if copies and (where := fields.get("targets")) is not None:
        message = (
            "a group with green_fleet_provisioning: copy_auto_scaling_group deploys to the instances of its Auto "
            "Scaling group's copy; leave targets out"
        )
        reader.report(where.key, message, where.path)
    name = reader.get(fields, "name", partial(read_name, reader), f"{app}-{environment}", "deployment group")
    if name in ctx.group_names:
        where = fields.get("name") or Entry(entry.key, entry.key, entry.path)
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
    if (traffic_entry := fields.get("traffic_config")) is not None and traffic is not None:
        if server and not blue_green:
            reader.report(
                traffic_entry.value, "traffic_config applies only to blue-green deployments", traffic_entry.path
            )
        elif server:
            _check_config(reader, traffic_entry, traffic, platform, "traffic", ctx)
        elif traffic != config:
            message = f"a {platform} group shifts traffic by its deployment_config; leave traffic_config out"
            reader.report(traffic_entry.value, message, traffic_entry.path)
    if not server:
        traffic = config
    hosts, tags, ec2_tags = _targets(reader, fields.get("targets"), platform, ctx)
    load_balancer = _load_balancer(reader, fields.get("load_balancer"), platform, f"{app}/{environment}", ctx)
    if server and blue_green and load_balancer is None and "deployment_type" in fields:
        where = fields["deployment_type"]
        reader.report(where.value, "blue-green deployments need a load_balancer to move traffic", where.path)
    _retired_slack_keys(reader, fields)
    read_list = partial(read_people, reader)
    approvers = reader.get(fields, "approvers", read_list, (), ctx.people)
    required_approvals = reader.get(fields, "required_approvals", reader.integer, 0)
    approver_count = len(expand(approvers, ctx.people.roles))
    if approvers and required_approvals > approver_count:
        where = fields["required_approvals"]
        reader.report(
            where.value,
            f"{required_approvals} approvals required but only {approver_count} approvers",
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
        alarms=_alarms(reader, fields.get("alarms"), load_balancer),
        auto_rollback=_auto_rollback(reader, fields.get("auto_rollback")),
        blue_green=_blue_green_options(reader, fields.get("blue_green"), blue_green, load_balancer),
        file_exists_behavior=reader.get(fields, "file_exists_behavior", reader.choice, "DISALLOW", _FILE_EXISTS),
        ignore_application_stop_failures=reader.get(fields, "ignore_application_stop_failures", reader.boolean, False),
        deployers=reader.get(fields, "deployers", read_list, (), ctx.people),
        approvers=approvers,
        rollbackers=reader.get(fields, "rollbackers", read_list, (), ctx.people),
        required_approvals=required_approvals,
        watch_minutes=reader.get(fields, "watch_minutes", reader.number, 0.0, 0, _MAX_WAIT_MINUTES),
        lock_policy=reader.get(fields, "lock_policy", reader.choice, "refuse", _LOCK_POLICIES),
        approval_ttl_minutes=reader.get(fields, "approval_ttl_minutes", reader.number, 60.0, 0.01, _WEEK),
        min_soak_minutes=reader.get(fields, "min_soak_minutes", reader.number, 0.0, 0, _WEEK),
        triggers=read_triggers(reader, fields.get("triggers")),
        offline_hosts=reader.get(fields, "offline_hosts", reader.choice, "proceed", OFFLINE_HOSTS),
        extra=_aws_extra(reader, fields, platform, blue_green, load_balancer, entry, ctx)
        | ({"ec2_tags": ec2_tags} if ec2_tags else {}),
    )


def _aws_extra(
    reader: NodeReader,
    fields: dict[str, Entry],
    platform: Platform,
    blue_green: bool,
    load_balancer: LoadBalancer | None,
    entry: Entry,
    ctx: GroupContext,
) -> dict[str, object]:
    """The AWS settings of a group, checked: what ECS and ELBv2 need is present and the account is declared."""
    extra = extra_values(reader, fields, GROUP_EXTRA_KEYS)
    for key in ("cluster", "service"):
        if platform is Platform.ECS and key not in fields:
            reader.report(entry.value, f"missing required key {key!r} (the ECS {key} to deploy to)", entry.path)
        elif platform is not Platform.ECS and key in fields:
            reader.report(fields[key].key, f"{key!r} applies only to ECS groups", fields[key].path)
    if (where := fields.get("aws_account")) is not None:
        account = reader.string(where.value, where.path)
        if account is not None and account != "default" and account not in ctx.aws_accounts:
            hint = did_you_mean(account, ctx.aws_accounts, list_known=True)
            reader.report(where.value, f"unknown aws account {account!r}{hint}", where.path)
    if (where := fields.get("hook_timeout_minutes")) is not None:
        reader.number(where.value, where.path, 0.01, 60)
    if platform is Platform.ECS and (load_balancer is None or load_balancer.type != "elbv2"):
        message = "an ECS group needs a load_balancer of type elbv2 (a listener and two target groups)"
        reader.report(entry.value, message, entry.path)
    if load_balancer is not None and load_balancer.type == "elbv2":
        _check_elbv2(reader, fields["load_balancer"], load_balancer, two_sides=blue_green)
    return extra


def _check_elbv2(reader: NodeReader, where: Entry, lb: LoadBalancer, *, two_sides: bool) -> None:
    """In place: one target group hosts leave and rejoin. Blue/green (server or ECS): two target groups behind the
    production listener, whose weights move."""
    groups = lb.extra.get("target_groups")
    wanted = 2 if two_sides else 1
    if not isinstance(groups, list) or len(groups) != wanted or not all(isinstance(g, str) for g in groups):
        what = "two target group ARNs (blue and green)" if two_sides else "one target group ARN"
        reader.report(where.value, f"an elbv2 load_balancer needs target_groups: {what}", f"{where.path}.target_groups")
    if two_sides and not lb.extra.get("listener_arn"):
        reader.report(where.value, "a blue-green elbv2 load_balancer needs listener_arn (production)", where.path)


def _retired_slack_keys(reader: NodeReader, fields: dict[str, Entry]) -> None:
    """``slack_deployers`` and friends are gone: every door now maps its caller to one user (``users:``), and one
    rule decides (engine.core.policy). Say what to write instead, where the old key is, with one of its own ids."""
    for key, replacement in SLACK_GROUP_KEYS.items():
        if (entry := fields.get(key)) is None:
            continue
        listed = reader.plain(entry.value, entry.path)
        ids = [i for i in listed if isinstance(i, str) and i[:1] in ("U", "W")] if isinstance(listed, list) else []
        message = (
            f"{key!r} is retired: declare each person under users: with their Slack id "
            f"(users: {{alice: {{slack: {ids[0] if ids else 'U0123ABC'}}}}}) and list their names under {replacement} "
            "(a Slack user group becomes a role: roles: {ops: [alice, bob]}, listed as '@ops')"
        )
        reader.report(entry.key, message, entry.path)


def _check_config(
    reader: NodeReader, entry: Entry | None, name: str, platform: Platform, usage: str, ctx: GroupContext
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
    reader: NodeReader, entry: Entry | None, platform: Platform, ctx: GroupContext
) -> tuple[tuple[str, ...], dict[str, str], dict[str, str]]:
    """(named hosts, a selector over declared hosts, a selector over EC2 instance tags): one of them is set."""
    if entry is None or (is_null(entry.value) and platform is not Platform.SERVER):
        return (), {}, {}
    if platform is Platform.SERVER and is_null(entry.value):
        reader.expect(entry.value, "a mapping with 'hosts' or 'tags'", entry.path)
        return (), {}, {}
    if platform is not Platform.SERVER:
        reader.report(entry.key, f"a {platform} group has no host targets", entry.path)
        return (), {}, {}
    fields = reader.fields(entry.value, entry.path, ("hosts", "tags", "ec2_tags"))
    if len(fields) != 1:
        if isinstance(entry.value, MappingNode) and len(entry.value.value) == len(fields):
            message = "expected exactly one of 'hosts' (names), 'tags' (a selector) or 'ec2_tags' (EC2 instance tags)"
            reader.report(entry.value, message, entry.path)
        return (), {}, {}
    if (ec2 := fields.get("ec2_tags")) is not None:
        selector = reader.string_map(ec2.value, ec2.path)
        if not selector:
            reader.report(ec2.value, "expected at least one tag to select EC2 instances by", ec2.path)
        return (), {}, selector
    hosts: list[str] = []
    if (names := fields.get("hosts")) is not None:
        listed = reader.items(names.value, names.path)
        for item, path in listed:
            host = reader.string(item, path)
            if host is not None and host not in ctx.fleet.hosts:
                hint = did_you_mean(host, ctx.fleet.hosts, list_known=True)
                reader.report(item, f"unknown host {host!r}{hint}", path)
            elif host in hosts:
                reader.report(item, f"host {host!r} is listed twice", path)
            elif host is not None:
                hosts.append(host)
        if not listed and isinstance(names.value, SequenceNode):
            reader.report(names.value, "expected at least one host", names.path)
        return tuple(hosts), {}, {}
    tags_entry = fields["tags"]
    tags = reader.string_map(tags_entry.value, tags_entry.path)
    if not tags:
        reader.report(tags_entry.value, "expected at least one tag to select hosts by", tags_entry.path)
    # A selector may match no declared host: instances registered through the CodeDeploy API join by their tags.
    # A deployment to a group that matches nothing is refused, naming the tags.
    return (), tags, {}


def _load_balancer(
    reader: NodeReader, entry: Entry | None, platform: Platform, group: str, ctx: GroupContext
) -> LoadBalancer | None:
    if entry is None or is_null(entry.value):
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
        claim_port(reader, ctx.fleet, port, f"the load balancer of {group}", fields["port"])
    health_check = reader.get(fields, "health_check", reader.string, "/health")
    if not health_check.startswith("/"):
        where = fields["health_check"]
        reader.report(where.value, f"expected a path starting with '/', got {health_check!r}", where.path)
    return LoadBalancer(
        type=kind,
        port=port,
        health_check=health_check,
        deregistration_delay=reader.get(fields, "deregistration_delay", reader.number, 5.0, 0),
        extra=extra_values(reader, fields, LOAD_BALANCER_EXTRA_KEYS),
    )


def _alarms(reader: NodeReader, entry: Entry | None, load_balancer: LoadBalancer | None) -> AlarmConfiguration:
    if entry is None:
        return AlarmConfiguration()
    keys = ("enabled", "ignore_poll_alarm_failure", "alarms", "poll_seconds")
    fields = reader.fields(entry.value, entry.path, keys)
    alarms: list[dict[str, object]] = []
    listed = reader.items(fields["alarms"].value, fields["alarms"].path) if "alarms" in fields else []
    for item, path in listed:
        alarm = _alarm(reader, item, path, load_balancer) if isinstance(item, MappingNode) else None
        name = alarm["name"] if alarm else reader.string(item, path)
        if name is not None and any(a["name"] == name for a in alarms):
            reader.report(item, f"alarm {name!r} is listed twice", path)
        elif name is not None:
            alarms.append(alarm or {"name": name, "type": "cloudwatch"})
    if len(alarms) > 10:
        reader.report(fields["alarms"].value, f"at most 10 alarms, got {len(alarms)}", fields["alarms"].path)
    return AlarmConfiguration(
        enabled=reader.get(fields, "enabled", reader.boolean, False),
        ignore_poll_alarm_failure=reader.get(fields, "ignore_poll_alarm_failure", reader.boolean, False),
        alarms=tuple(alarms),
        poll_seconds=reader.get(fields, "poll_seconds", reader.number, 5.0, 0.1, 3600),
    )


def _alarm(reader: NodeReader, item: MappingNode, path: str, load_balancer: LoadBalancer | None) -> dict[str, object]:
    """One alarm: a CloudWatch alarm by name, or deploybot's own HAProxy-statistics and HTTP-probe alarms."""
    fields = reader.fields(item, path, _ALARM_KEYS_ALL, required=("name",))
    kind = reader.get(fields, "type", reader.choice, "cloudwatch", _ALARM_TYPES)
    alarm: dict[str, object] = {"name": reader.get(fields, "name", reader.string, ""), "type": kind}
    if kind == "haproxy":
        if load_balancer is None or load_balancer.type != "haproxy":
            reader.report(fields["type"].value, "a haproxy alarm needs the group's load_balancer to be haproxy", path)
        alarm["max_5xx_percent"] = reader.get(fields, "max_5xx_percent", reader.number, 5.0, 0, 100)
        alarm["max_response_ms"] = reader.get(fields, "max_response_ms", reader.number, None, 0)
        alarm["window_seconds"] = reader.get(fields, "window_seconds", reader.number, 60.0, 1)
        alarm["min_requests"] = reader.get(fields, "min_requests", reader.integer, 20, 0)
    elif kind == "http":
        url = reader.get(fields, "url", reader.string, None)
        if url is None:
            reader.report(item, "missing required key 'url' (the URL an http alarm probes)", f"{path}.url")
        alarm["url"] = url
        alarm["expect_status"] = reader.get(fields, "expect_status", reader.integer, 200, 100, 599)
    for key in set(fields) - {"name", "type"} - _KEYS_OF[kind]:
        reader.report(fields[key].key, f"{key!r} does not apply to a {kind} alarm", f"{path}.{key}")
    return alarm


_KEYS_OF = {
    "cloudwatch": frozenset(),
    "haproxy": frozenset({"max_5xx_percent", "max_response_ms", "window_seconds", "min_requests"}),
    "http": frozenset({"url", "expect_status"}),
}


def _auto_rollback(reader: NodeReader, entry: Entry | None) -> AutoRollback:
    if entry is None:
        return AutoRollback()
    fields = reader.fields(entry.value, entry.path, ("enabled", "events"))
    enabled = reader.get(fields, "enabled", reader.boolean, False)
    if "events" not in fields or is_null(fields["events"].value):
        return AutoRollback(enabled, frozenset({AutoRollbackEvent.DEPLOYMENT_FAILURE} if enabled else ()))
    names = tuple(AutoRollbackEvent)
    events = [
        reader.choice(item, path, names) for item, path in reader.items(fields["events"].value, fields["events"].path)
    ]
    return AutoRollback(enabled, frozenset(AutoRollbackEvent(event) for event in events if event is not None))


def _blue_green_options(
    reader: NodeReader, entry: Entry | None, blue_green: bool, load_balancer: LoadBalancer | None = None
) -> BlueGreenOptions:
    if entry is None or is_null(entry.value):
        return BlueGreenOptions()
    if not blue_green:
        reader.report(entry.key, "blue_green options apply only to blue-green deployments", entry.path)
    keys = (
        *("ready_action", "ready_wait_minutes", "terminate_action", "termination_wait_minutes"),
        *("green_fleet_provisioning", "auto_scaling_group"),
    )
    fields = reader.fields(entry.value, entry.path, keys)
    minutes = (reader.number, 0, 0, _MAX_WAIT_MINUTES)  # fractions allowed (deploybot extension)
    options = BlueGreenOptions(
        ready_action=reader.get(fields, "ready_action", reader.choice, "CONTINUE_DEPLOYMENT", _READY_ACTIONS),
        ready_wait_minutes=reader.get(fields, "ready_wait_minutes", *minutes),
        terminate_action=reader.get(fields, "terminate_action", _either_case(reader), "KEEP_ALIVE", _TERMINATE_ACTIONS),
        termination_wait_minutes=reader.get(fields, "termination_wait_minutes", *minutes),
        green_fleet_provisioning=reader.get(
            fields,
            "green_fleet_provisioning",
            _either_case(reader, lower=True),
            "discover_existing",
            _GREEN_FLEET_PROVISIONING,
        ),
        auto_scaling_group=reader.get(fields, "auto_scaling_group", reader.string, None),
    )
    _check_green_fleet(reader, entry, fields, options, load_balancer)
    return options


def _either_case(reader: NodeReader, *, lower: bool = False) -> Callable[[Node, str, tuple[str, ...]], str | None]:
    """``reader.choice`` that takes CodeDeploy's upper-case spelling and the file's lower-case one alike."""

    def read(node: Node, path: str, choices: tuple[str, ...]) -> str | None:
        if isinstance(node, ScalarNode) and isinstance(node.value, str):
            wanted = node.value.lower() if lower else node.value.upper()
            if wanted in choices:
                return wanted
        return reader.choice(node, path, choices)

    return read


def _check_green_fleet(
    reader: NodeReader,
    entry: Entry,
    fields: dict[str, Entry],
    options: BlueGreenOptions,
    load_balancer: LoadBalancer | None,
) -> None:
    """Copying an Auto Scaling group needs the group to copy and an ELBv2 listener to move to the copy; naming a
    group without copying it would be a setting that silently does nothing."""
    asg = fields.get("auto_scaling_group")
    if asg is not None and options.auto_scaling_group is not None and not _ASG_NAME.match(options.auto_scaling_group):
        reader.report(asg.value, f"bad Auto Scaling group name {options.auto_scaling_group!r}", asg.path)
    if not options.copies_auto_scaling_group:
        if asg is not None:
            message = "auto_scaling_group applies only with green_fleet_provisioning: copy_auto_scaling_group"
            reader.report(asg.key, message, asg.path)
        return
    where = fields["green_fleet_provisioning"]
    if asg is None:
        message = (
            "green_fleet_provisioning: copy_auto_scaling_group needs auto_scaling_group: the name of the Auto "
            "Scaling group each deployment copies"
        )
        reader.report(where.value, message, f"{entry.path}.auto_scaling_group")
    if load_balancer is None or load_balancer.type != "elbv2":
        message = (
            "green_fleet_provisioning: copy_auto_scaling_group needs a load_balancer of type elbv2 (two target groups "
            "and a listener) to move the traffic to the copy"
        )
        reader.report(where.value, message, where.path)


def _copies_auto_scaling_group(group: Node) -> bool:
    """Whether a group's mapping says ``blue_green: {green_fleet_provisioning: copy_auto_scaling_group}`` (read
    before the group's keys are, because it decides whether ``targets`` is required)."""
    for key, value in group.value if isinstance(group, MappingNode) else ():
        if isinstance(key, ScalarNode) and key.value == "blue_green" and isinstance(value, MappingNode):
            for option, setting in value.value:
                if isinstance(option, ScalarNode) and option.value == "green_fleet_provisioning":
                    return isinstance(setting, ScalarNode) and str(setting.value).lower() == COPY_AUTO_SCALING_GROUP
    return False
