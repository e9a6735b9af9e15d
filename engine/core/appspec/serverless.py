"""The Lambda and ECS platforms' AppSpec sections (pure): the one resource, its properties, and the hook functions.

These files are read by the service, not the agent. Keys may be written in PascalCase (the example page) or all
lower case (the structure page); exactly one resource; hooks are a list of single-key maps naming a Lambda function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from yaml.nodes import Node

from engine.core.appspec.model import (
    ECS_HOOK_EVENTS,
    LAMBDA_HOOK_EVENTS,
    AppSpecReader,
    EcsAppSpec,
    LambdaAppSpec,
    check_version,
    spelling_hint,
)
from engine.core.model import LifecycleEvent
from engine.core.yamlnode import Entry, as_written, is_null, quoted

_NOT_RESOURCES = " (it belongs to server AppSpec files: validate this file with platform server)"
_RESOURCE_KEYS = ("version", "Resources", "Hooks")
_LAMBDA_PROPERTIES = ("Name", "Alias", "CurrentVersion", "TargetVersion")
_ECS_PROPERTIES = (
    "TaskDefinition",
    "LoadBalancerInfo",
    "PlatformVersion",
    "NetworkConfiguration",
    "CapacityProviderStrategy",
)
_AWSVPC_KEYS = ("Subnets", "SecurityGroups", "AssignPublicIp")


def parse_lambda(reader: AppSpecReader, root: Node) -> LambdaAppSpec | None:
    """A Lambda AppSpec from its root node; None (with the problems reported) when its resource is unusable."""
    top, properties = _resource(reader, root, "Lambda", "AWS::Lambda::Function", _LAMBDA_PROPERTIES)
    hooks = _function_hooks(reader, top, "Lambda", LAMBDA_HOOK_EVENTS)
    if properties is None:
        return None
    node, found = properties
    versions = [_lambda_version(reader, node, found, name) for name in ("CurrentVersion", "TargetVersion")]
    name = reader.required(node, found, "Name", "Properties")
    alias = reader.required(node, found, "Alias", "Properties")
    return LambdaAppSpec(name or "", alias or "", versions[0] or "", versions[1] or "", hooks)


def parse_ecs(reader: AppSpecReader, root: Node) -> EcsAppSpec | None:
    """An ECS AppSpec from its root node; None (with the problems reported) when its resource is unusable."""
    top, properties = _resource(reader, root, "ECS", "AWS::ECS::Service", _ECS_PROPERTIES, logical="TargetService")
    hooks = _function_hooks(reader, top, "ECS", ECS_HOOK_EVENTS)
    if properties is None:
        return None
    node, found = properties
    task_definition = reader.required(node, found, "TaskDefinition", "Properties")
    container_name, container_port = None, None
    if "LoadBalancerInfo" not in found:
        reader.report(node, "Properties needs 'LoadBalancerInfo' with ContainerName and ContainerPort")
    else:
        info = found["LoadBalancerInfo"].value
        info_found = reader.known_keys(info, ("ContainerName", "ContainerPort"), "LoadBalancerInfo", lower_too=True)
        if info_found is not None:
            owner = found["LoadBalancerInfo"].key
            container_name = reader.required(owner, info_found, "ContainerName", "LoadBalancerInfo")
            container_port = _container_port(reader, owner, info_found)
    network = _network(reader, found["NetworkConfiguration"].value) if "NetworkConfiguration" in found else None
    strategy = (
        _capacity_strategy(reader, found["CapacityProviderStrategy"].value)
        if "CapacityProviderStrategy" in found
        else ()
    )
    return EcsAppSpec(
        task_definition or "",
        container_name or "",
        container_port or 0,
        reader.optional_text(found, "PlatformVersion"),
        network,
        strategy,
        hooks,
    )


def _resource(
    reader: AppSpecReader,
    root: Node,
    platform: str,
    type_name: str,
    property_names: Sequence[str],
    *,
    logical: str | None = None,
) -> tuple[dict[str, Entry] | None, tuple[Node, dict[str, Entry]] | None]:
    """The top-level keys, and the one resource's ``Properties`` (node and known keys) when it has them."""
    hints = {key: _NOT_RESOURCES for key in ("os", "files", "permissions", "file_exists_behavior")}
    top = reader.known_keys(root, _RESOURCE_KEYS, "the AppSpec file", lower_too=True, hints=hints)
    if top is None:
        return None, None
    check_version(reader, root, top.get("version"))
    what = f"the {platform} resource ({logical or 'the function'})"
    if "Resources" not in top:
        reader.report(root, f"the AppSpec file needs 'Resources', a list holding {what}")
        return top, None
    items = reader.sequence(top["Resources"].value, "Resources", f"'- {logical or 'myFunction'}:'")
    if items is None:
        return top, None
    if not items:
        reader.report(top["Resources"].value, f"Resources must hold {what}")
        return top, None
    kind = "TargetService" if logical else "Function"
    for extra in items[1:]:
        reader.report(extra, f"Only 1 {platform} resource ({kind}) supported in a deployment")
    entries = reader.mapping(items[0], "a resource")
    if not entries:
        if entries is not None:
            reader.report(items[0], f"Resources must hold {what}")
        return top, None
    for _, key, _ in entries[1:]:
        reader.report(key, f"Only 1 {platform} resource ({kind}) supported in a deployment")
    name, key, body = entries[0]
    if logical and name not in (logical, logical.lower()):
        reader.report(key, f"the {platform} resource must be named {logical}, not {name!r}")
    found = reader.known_keys(body, ("Type", "Properties"), f"resource {name}", lower_too=True)
    if found is None:
        return top, None
    if "Type" not in found:
        reader.report(body, f"resource {name} needs 'Type: {type_name}'")
    elif reader.value(found["Type"].value) != type_name:
        given = as_written(found["Type"].value)
        other = {"AWS::ECS::Service": "ecs", "AWS::Lambda::Function": "lambda"}.get(given)
        hint = f" (this looks like an AppSpec for {other}: validate it with platform {other})" if other else ""
        reader.report(found["Type"].value, f"{platform} resource Type must be {type_name}, not {given}{hint}")
    if "Properties" not in found:
        reader.report(body, f"resource {name} needs 'Properties'")
        return top, None
    key, node = found["Properties"].key, found["Properties"].value
    properties = reader.known_keys(node, property_names, f"the Properties of {name}", lower_too=True)
    return top, (key, properties) if properties is not None else None


