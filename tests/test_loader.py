"""core/config/parse.py and `deploybot config check`: every kind of problem at its exact line:column, a full round trip,
the embedded default config, and the CLI through a real subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.core.config.model import (
    AlarmConfiguration,
    Application,
    BlueGreenOptions,
    DeploymentGroup,
    EngineConfig,
    Host,
    LoadBalancer,
    ServerSettings,
    TlsSettings,
    User,
)
from engine.core.config.parse import DEFAULT_CONFIG_PATH, load_config, parse_config
from engine.core.configs import (
    DeploymentConfig,
    MinimumHealthyHosts,
    MinimumHealthyHostsType,
    TrafficRouting,
    TrafficRoutingType,
)
from engine.core.errors import ConfigError, Problem
from engine.core.model import AutoRollback, AutoRollbackEvent, DeploymentType, Platform

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "config"

# Eight lines; the group body of each GROUP case starts on line 9, indented by 8 spaces.
GROUP_PREFIX = """\
hosts:
  - {name: web-1, local: true, port: 9101, tags: {env: staging}}
  - {name: web-2, local: true, port: 9102, tags: {env: staging}}
applications:
  hello:
    environments: [staging]
    deployment_groups:
      staging:
"""
GROUP = "applications.hello.deployment_groups.staging"


def problems_of(text: str) -> list[tuple[int, int, str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, filename="deploybot.yml")
    assert all(p.file == "deploybot.yml" for p in caught.value.problems)
    return [(p.line, p.column, p.message, p.path) for p in caught.value.problems]


GROUP_CASES = {
    "unknown deployment config": (
        "        targets: {hosts: [web-1]}\n        deployment_config: CodeDeployDefault.OneAtATme\n",
        [
            (
                10,
                28,
                "unknown deployment configuration 'CodeDeployDefault.OneAtATme' "
                "(did you mean 'CodeDeployDefault.OneAtATime'?)",
                f"{GROUP}.deployment_config",
            )
        ],
    ),
    "config of another platform": (
        "        targets: {hosts: [web-1]}\n        deployment_config: CodeDeployDefault.LambdaAllAtOnce\n",
        [
            (
                10,
                28,
                "'CodeDeployDefault.LambdaAllAtOnce' cannot be used here: expected a configuration with "
                "minimum_healthy_hosts",
                f"{GROUP}.deployment_config",
            )
        ],
    ),
    "unknown target host": (
        "        targets: {hosts: [web-1, web1]}\n",
        [(9, 34, "unknown host 'web1' (did you mean 'web-1'?)", f"{GROUP}.targets.hosts[1]")],
    ),
    "empty tag selector": (
        "        targets: {tags: {}}\n",
        [(9, 25, "expected at least one tag to select hosts by", f"{GROUP}.targets.tags")],
    ),
    "missing targets": (
        "        deployment_config: CodeDeployDefault.AllAtOnce\n",
        [(9, 9, "missing required key 'targets'", f"{GROUP}.targets")],
    ),
    "hosts and tags together": (
        "        targets: {hosts: [web-1], tags: {env: staging}}\n",
        [
            (
                9,
                18,
                "expected exactly one of 'hosts' (names), 'tags' (a selector) or 'ec2_tags' (EC2 instance tags)",
                f"{GROUP}.targets",
            )
        ],
    ),
    "wrong type": (
        "        targets: {hosts: [web-1]}\n        required_approvals: two\n",
        [(10, 29, "expected an integer, got a string", f"{GROUP}.required_approvals")],
    ),
    "bad choice with suggestion": (
        "        targets: {hosts: [web-1]}\n        deployment_type: inplace\n",
        [
            (
                10,
                26,
                "expected one of in-place, blue-green, got 'inplace' (did you mean 'in-place'?)",
                f"{GROUP}.deployment_type",
            )
        ],
    ),
    "unknown key with suggestion": (
        "        targets: {hosts: [web-1]}\n        deployment_confg: X\n",
        [(10, 9, "unknown key 'deployment_confg' (did you mean 'deployment_config'?)", f"{GROUP}.deployment_confg")],
    ),
    "traffic config on in-place": (
        "        targets: {hosts: [web-1]}\n        traffic_config: CodeDeployDefault.ECSAllAtOnce\n",
        [(10, 25, "traffic_config applies only to blue-green deployments", f"{GROUP}.traffic_config")],
    ),
    "blue-green without load balancer": (
        "        targets: {hosts: [web-1]}\n        deployment_type: blue-green\n",
        [(10, 26, "blue-green deployments need a load_balancer to move traffic", f"{GROUP}.deployment_type")],
    ),
    "load balancer port taken by a local host": (
        "        targets: {hosts: [web-1]}\n        load_balancer: {type: haproxy, port: 9101}\n",
        [
            (
                10,
                46,
                "port 9101 of the load balancer of hello/staging is already used by local host 'web-1'",
                f"{GROUP}.load_balancer.port",
            )
        ],
    ),
    "haproxy without port": (
        "        targets: {hosts: [web-1]}\n        load_balancer: {type: haproxy}\n",
        [(10, 24, "missing required key 'port' (the HAProxy frontend port)", f"{GROUP}.load_balancer.port")],
    ),
    "unknown rollback event": (
        "        targets: {hosts: [web-1]}\n        auto_rollback: {enabled: true, events: [DEPLOYMENT_FAIL]}\n",
        [
            (
                10,
                49,
                "expected one of DEPLOYMENT_FAILURE, DEPLOYMENT_STOP_ON_ALARM, DEPLOYMENT_STOP_ON_REQUEST, "
                "got 'DEPLOYMENT_FAIL' (did you mean 'DEPLOYMENT_FAILURE'?)",
                f"{GROUP}.auto_rollback.events[0]",
            )
        ],
    ),
    "too many approvals": (
        "        targets: {hosts: [web-1]}\n        approvers: [bob]\n        required_approvals: 2\n",
        [(11, 29, "2 approvals required but only 1 approvers", f"{GROUP}.required_approvals")],
    ),
    "extra key not whitelisted": (
        "        targets: {hosts: [web-1]}\n        function_nme: f\n",
        [(10, 9, "unknown key 'function_nme' (did you mean 'function_name'?)", f"{GROUP}.function_nme")],
    ),
}


@pytest.mark.parametrize("body, expected", GROUP_CASES.values(), ids=GROUP_CASES.keys())
def test_group_problems_are_located(body: str, expected: list[tuple[int, int, str, str]]) -> None:
    assert problems_of(GROUP_PREFIX + body) == expected


TOP_CASES = {
    "bad listen address": (
        "server:\n  listen: localhost\n",
        [(2, 11, "bad listen address 'localhost': expected HOST:PORT, like 127.0.0.1:8080", "server.listen")],
    ),
    "listen port out of range": (
        "server:\n  listen: 127.0.0.1:99999\n",
        [(2, 11, "bad listen address '127.0.0.1:99999': expected HOST:PORT, like 127.0.0.1:8080", "server.listen")],
    ),
    "unknown key": (
        "server:\n  heartbeat_timout: 5\n",
        [(2, 3, "unknown key 'heartbeat_timout' (did you mean 'heartbeat_timeout'?)", "server.heartbeat_timout")],
    ),
    "unknown key without a close match": (
        "colour: blue\n",
        [
            (
                1,
                1,
                "unknown key 'colour'; expected one of: applications, aws, deployment_configs, hosts, roles, server, "
                "store, users",
                "colour",
            )
        ],
    ),
    "wrong scalar type": (
        "server:\n  heartbeat_timeout: soon\n",
        [(2, 22, "expected a number, got a string", "server.heartbeat_timeout")],
    ),
    "list instead of mapping": (
        "server: [a]\n",
        [(1, 9, "expected a mapping, got a list", "server")],
    ),
    "non-string key": (
        "server:\n  1: x\n",
        [(2, 3, "expected a string key, got an integer (quote it)", "server")],
    ),
    "top level is not a mapping": (
        "- a\n",
        [(1, 1, "expected a mapping, got a list", "")],
    ),
    "missing host name": (
        "hosts:\n  - {local: true}\n",
        [(2, 5, "missing required key 'name'", "hosts[0].name")],
    ),
    "duplicate host": (
        "hosts:\n  - {name: a}\n  - {name: a}\n",
        [(3, 12, "host 'a' is declared twice", "hosts[1].name")],
    ),
    "two local hosts on one port": (
        "hosts:\n  - {name: a, local: true, port: 9000}\n  - {name: b, local: true, port: 9000}\n",
        [(3, 34, "port 9000 of local host 'b' is already used by local host 'a'", "hosts[1].port")],
    ),
    "local host on the server port": (
        "server: {listen: '127.0.0.1:9000'}\nhosts:\n  - {name: a, local: true, port: 9000}\n",
        [(3, 34, "port 9000 of local host 'a' is already used by the server's listen address", "hosts[0].port")],
    ),
    "bad host name": (
        "hosts:\n  - {name: 'web 1'}\n",
        [(2, 12, "bad host name 'web 1': use letters, digits, '.', '_' or '-'", "hosts[0].name")],
    ),
    "duplicate YAML key": (
        "server:\n  listen: 127.0.0.1:1\n  listen: 127.0.0.1:2\n",
        [(3, 3, "duplicate key 'listen' (first given on line 2)", "server.listen")],
    ),
    "invalid YAML": (
        "server:\n  listen: a: b\n",
        [(2, 12, "invalid YAML: mapping values are not allowed here", "")],
    ),
    "several documents": (
        "server: {}\n---\nhosts: []\n",
        [(2, 1, "invalid YAML: expected a single document in the stream, but found another document", "")],
    ),
    "environment without a group": (
        "applications:\n  hello:\n    environments: [prod]\n    deployment_groups: {}\n",
        [
            (
                3,
                20,
                "environment 'prod' has no deployment group (add deployment_groups.prod)",
                "applications.hello.environments[0]",
            )
        ],
    ),
    "group for an undeclared environment": (
        "hosts: [{name: a}]\napplications:\n  hello:\n    environments: [staging]\n    deployment_groups:\n"
        "      staging: {targets: {hosts: [a]}}\n      qa: {targets: {hosts: [a]}}\n",
        [
            (
                7,
                7,
                "deployment group for undeclared environment 'qa'; known: staging",
                "applications.hello.deployment_groups.qa",
            )
        ],
    ),
    "missing required application keys": (
        "applications:\n  hello:\n    platform: server\n",
        [
            (3, 5, "missing required key 'environments'", "applications.hello.environments"),
            (3, 5, "missing required key 'deployment_groups'", "applications.hello.deployment_groups"),
        ],
    ),
    "environment listed twice": (
        "applications:\n  hello:\n    environments: [prod, Prod]\n    deployment_groups: {}\n",
        [
            (
                3,
                20,
                "environment 'prod' has no deployment group (add deployment_groups.prod)",
                "applications.hello.environments[0]",
            ),
            (3, 26, "environment 'Prod' is listed twice", "applications.hello.environments[1]"),
        ],
    ),
    "applications differing only in case": (
        "applications:\n  hello: {platform: lambda, environments: [p], deployment_groups: {p: {}}}\n"
        "  Hello: {platform: lambda, environments: [p], deployment_groups: {p: {}}}\n",
        [(3, 3, "application 'Hello' differs from 'hello' only in case", "applications.Hello")],
    ),
    "auto deploy to an unknown environment": (
        "applications:\n  fn:\n    platform: lambda\n"
        "    github: {repository: acme/fn, auto_deploy: {branch: main, to: prd}}\n"
        "    environments: [prod]\n    deployment_groups: {prod: {}}\n",
        [(4, 67, "unknown environment 'prd' (did you mean 'prod'?)", "applications.fn.github.auto_deploy.to")],
    ),
    "lambda group in place": (
        "applications:\n  fn:\n    platform: lambda\n    environments: [prod]\n"
        "    deployment_groups: {prod: {deployment_type: in-place}}\n",
        [(5, 49, "lambda deployments are always blue-green", "applications.fn.deployment_groups.prod.deployment_type")],
    ),
    "null host item": (
        "hosts:\n  -\n  - {name: a}\n",
        [(2, 4, "expected a mapping, got null", "hosts[0]")],
    ),
    "null targets on a server group": (
        "applications:\n  hello:\n    environments: [prod]\n    deployment_groups:\n      prod:\n        targets:\n",
        [
            (
                6,
                17,
                "expected a mapping with 'hosts' or 'tags', got null",
                "applications.hello.deployment_groups.prod.targets",
            )
        ],
    ),
    "duplicate group name": (
        "applications:\n  a:\n    platform: lambda\n    environments: [x]\n    deployment_groups: {x: {name: g}}\n"
        "  b:\n    platform: lambda\n    environments: [y]\n    deployment_groups: {y: {name: g}}\n",
        [(9, 35, "deployment group name 'g' is also used by a/x", "applications.b.deployment_groups.y.name")],
    ),
    "custom config with a reserved name": (
        "deployment_configs:\n  CodeDeployDefault.Mine:\n    compute_platform: server\n"
        "    minimum_healthy_hosts: {type: HOST_COUNT, value: 1}\n",
        [
            (
                2,
                3,
                "custom configuration names may not start with 'CodeDeployDefault.'",
                "deployment_configs.CodeDeployDefault.Mine",
            )
        ],
    ),
    "custom config out of range": (
        "deployment_configs:\n  Most:\n    compute_platform: server\n"
        "    minimum_healthy_hosts: {type: FLEET_PERCENT, value: 100}\n",
        [(2, 3, "FLEET_PERCENT must be 0-99, not 100", "deployment_configs.Most")],
    ),
    "custom config without platform": (
        "deployment_configs:\n  Mine: {minimum_healthy_hosts: {type: HOST_COUNT, value: 1}}\n",
        [(2, 9, "missing required key 'compute_platform'", "deployment_configs.Mine.compute_platform")],
    ),
}


@pytest.mark.parametrize("text, expected", TOP_CASES.values(), ids=TOP_CASES.keys())
def test_problems_are_located(text: str, expected: list[tuple[int, int, str, str]]) -> None:
    assert problems_of(text) == expected


def test_all_problems_are_collected_in_file_order() -> None:
    text = (
        "hosts:\n  - {name: a, local: tru}\n"
        "applications:\n  hello:\n    environments: [staging]\n    deployment_groups:\n"
        "      staging: {targets: {hosts: [b]}, deployment_config: Nope}\n"
        "server: {listen: nowhere}\n"
    )
    found = problems_of(text)
    assert [(line, column) for line, column, _, _ in found] == [(2, 22), (7, 35), (7, 59), (8, 18)]
    assert [message.split(" ")[0] for _, _, message, _ in found] == ["expected", "unknown", "unknown", "bad"]


def test_problem_renders_as_file_line_column() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("server: {listen: 1}\n", filename="conf.yml")
    assert str(caught.value) == "conf.yml:1:18: expected a string, got an integer (server.listen)"


def test_full_file_round_trip() -> None:
    config = load_config(DATA / "full.yml")
    staging = DeploymentGroup(
        name="hello-stg",
        application="hello",
        environment="staging",
        platform=Platform.SERVER,
        deployment_type=DeploymentType.IN_PLACE,
        deployment_config="KeepOneHealthy",
        traffic_config=None,
        hosts=("staging-2", "staging-1"),
        load_balancer=LoadBalancer("haproxy", 8100, "/health", 2.0),
        alarms=AlarmConfiguration(
            True, True, ({"name": "cpu-high", "type": "cloudwatch"}, {"name": "errors", "type": "cloudwatch"})
        ),
        auto_rollback=AutoRollback(
            True, frozenset({AutoRollbackEvent.DEPLOYMENT_FAILURE, AutoRollbackEvent.DEPLOYMENT_STOP_ON_ALARM})
        ),
        file_exists_behavior="OVERWRITE",  # from the merge key
        ignore_application_stop_failures=True,
        deployers=("alice",),
        approvers=("bob", "carol"),
        required_approvals=1,
    )
    production = DeploymentGroup(
        name="hello-production",
        application="hello",
        environment="production",
        platform=Platform.SERVER,
        deployment_type=DeploymentType.BLUE_GREEN,
        deployment_config="CodeDeployDefault.HalfAtATime",
        traffic_config="Canary20Percent1Minute",
        target_tags={"env": "production"},
        load_balancer=LoadBalancer(
            "elbv2",
            extra={"listener_arn": "arn:aws:elasticloadbalancing:listener/1", "target_groups": ["blue", "green"]},
        ),
        auto_rollback=AutoRollback(True, frozenset({AutoRollbackEvent.DEPLOYMENT_FAILURE})),
        blue_green=BlueGreenOptions("STOP_DEPLOYMENT", 30, "TERMINATE", 5),
    )
    billing = DeploymentGroup(
        name="billing-prod",
        application="billing",
        environment="prod",
        platform=Platform.LAMBDA,
        deployment_type=DeploymentType.BLUE_GREEN,
        deployment_config="LambdaLinear25",
        traffic_config="LambdaLinear25",
        extra={"function_name": "billing", "alias": "live"},
    )
    expected = EngineConfig(
        source=str(DATA / "full.yml"),
        server=ServerSettings(
            "0.0.0.0", 9000, str(DATA / "state"), "https://deploy.example.com/", 30.5, ("alice", "bob")
        ),
        applications={
            "hello": Application(
                "hello",
                Platform.SERVER,
                ("staging", "production"),
                {"staging": staging, "production": production},
                revision=str(ROOT / "tests" / "data" / "examples" / "hello"),
                slack_channel="#deploys",
                github_repository="acme/hello",
                auto_deploy={"branch": "main", "to": "staging"},
                extra={"description": "the demo"},
            ),
            "billing": Application("billing", Platform.LAMBDA, ("prod",), {"prod": billing}),
        },
        hosts={
            "staging-1": Host("staging-1", {"env": "staging"}, True, 9101),
            "staging-2": Host("staging-2", {"env": "staging"}, True, 9102),
            "prod-1": Host("prod-1", {"env": "production", "zone": "a"}),
            "prod-2": Host("prod-2", {"env": "production", "zone": "b"}),
        },
        deployment_configs={
            "KeepOneHealthy": DeploymentConfig(
                "KeepOneHealthy", Platform.SERVER, MinimumHealthyHosts(MinimumHealthyHostsType.HOST_COUNT, 1)
            ),
            "Canary20Percent1Minute": DeploymentConfig(
                "Canary20Percent1Minute",
                Platform.SERVER,
                traffic_routing=TrafficRouting(TrafficRoutingType.CANARY, 20, 1),
            ),
            "LambdaLinear25": DeploymentConfig(
                "LambdaLinear25", Platform.LAMBDA, traffic_routing=TrafficRouting(TrafficRoutingType.LINEAR, 25, 2)
            ),
        },
        base_dir=str(DATA),
    )
    assert config == expected
    assert list(config.applications) == ["hello", "billing"]
    assert config.server.url == "https://deploy.example.com"
    assert [host.name for host in config.targets(production)] == ["prod-1", "prod-2"]


def test_example_config_loads_clean() -> None:
    config = load_config(DEFAULT_CONFIG_PATH)
    hello = config.application("hello")
    assert hello.environments == ("staging", "production")
    assert Path(hello.revision or "", "appspec.yml").is_file()
    staging, production = config.group("hello", "staging"), config.group("hello", "production")
    assert staging.deployment_config == "CodeDeployDefault.AllAtOnce"
    assert production.deployment_config == "CodeDeployDefault.OneAtATime"
    assert [h.name for h in config.targets(staging)] == ["staging-1", "staging-2"]
    assert [(h.name, h.port) for h in config.targets(production)] == [
        (f"production-{i}", 9200 + i) for i in range(1, 5)
    ]
    assert all(host.local for host in config.hosts.values())
    assert staging.auto_rollback.applies_to(AutoRollbackEvent.DEPLOYMENT_FAILURE)
    assert production.auto_rollback.applies_to(AutoRollbackEvent.DEPLOYMENT_FAILURE)
    assert staging.load_balancer is None and production.load_balancer is None
    assert (config.server.listen_host, config.server.listen_port) == ("127.0.0.1", 8080)
    assert config.server.data_dir == str(ROOT / "var")
    assert "load_balancer: {type: haproxy" in DEFAULT_CONFIG_PATH.read_text()  # the commented-out example


def test_example_users_and_roles_are_valid_once_uncommented() -> None:
    lines = DEFAULT_CONFIG_PATH.read_text().splitlines()
    start = lines.index("# users:")
    block = [line.removeprefix("# ") for line in lines[start:] if line.startswith("# ")]
    example = "\n".join(block[: next(i for i, line in enumerate(block) if line.startswith("..."))])
    config = parse_config(example + "\nserver: {admins: ['@release']}\n")
    assert list(config.users or {}) == ["alice", "bob"]
    assert config.members(config.server.admins) == ("alice", "bob")
    assert load_config(DEFAULT_CONFIG_PATH).users is None  # the embedded default keeps names free-form


def test_paths_resolve_against_base_dir_but_git_refs_stay() -> None:
    text = (
        "server: {data_dir: state}\napplications:\n  fn:\n    platform: lambda\n    revision: git:main\n"
        "    environments: [prod]\n    deployment_groups: {prod: {}}\n"
    )
    config = parse_config(text, base_dir="/srv/deploybot")
    assert config.server.data_dir == "/srv/deploybot/state"
    assert config.application("fn").revision == "git:main"
    group = config.group("fn", "prod")
    assert (group.deployment_type, group.deployment_config, group.traffic_config) == (
        DeploymentType.BLUE_GREEN,
        "CodeDeployDefault.LambdaAllAtOnce",
        "CodeDeployDefault.LambdaAllAtOnce",
    )


TLS_CASES = {
    "cert without key": (
        "server:\n  tls: {cert: server.pem}\n",
        [(2, 8, "missing required key 'key'", "server.tls.key")],
    ),
    "key without cert": (
        "server:\n  tls:\n    key: server.key\n",
        [(3, 5, "missing required key 'cert'", "server.tls.cert")],
    ),
    "unknown key": (
        "server:\n  tls: {cert: a.pem, key: k.pem, chain: c.pem}\n",
        [(2, 34, "unknown key 'chain'; expected one of: ca, cert, key", "server.tls.chain")],
    ),
    "not a mapping": ("server:\n  tls: a.pem\n", [(2, 8, "expected a mapping, got a string", "server.tls")]),
    "wrong types": (
        "server:\n  tls: {cert: 3, key: '', ca: [x]}\n",
        [
            (2, 15, "expected a string, got an integer", "server.tls.cert"),
            (2, 23, "expected a non-empty string", "server.tls.key"),
            (2, 31, "expected a string, got a list", "server.tls.ca"),
        ],
    ),
}


@pytest.mark.parametrize(("text", "expected"), TLS_CASES.values(), ids=TLS_CASES)
def test_server_tls_problems_are_located(text: str, expected: list[tuple[int, int, str, str]]) -> None:
    assert problems_of(text) == expected


def test_server_tls_paths_resolve_against_the_config_files_directory() -> None:
    text = "server:\n  listen: 0.0.0.0:8443\n  tls: {cert: tls/server.pem, key: /etc/deploybot/server.key}\n"
    server = parse_config(text, base_dir="/srv/deploybot").server
    assert server.tls == TlsSettings("/srv/deploybot/tls/server.pem", "/etc/deploybot/server.key", None)
    assert server.url == "https://0.0.0.0:8443"
    with_ca = parse_config("server:\n  tls: {cert: s.pem, key: s.key, ca: ../ca.pem}\n", base_dir="/srv/d").server
    assert with_ca.tls == TlsSettings("/srv/d/s.pem", "/srv/d/s.key", "/srv/ca.pem")
    assert parse_config("server: {tls: null}\n").server.tls is None  # like any key: null is absent
    assert parse_config("server: {}\n").server.url == "http://127.0.0.1:8080"


def test_empty_file_is_an_empty_config() -> None:
    config = parse_config("# nothing yet\n")
    assert (config.applications, config.hosts, config.server) == ({}, {}, ServerSettings())


def test_tag_selection_needs_every_tag() -> None:
    text = GROUP_PREFIX.replace(
        "tags: {env: staging}}\n  - {name: web-2", "tags: {env: staging, zone: a}}\n  - {name: web-2"
    )
    config = parse_config(text + "        targets: {tags: {env: staging, zone: a}}\n")
    assert [h.name for h in config.targets(config.group("HELLO", "Staging"))] == ["web-1"]


def test_unreadable_files() -> None:
    with pytest.raises(FileNotFoundError):
        load_config(DATA / "missing.yml")
    with pytest.raises(ConfigError) as caught:
        load_config(DATA / "latin1.yml")
    assert caught.value.problems == [Problem(str(DATA / "latin1.yml"), 1, 1, "not UTF-8 text (bad byte at offset 5)")]


# ---------------------------------------------------------------------------------------------------- people

# Six lines: the users and roles every PEOPLE case starts from.
PEOPLE = """\
users:
  alice: {slack: U0ALICE, github: Alice-GH}
  bob: {slack: W0BOB, aws_access_key_id: AKIABOB000000001}
  carol:
