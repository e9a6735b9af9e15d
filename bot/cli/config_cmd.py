"""``deploybot config check FILE [--json]``: validate a deploybot configuration file before serving it.

Exit 0 and a summary when valid; 1 with ``FILE:LINE:COL: message (key.path)`` lines on stderr when invalid;
2 when the file cannot be read (missing, a directory, no permission).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine import EngineConfig


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = subparsers.add_parser("config", help="deploybot configuration files")
    sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = sub.add_parser("check", help="validate a configuration file (exit 0 valid, 1 invalid, 2 unreadable)")
    check.add_argument("file", metavar="FILE", help="the YAML configuration file")
    check.add_argument("--json", action="store_true", help="one JSON document on stdout")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from engine import ConfigError, load_config

    try:
        config = load_config(args.file)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(f"deploybot config check: cannot read {args.file}: {reason}", file=sys.stderr)
        if args.json:
            print(json.dumps({"valid": False, "file": args.file, "error": reason, "errors": [], "summary": None}))
        return 2
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        if args.json:
            errors = [{"line": p.line, "column": p.column, "message": p.message, "path": p.path} for p in exc.problems]
            print(json.dumps({"valid": False, "file": args.file, "errors": errors, "summary": None}, indent=2))
        return 1
    data = summary(config)
    if args.json:
        print(json.dumps({"valid": True, "file": args.file, "errors": [], "summary": data}, indent=2))
    else:
        print("\n".join(render_summary(args.file, data)))
    return 0


def summary(config: EngineConfig) -> dict[str, Any]:
    """What the file declares, JSON-ready: applications with their environments and groups, hosts, configs."""
    applications = []
    for app in config.applications.values():
        groups = []
        for environment in app.environments:
            group = app.groups[environment]
            groups.append(
                {
                    "environment": environment,
                    "name": group.name,
                    "deployment_type": str(group.deployment_type),
                    "deployment_config": group.deployment_config,
                    "targets": [host.name for host in config.targets(group)],
                    "load_balancer": group.load_balancer.type if group.load_balancer else None,
                }
            )
        applications.append(
            {"name": app.name, "platform": str(app.platform), "environments": list(app.environments), "groups": groups}
        )
    return {
        "listen": f"{config.server.listen_host}:{config.server.listen_port}",
        "data_dir": config.server.data_dir,
        "applications": applications,
        "hosts": [
            {"name": h.name, "local": h.local, "port": h.port, "tags": dict(h.tags)} for h in config.hosts.values()
        ],
        "deployment_configs": sorted(config.deployment_configs),
    }


def render_summary(file: str, data: dict[str, Any]) -> list[str]:
    apps = data["applications"]
    groups = [group for app in apps for group in app["groups"]]
    hosts = data["hosts"]
    local = sum(1 for host in hosts if host["local"])
    lines = [
        f"{file}: valid",
        f"  applications  {len(apps)}: {', '.join(app['name'] for app in apps) or '-'}",
        f"  environments  {len({env for app in apps for env in app['environments']})}: "
        + (", ".join(dict.fromkeys(env for app in apps for env in app["environments"])) or "-"),
        f"  groups        {len(groups)}",
    ]
    for group in groups:
        detail = f"{group['deployment_type']}, {group['deployment_config']}, {len(group['targets'])} hosts"
        lines.append(f"    {group['name']:<24}{detail}")
    lines.append(f"  hosts         {len(hosts)} ({local} local)")
    if data["deployment_configs"]:
        lines.append(f"  custom configs {len(data['deployment_configs'])}: {', '.join(data['deployment_configs'])}")
    return lines