def _lambda_version(reader: AppSpecReader, owner: Node, found: Mapping[str, Entry], name: str) -> str | None:
    """A Lambda version: "This value must be a valid positive integer" (given as text or as a number)."""
    if name not in found:
        reader.report(owner, f'Properties needs {name!r} (a Lambda version number such as "1")')
        return None
    number = reader.whole_number(found[name].value)
    if number is None or number <= 0:
        reader.report(
            found[name].value,
            f'{name} must be a valid positive integer (a published Lambda version such as "2"), '
            f"not {as_written(found[name].value) or 'empty'}",
        )
        return None
    return str(number)


def _function_hooks(
    reader: AppSpecReader, top: Mapping[str, Entry] | None, platform: str, allowed: Sequence[LifecycleEvent]
) -> dict[LifecycleEvent, tuple[str, ...]]:
    hooks: dict[LifecycleEvent, tuple[str, ...]] = {}
    if top is None or "Hooks" not in top:
        return hooks
    example = f"'- {allowed[0]}: MyValidationFunction'"
    for item in reader.sequence(top["Hooks"].value, "Hooks", example) or ():
        entries = reader.mapping(item, "a hook")
        if entries is not None and len(entries) != 1:
            reader.report(item, f"each hook is a map with a single key, e.g. {example}")
        for name, key, value in entries or ():
            event = next((e for e in allowed if e.value == name), None)
            if event is None:
                names = " ".join(allowed)
                hint = spelling_hint(name, allowed)
                reader.report(key, f"The hooks must be one of the {platform} supported hooks: [{names}]{hint}")
            elif event in hooks:
                reader.report(key, f"{name} is listed twice; each hook runs one function once per deployment")
            function = (reader.text(value, f"the function of {name}") or "").strip()
            if not function:
                reader.report(value, f"Value cannot be empty for hook: {name} (give a Lambda function name)")
            elif event is not None and event not in hooks:
                hooks[event] = (function,)
    return hooks