roles:
  release: [alice, bob]
"""
# Thirteen lines; the group keys of each case go on line 14, indented by 8 spaces.
PEOPLE_GROUP = (
    PEOPLE
    + """\
hosts: [{name: h1}]
applications:
  hello:
    environments: [staging]
    deployment_groups:
      staging:
        targets: {hosts: [h1]}
"""
)

PEOPLE_CASES = {
    "unknown deployer, with a hint": (
        PEOPLE_GROUP + "        deployers: [alice, bobb]\n",
        [(14, 28, "unknown user 'bobb' (did you mean 'bob'?)", f"{GROUP}.deployers[1]")],
    ),
    "unknown approver, listing the known users": (
        PEOPLE_GROUP + "        approvers: [zed]\n",
        [(14, 21, "unknown user 'zed'; known: alice, bob, carol", f"{GROUP}.approvers[0]")],
    ),
    "user names are matched exactly": (
        PEOPLE_GROUP + "        rollbackers: [Alice]\n",
        [(14, 23, "unknown user 'Alice' (did you mean 'alice'?)", f"{GROUP}.rollbackers[0]")],
    ),
    "unknown role": (
        PEOPLE_GROUP + "        deployers: ['@relase']\n",
        [(14, 21, "unknown role '@relase' (did you mean '@release'?)", f"{GROUP}.deployers[0]")],
    ),
    "a name listed twice": (
        PEOPLE_GROUP + "        rollbackers: [bob, bob]\n",
        [(14, 28, "'bob' is listed twice", f"{GROUP}.rollbackers[1]")],
    ),
    "required approvals count the role's members": (
        PEOPLE_GROUP + "        approvers: ['@release']\n        required_approvals: 3\n",
        [(15, 29, "3 approvals required but only 2 approvers", f"{GROUP}.required_approvals")],
    ),
    "admin that is not a user": (
        PEOPLE + "server: {admins: [carol, root]}\n",
        [(7, 26, "unknown user 'root'; known: alice, bob, carol", "server.admins[1]")],
    ),
    "the bootstrap admin is never listed": (
        PEOPLE + "server: {admins: [deploybot-admin]}\n",
        [
            (
                7,
                19,
                "'deploybot-admin' is the bootstrap admin: it may do everything and is never listed",
                "server.admins[0]",
            )
        ],
    ),
    "role member that is not a user": (
        "users: {alice: {}}\nroles:\n  ops: [alice, alicia]\n",
        [(3, 16, "unknown user 'alicia' (did you mean 'alice'?)", "roles.ops[1]")],
    ),
    "role inside a role": (
        "roles:\n  ops: [alice]\n  release: ['@ops']\n",
        [(3, 13, "a role lists users, not other roles: '@ops'", "roles.release[0]")],
    ),
    "role without a roles section": (
        "server: {admins: ['@ops']}\n",
        [(1, 19, "unknown role '@ops' (declare it under roles)", "server.admins[0]")],
    ),
    "bad role name": (
        "roles:\n  Release: []\n",
        [(2, 3, "bad role name 'Release': use lower-case letters, digits, '.', '_' or '-'", "roles.Release")],
    ),
    "bad user name": (
        "users:\n  Alice: {}\n",
        [(2, 3, "bad user name 'Alice': use lower-case letters, digits, '.', '_' or '-'", "users.Alice")],
    ),
    "reserved user name": (
        "users:\n  deploybot-admin: {}\n",
        [(2, 3, "'deploybot-admin' is reserved for the bootstrap admin (the API token)", "users.deploybot-admin")],
    ),
    "unknown user key": (
        "users:\n  alice: {slack_id: U0ALICE}\n",
        [(2, 11, "unknown key 'slack_id' (did you mean 'slack'?)", "users.alice.slack_id")],
    ),
    "user that is not a mapping": (
        "users:\n  alice: U0ALICE\n",
        [(2, 10, "expected a mapping, got a string", "users.alice")],
    ),
    "a Slack user-group id is not a user's": (
        "users:\n  alice: {slack: S0OPS}\n",
        [(2, 18, "'S0OPS' is not a Slack user id (U… or W…)", "users.alice.slack")],
    ),
    "bad GitHub login": (
        "users:\n  alice: {github: 'alice smith'}\n",
        [(2, 19, "'alice smith' is not a GitHub login", "users.alice.github")],
    ),
    "the secret instead of the access key id": (
        "users:\n  alice: {aws_access_key_id: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCY'}\n",
        [
            (
                2,
                30,
                "'wJalrXUtnFEMI/K7MDENG/bPxRfiCY' is not an access key id (letters and digits, like AKIA…; the secret "
                "never goes here)",
                "users.alice.aws_access_key_id",
            )
        ],
    ),
    "one Slack id for two users": (
        PEOPLE.replace("roles:", "  dave: {slack: W0BOB}\nroles:"),
        [(5, 17, "Slack user id 'W0BOB' is already used by user 'bob'", "users.dave.slack")],
    ),
    "one GitHub login for two users, in another case": (
        "users:\n  alice: {github: Alice-GH}\n  alicia: {github: alice-gh}\n",
        [(3, 20, "GitHub login 'alice-gh' is already used by user 'alice'", "users.alicia.github")],
    ),
    "one access key id for two users": (
        "users:\n  a: {aws_access_key_id: AKIA0001}\n  b: {aws_access_key_id: AKIA0001}\n",
        [(3, 26, "access key id 'AKIA0001' is already used by user 'a'", "users.b.aws_access_key_id")],
    ),
}


def _retired(key: str, replacement: str, example: str) -> str:
    return (
        f"{key!r} is retired: declare each person under users: with their Slack id "
        f"(users: {{alice: {{slack: {example}}}}}) and list their names under {replacement} "
        "(a Slack user group becomes a role: roles: {ops: [alice, bob]}, listed as '@ops')"
    )


# The Slack-only permission lists are gone: one rule (engine.may) over users and roles decides at every door.
SLACK_KEY_CASES = {
    "slack_deployers": (
        PEOPLE_GROUP + "        slack_deployers: [S0OPS, U0ALICE]\n",
        [(14, 9, _retired("slack_deployers", "deployers", "U0ALICE"), f"{GROUP}.slack_deployers")],
    ),
    "slack_approvers": (
        PEOPLE_GROUP + "        slack_approvers: [W0BOB]\n",
        [(14, 9, _retired("slack_approvers", "approvers", "W0BOB"), f"{GROUP}.slack_approvers")],
    ),
    "slack_rollbackers, a user group only, without a users section": (
        PEOPLE_GROUP.removeprefix(PEOPLE) + "        slack_rollbackers: [S0OPS]\n",
        [(8, 9, _retired("slack_rollbackers", "rollbackers", "U0123ABC"), f"{GROUP}.slack_rollbackers")],
    ),
    "all three at once, each where it is": (
        PEOPLE_GROUP
        + "        slack_deployers: [U0ALICE]\n        slack_approvers: []\n        slack_rollbackers: x\n",
        [
            (14, 9, _retired("slack_deployers", "deployers", "U0ALICE"), f"{GROUP}.slack_deployers"),
            (15, 9, _retired("slack_approvers", "approvers", "U0123ABC"), f"{GROUP}.slack_approvers"),
            (16, 9, _retired("slack_rollbackers", "rollbackers", "U0123ABC"), f"{GROUP}.slack_rollbackers"),
        ],
    ),
}


@pytest.mark.parametrize("text, expected", SLACK_KEY_CASES.values(), ids=SLACK_KEY_CASES.keys())
def test_retired_slack_permission_keys_say_what_to_write_instead(
    text: str, expected: list[tuple[int, int, str, str]]
) -> None:
    assert problems_of(text) == expected


@pytest.mark.parametrize("text, expected", PEOPLE_CASES.values(), ids=PEOPLE_CASES.keys())
def test_people_problems_are_located(text: str, expected: list[tuple[int, int, str, str]]) -> None:
    assert problems_of(text) == expected


def test_users_roles_and_permission_lists_round_trip() -> None:
    text = PEOPLE.replace("roles:\n", "roles:\n  ops: [carol]\n") + (
        "server: {admins: ['@ops']}\n"
        + PEOPLE_GROUP.removeprefix(PEOPLE)
        + "        deployers: [carol, '@release']\n        approvers: [alice]\n        rollbackers: [bob]\n"
    )
    config = parse_config(text)
    assert config.users == {
        "alice": User("alice", slack="U0ALICE", github="Alice-GH"),
        "bob": User("bob", slack="W0BOB", aws_access_key_id="AKIABOB000000001"),
        "carol": User("carol"),
    }
    assert config.roles == {"ops": ("carol",), "release": ("alice", "bob")}
    group = config.group("hello", "staging")
    assert (group.deployers, group.approvers, group.rollbackers) == (("carol", "@release"), ("alice",), ("bob",))
    assert config.server.admins == ("@ops",)
    assert config.members(group.deployers) == ("carol", "alice", "bob")
    assert config.members([*config.server.admins, "carol", "@nobody"]) == ("carol",)


@pytest.mark.parametrize(
    ("lookup", "key", "user"),
    [
        ("user_by_slack", "U0ALICE", "alice"),
        ("user_by_slack", "W0BOB", "bob"),
        ("user_by_slack", "u0alice", None),  # Slack ids are exact
        ("user_by_github", "Alice-GH", "alice"),
        ("user_by_github", "ALICE-gh", "alice"),  # GitHub logins ignore case
        ("user_by_github", "bob", None),
        ("user_by_access_key", "AKIABOB000000001", "bob"),
        ("user_by_access_key", "akiabob000000001", None),
    ],
)
def test_identity_lookups(lookup: str, key: str, user: str | None) -> None:
    config = parse_config(PEOPLE)
    assert getattr(config, lookup)(key) == user


def test_names_are_free_form_without_a_users_section() -> None:
    text = GROUP_PREFIX.replace(
        "hosts:\n", "roles: {oncall: [Pat.Smith, 'ci bot']}\nserver: {admins: [Root]}\nhosts:\n"
    )
    config = parse_config(text + "        targets: {hosts: [web-1]}\n        deployers: [anyone-at-all, '@oncall']\n")
    assert config.users is None
    assert config.server.admins == ("Root",)
    assert config.members(config.group("hello", "staging").deployers) == ("anyone-at-all", "Pat.Smith", "ci bot")
    assert (config.user_by_slack("U0ALICE"), config.user_by_github("x"), config.user_by_access_key("AKIA")) == (
        None,
        None,
        None,
    )


# ---------------------------------------------------------------------------------------------------- CLI


def deploybot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )


def test_cli_check_valid_file() -> None:
    result = deploybot("config", "check", "config/deploybot.example.yml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "config/deploybot.example.yml: valid"
    assert "applications  1: hello" in result.stdout
    assert "hello-production" in result.stdout and "hosts         6 (6 local)" in result.stdout


def test_cli_check_invalid_file_lists_located_problems() -> None:
    result = deploybot("config", "check", "tests/data/config/invalid.yml")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 4
    assert all(re.fullmatch(r"tests/data/config/invalid\.yml:\d+:\d+: .+ \([\w.\[\]-]+\)", line) for line in lines)
    assert lines[0] == (
        "tests/data/config/invalid.yml:3:3: unknown key 'heartbeat_timout' (did you mean 'heartbeat_timeout'?) "
        "(server.heartbeat_timout)"
    )
    assert result.stdout == ""


def test_cli_check_json() -> None:
    valid = json.loads(deploybot("config", "check", "--json", "config/deploybot.example.yml").stdout)
    assert valid["valid"] is True and valid["errors"] == []
    groups = valid["summary"]["applications"][0]["groups"]
    assert [(g["environment"], len(g["targets"])) for g in groups] == [("staging", 2), ("production", 4)]
    result = deploybot("config", "check", "--json", "tests/data/config/invalid.yml")
    invalid = json.loads(result.stdout)
    assert result.returncode == 1 and invalid["valid"] is False and invalid["summary"] is None
    assert invalid["errors"][0] == {
        "line": 3,
        "column": 3,
        "message": "unknown key 'heartbeat_timout' (did you mean 'heartbeat_timeout'?)",
        "path": "server.heartbeat_timout",
    }


def test_cli_check_missing_file() -> None:
    result = deploybot("config", "check", "tests/data/config/missing.yml")
    assert result.returncode == 2
    assert "cannot read tests/data/config/missing.yml" in result.stderr


ALARMS_BASE = """
hosts: [{name: h1, local: true, port: 9301}]
applications:
  app:
    platform: server
    environments: [prod]
    deployment_groups:
      prod:
        targets: {hosts: [h1]}
        load_balancer: %(lb)s
        watch_minutes: 0.5
        alarms:
          enabled: true
          poll_seconds: 0.5
          alarms:
