"""``deploybot configs list`` / ``configs explain``: what a deployment configuration means for a fleet.

``explain`` exits 0 even when the deployment could not start (that is the answer, shown as ``cannot start``);
exit 2 is for bad input, with a usage line, and lists close names for an unknown configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from engine import (
    BUILTIN_CONFIGS,
    BUILTIN_PREFIX,
    DeploymentConfig,
    MinimumHealthyHosts,
    MinimumHealthyHostsType,
    Platform,
    TrafficRouting,
    TrafficRoutingType,
    UnknownDeploymentConfig,
    close_config_names,
    default_config_name,
    describe_config,
    traffic_span_minutes,
    validate_custom_config,
)

_TRAFFIC_WORDS = {
    "allatonce": TrafficRoutingType.ALL_AT_ONCE,
    "canary": TrafficRoutingType.CANARY,
    "timebasedcanary": TrafficRoutingType.CANARY,
    "linear": TrafficRoutingType.LINEAR,
    "timebasedlinear": TrafficRoutingType.LINEAR,
}


class UsageProblem(Exception):
    """Bad command-line input; turned into a usage line and exit 2."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    configs = subparsers.add_parser("configs", help="deployment configurations and what they mean for a fleet")
    sub = configs.add_subparsers(dest="configs_command", metavar="SUBCOMMAND", required=True)

    listing = sub.add_parser("list", help="every built-in configuration, by platform, with its meaning")
    listing.add_argument("--json", action="store_true", help="one JSON document on stdout")
    listing.set_defaults(func=run_list)

    explain = sub.add_parser(
        "explain",
        help="minimum healthy hosts, hosts at once, batches and traffic steps for a fleet",
        description="Explain a configuration by NAME, or an ad-hoc one from --min-healthy and/or --traffic.",
    )
    add_explain_arguments(explain)
    explain.set_defaults(func=run_explain, explain_parser=explain)


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``configs explain``; outcome options (``--fail``) belong next to these."""
    parser.add_argument("name", nargs="?", metavar="NAME", help="a configuration name (the prefix may be left out)")
    parser.add_argument(
        "--min-healthy",
        metavar="TYPE:VALUE",
        help="ad-hoc minimum healthy hosts, e.g. HOST_COUNT:6, FLEET_PERCENT:40",
    )
    parser.add_argument(
        "--traffic",
        metavar="SPEC",
        help="ad-hoc traffic routing: AllAtOnce, canary:PERCENT:MINUTES, linear:PERCENT:MINUTES",
    )
    parser.add_argument("--hosts", type=int, metavar="N", help="fleet size (required for host configurations)")
    parser.add_argument(
        "--fail",
        metavar="POSITIONS",
        help="predict the outcome when these hosts fail (1-based positions in deployment order, e.g. 3,5)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


# ---------------------------------------------------------------------------------------------------- list


def run_list(args: argparse.Namespace) -> int:
    configs = list(BUILTIN_CONFIGS.values())
    if args.json:
        print(json.dumps({"configs": [_list_entry(c) for c in configs]}, indent=2))
        return 0
    width = max(len(c.name) for c in configs)
    lines: list[str] = []
    for platform in Platform:
        lines.append(f"{platform}:")
        for config in (c for c in configs if c.compute_platform is platform):
            lines.append(f"  {config.name:<{width}}  {meaning(config)}")
    print("\n".join(lines))
    return 0


def _list_entry(config: DeploymentConfig) -> dict[str, Any]:
    entry = {key: value for key, value in describe_config(config).items() if key != "builtin"}
    entry["default"] = default_config_name(config.compute_platform) == config.name
    entry["meaning"] = meaning(config)
    return entry


def meaning(config: DeploymentConfig) -> str:
    """One line saying what the configuration does."""
    parts: list[str] = []
    mhh = config.minimum_healthy_hosts
    if mhh is not None:
        parts.append(_hosts_meaning(mhh))
    if config.traffic_routing is not None:
        parts.append(_traffic_meaning(config.traffic_routing))
    if default_config_name(config.compute_platform) == config.name:
        parts.append(f"the {config.compute_platform} default")
    return "; ".join(parts)


def _hosts_meaning(mhh: MinimumHealthyHosts) -> str:
    match mhh.type, mhh.value:
        case MinimumHealthyHostsType.MOST_CONCURRENCY, 1:
            return "one host at a time; all hosts but one stay healthy (a failure on the last host is tolerated)"
        case MinimumHealthyHostsType.MOST_CONCURRENCY, value:
            return f"{value} hosts at a time"
        case MinimumHealthyHostsType.HOST_COUNT, 0:
            return "all hosts at once; succeeds if at least one host succeeds"
        case MinimumHealthyHostsType.HOST_COUNT, value:
            return f"keeps at least {value} hosts healthy"
        case MinimumHealthyHostsType.FLEET_PERCENT, value:
            return f"keeps at least {value}% of hosts healthy (rounded up); up to {100 - value}% at once"
    raise AssertionError(mhh)


def _traffic_meaning(routing: TrafficRouting) -> str:
    p, minutes = routing.percentage, routing.interval_minutes
    match routing.type:
        case TrafficRoutingType.ALL_AT_ONCE:
            return "shifts all traffic at once"
        case TrafficRoutingType.CANARY:
            return f"shifts {p}% of traffic, then the rest {_minutes(minutes)} later"
        case TrafficRoutingType.LINEAR:
            total = _minutes(traffic_span_minutes(routing))
            return f"shifts {p}% more traffic every {_minutes(minutes)} ({total} in all)"
    raise AssertionError(routing)


def _minutes(value: float) -> str:
    return f"{value} minute" if value == 1 else f"{value} minutes"


# ---------------------------------------------------------------------------------------------------- explain


def run_explain(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.explain_parser
    try:
        config = config_from_args(args)
        if config.minimum_healthy_hosts is not None and args.hosts is None:
            raise UsageProblem(f"--hosts N is required to explain {config.name}")
        if args.hosts is not None and args.hosts < 0:
            raise UsageProblem(f"--hosts must be 0 or more, not {args.hosts}")
        outcome = predict_outcome(args, config)
    except UsageProblem as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    data = describe_config(config, args.hosts)
    if outcome is not None:
        data["outcome"] = dict(outcome)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print("\n".join(render_explain(config, data) + render_outcome(outcome)))
    return 0


def config_from_args(
    args: argparse.Namespace, custom: Mapping[str, DeploymentConfig] = MappingProxyType({})
) -> DeploymentConfig:
    """The configuration named, or the ad-hoc one described, on the command line; raises UsageProblem."""
    ad_hoc = args.min_healthy is not None or args.traffic is not None
    if args.name is not None and ad_hoc:
        raise UsageProblem("give NAME or --min-healthy/--traffic, not both")
    if args.name is None and not ad_hoc:
        raise UsageProblem("give a configuration NAME, or --min-healthy TYPE:VALUE, or --traffic SPEC")
    if args.name is not None:
        return _named_config(args.name, custom)
    mhh = _parse_min_healthy(args.min_healthy) if args.min_healthy is not None else None
    routing = _parse_traffic(args.traffic) if args.traffic is not None else None
    name = " + ".join(s for s in (args.min_healthy, args.traffic) if s is not None)
    config = DeploymentConfig(name, Platform.SERVER, mhh, routing)
    problems = validate_custom_config(config)
    if problems:
        raise UsageProblem("; ".join(problems))
    return config


def _named_config(name: str, custom: Mapping[str, DeploymentConfig]) -> DeploymentConfig:
    for candidate in (name, BUILTIN_PREFIX + name):
        found = BUILTIN_CONFIGS.get(candidate) or custom.get(candidate)
        if found is not None:
            return found
    close = close_config_names(name, custom)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `deploybot configs list`"
    raise UsageProblem(f"{UnknownDeploymentConfig(name)}{hint}")


def _parse_min_healthy(text: str) -> MinimumHealthyHosts:
    kind, _, value = text.partition(":")
    try:
        return MinimumHealthyHosts(MinimumHealthyHostsType(kind.strip().upper()), int(value))
    except ValueError:
        raise UsageProblem(f"--min-healthy wants HOST_COUNT:N or FLEET_PERCENT:N, not {text!r}") from None


def _parse_traffic(text: str) -> TrafficRouting:
    word, *numbers = text.split(":")
    kind = _TRAFFIC_WORDS.get(word.strip().lower())
    try:
        values = [int(n) for n in numbers]
    except ValueError:
        values = []
    if kind is TrafficRoutingType.ALL_AT_ONCE and not numbers:
        return TrafficRouting(kind)
    if kind is not None and kind is not TrafficRoutingType.ALL_AT_ONCE and len(values) == 2:
        return TrafficRouting(kind, values[0], values[1])
    raise UsageProblem(f"--traffic wants AllAtOnce, canary:PERCENT:MINUTES or linear:PERCENT:MINUTES, not {text!r}")


def predict_outcome(args: argparse.Namespace, config: DeploymentConfig) -> Mapping[str, Any] | None:
    """Run the real state machine on ``--hosts`` hosts with the ``--fail`` positions failing ValidateService."""
    from engine import DeploymentType, LifecycleEvent, StageOptions, deployment_stages, simulate

    if args.fail is None:
        return None
    mhh = config.minimum_healthy_hosts
    if mhh is None or args.hosts is None:
        raise UsageProblem("--fail needs a host configuration and --hosts N")
    try:
        positions = sorted({int(p) for p in args.fail.split(",") if p.strip()})
    except ValueError:
        raise UsageProblem(f"--fail wants host positions like 3,5, not {args.fail!r}") from None
    if any(p < 1 or p > args.hosts for p in positions):
        raise UsageProblem(f"--fail positions must be between 1 and {args.hosts}")
    hosts = tuple(f"host-{i}" for i in range(1, args.hosts + 1))
    stages = deployment_stages(StageOptions(Platform.SERVER, DeploymentType.IN_PLACE, mhh), hosts)
    result = simulate(stages, {f"host-{p}": LifecycleEvent.VALIDATE_SERVICE for p in positions})
    return {
        "status": str(result.status),
        "error_code": str(result.error_code) if result.error_code else None,
        "message": result.message,
        "failing": positions,
        "hosts_attempted": len(result.attempted),
        "waves": [len(w) for w in result.waves],
    }


def render_outcome(outcome: Mapping[str, Any] | None) -> list[str]:
    """Text lines for a predicted outcome (the lead's ``--fail``); nothing when there is none."""
    if outcome is None:
        return []
    verdict = str(outcome["status"]) + (f" ({outcome['error_code']})" if outcome["error_code"] else "")
    failing = ", ".join(str(p) for p in outcome["failing"]) or "none"
    waves = " + ".join(str(w) for w in outcome["waves"]) or "none"
    return [
        _row("if hosts fail", failing),
        _row("outcome", verdict),
        _row("hosts attempted", f"{outcome['hosts_attempted']} (waves: {waves})"),
    ]


def render_explain(config: DeploymentConfig, data: Mapping[str, Any]) -> list[str]:
    """Text lines for ``describe_config``'s data."""
    lines = [f"{config.name} ({config.compute_platform}, {data['kind']}): {meaning(config)}"]
    if "hosts" in data:
        n, minimum = data["hosts"], data["minimum_healthy_count"]
        lines.append(_row("hosts", str(n)))
        lines.append(_row("minimum healthy", f"{minimum}{_minimum_reason(config, n)}"))
        if data["startable"]:
            at_once, sizes = data["max_concurrent"], data["batch_sizes"]
            lines.append(_row("hosts at once", f"up to {at_once}"))
            lines.append(_row("batches", f"{len(sizes)}: {', '.join(map(str, sizes))}"))
        else:
            lines.append(_row("cannot start", _start_problem_text(data["problem"], minimum, n)))
    steps = data.get("traffic_steps")
    if steps:
        for index, step in enumerate(steps):
            wait = f", then wait {_minutes(step['wait_seconds'] // 60)}" if step["wait_seconds"] else ""
            lines.append(_row("traffic steps" if index == 0 else "", f"{step['percent']}% on the new version{wait}"))
        lines.append(_row("traffic time", _minutes(data["traffic_minutes"])))
    return lines


def _minimum_reason(config: DeploymentConfig, fleet_size: int) -> str:
    mhh = config.minimum_healthy_hosts
    if mhh is None:
        return ""
    match mhh.type:
        case MinimumHealthyHostsType.FLEET_PERCENT:
            return f" ({mhh.value}% of {fleet_size}, rounded up)"
        case MinimumHealthyHostsType.MOST_CONCURRENCY:
            return f" (all but {mhh.value})"
    return ""


def _start_problem_text(problem: str, minimum: int, fleet_size: int) -> str:
    if fleet_size == 0:
        return f"{problem}: the deployment group has no hosts"
    return f"{problem}: {minimum} of {fleet_size} hosts must stay healthy, so none can be taken offline"


def _row(label: str, value: str) -> str:
    return f"  {label:<18}{value}"