def _container_port(reader: AppSpecReader, owner: Node, found: Mapping[str, Entry]) -> int | None:
    if "ContainerPort" not in found:
        reader.report(owner, "LoadBalancerInfo needs 'ContainerPort', the container port traffic is routed to")
        return None
    node = found["ContainerPort"].value
    value = reader.value(node)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    fix = f" (write {value.strip()} without quotes)" if isinstance(value, str) and value.strip().isdigit() else ""
    reader.report(node, f"ContainerPort must be a port number from 1 to 65535, not {quoted(node)}{fix}")
    return None


def _network(reader: AppSpecReader, node: Node) -> dict[str, object] | None:
    """``NetworkConfiguration.AwsvpcConfiguration``: all three settings or none; as ECS's API spells it."""
    if is_null(node):
        return None
    found = reader.known_keys(node, ("AwsvpcConfiguration",), "NetworkConfiguration", lower_too=True)
    if not found:
        if found is not None:
            reader.report(node, "NetworkConfiguration needs 'AwsvpcConfiguration'")
        return None
    vpc_node = found["AwsvpcConfiguration"].value
    vpc = (
        reader.known_keys(vpc_node, _AWSVPC_KEYS, "AwsvpcConfiguration", lower_too=True)
        if not is_null(vpc_node)
        else {}
    )
    if not vpc:
        return None
    missing = [name for name in _AWSVPC_KEYS if name not in vpc]
    if missing:
        reader.report(
            found["AwsvpcConfiguration"].key,
            "All or none of the settings under NetworkConfiguration must be specified: "
            f"add {' and '.join(missing)} (or remove the others to keep the service's current network settings)",
        )
    lists: dict[str, list[str]] = {}
    for name in ("Subnets", "SecurityGroups"):
        items = reader.sequence(vpc[name].value, name, f"'{name}: [\"...\"]'") if name in vpc else None
        texts = [(item, reader.text(item, f"an item of {name}")) for item in items or ()]
        for item, text in texts:
            if text is not None and not text.strip():
                reader.report(item, f"{name} cannot be empty strings")
        lists[name] = [text.strip() for _, text in texts if text and text.strip()]
        if items == [] and name in vpc:
            reader.report(vpc[name].value, f"{name} must list at least one")
    assign = reader.value(vpc["AssignPublicIp"].value) if "AssignPublicIp" in vpc else None
    if "AssignPublicIp" in vpc and assign not in ("ENABLED", "DISABLED"):
        shown = as_written(vpc["AssignPublicIp"].value)
        reader.report(
            vpc["AssignPublicIp"].value, f"AssignPublicIp must be ENABLED or DISABLED, not {shown or 'empty'}"
        )
    config = {"subnets": lists["Subnets"], "securityGroups": lists["SecurityGroups"], "assignPublicIp": assign}
    return {"awsvpcConfiguration": config}


def _capacity_strategy(reader: AppSpecReader, node: Node) -> tuple[dict[str, object], ...]:
    """``CapacityProviderStrategy``: Base and Weight default to 0; only one provider may have a Base."""
    strategy: list[dict[str, object]] = []
    with_base: str | None = None
    for item in reader.sequence(node, "CapacityProviderStrategy", "'- CapacityProvider: FARGATE'") or ():
        found = reader.known_keys(item, ("Base", "CapacityProvider", "Weight"), "a capacity provider", lower_too=True)
        if found is None:
            continue
        provider = reader.required(item, found, "CapacityProvider", "a capacity provider")
        numbers: dict[str, int] = {}
        for name, most in (("Base", 100000), ("Weight", 1000)):
            value = reader.value(found[name].value) if name in found else 0
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= most:
                reader.report(found[name].value, f"{name} must be a whole number from 0 to {most}")
                value = 0
            numbers[name] = value
        if numbers["Base"] > 0:
            if with_base is not None:
                reader.report(
                    found["Base"].value,
                    f"only one capacity provider may have a Base, and {with_base} already has one",
                )
            with_base = with_base or provider or "another provider"
        strategy.append({"capacityProvider": provider or "", "base": numbers["Base"], "weight": numbers["Weight"]})
    return tuple(strategy)