%(alarms)s
"""


def _group_alarms(lb: str, alarms: str):
    config = parse_config(ALARMS_BASE % {"lb": lb, "alarms": alarms}, filename="a.yml")
    return config.group("app", "prod")


def test_deploybot_alarm_kinds_with_thresholds() -> None:
    group = _group_alarms(
        "{type: haproxy, port: 9400}",
        "            - {name: green-5xx, type: haproxy, max_5xx_percent: 2, window_seconds: 30}\n"
        "            - {name: probe, type: http, url: 'http://127.0.0.1:9301/health'}\n"
        "            - cpu-high\n",
    )
    assert group.watch_minutes == 0.5
    assert group.alarms.poll_seconds == 0.5
    assert group.alarms.alarms == (
        {
            "name": "green-5xx",
            "type": "haproxy",
            "max_5xx_percent": 2,
            "max_response_ms": None,
            "window_seconds": 30,
            "min_requests": 20,
        },
        {"name": "probe", "type": "http", "url": "http://127.0.0.1:9301/health", "expect_status": 200},
        {"name": "cpu-high", "type": "cloudwatch"},
    )


@pytest.mark.parametrize(
    ("lb", "alarm", "message"),
    [
        ("none", "{name: x, type: haproxy}", "needs the group's load_balancer to be haproxy"),
        ("none", "{name: x, type: http}", "missing required key 'url'"),
        ("none", "{name: x, type: http, url: 'http://a', max_5xx_percent: 3}", "does not apply to a http alarm"),
        ("none", "{name: x, type: datadog}", "datadog"),
    ],
)
def test_alarm_problems(lb: str, alarm: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _group_alarms(lb, f"            - {alarm}\n")
    assert message in str(info.value)


# ---------------------------------------------------------------------------------------------------- hostile files


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "hosts:\n  - {name: h1, local: !!bool x}\n",
            "2:23: 'x' is not a valid !!bool value: fix it or remove the tag",
        ),
        ("server:\n  listen: !!timestamp x\n", "2:11: 'x' is not a valid !!timestamp value: fix it or remove the tag"),
        ("x-a: !!python/object/apply:os.system [id]\n", "1:6: unsupported YAML tag !!python/object/apply:os.system"),
        ("server: " + "[" * 5000 + "]" * 5000 + "\n", "1:109: the config file nests deeper than 100 levels"),
        ("server:\n  heartbeat_timeout: .inf\n", "2:22: expected a finite number, got .inf (server.heartbeat_timeout)"),
        ("server:\n  heartbeat_timeout: 1.0e+308\n", "2:22: expected a value between 1 and 86400, got 1e+308"),
        ("server:\n  heartbeat_timeout: .nan\n", "2:22: expected a finite number, got .nan (server.heartbeat_timeout)"),
    ],
    ids=["bool-tag", "timestamp-tag", "python-tag", "5000-deep", "infinite-number", "huge-number", "nan"],
)
def test_cli_check_refuses_hostile_configs_with_file_line_col(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "deploybot.yml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "bot", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(f"{path}:{expected}"), result.stderr
    assert "Traceback" not in result.stderr


def test_numbers_without_a_ceiling_of_their_own_get_the_default_one() -> None:
    text = (
        "hosts: [{name: h1}]\ndeployment_configs:\n  c: {compute_platform: server,\n"
        "      minimum_healthy_hosts: {type: HOST_COUNT, value: 99999999999999999999999}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, filename="f.yml")
    assert [(p.line, p.message) for p in caught.value.problems] == [
        (4, "expected a value between 0 and 1000000000, got 99999999999999999999999")
    ]
