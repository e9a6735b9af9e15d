"""core.appspec against the corpus in tests/data/appspec: every valid file's normalized spec, every invalid file's
exact problem positions (1-based line:column) and a fragment of each message, in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.core.appspec import (
    EcsAppSpec,
    FileMapping,
    HookScript,
    LambdaAppSpec,
    Permission,
    SELinuxContext,
    ServerAppSpec,
    normalized,
    parse_appspec,
)
from engine.core.errors import AppSpecInvalid
from engine.core.model import LifecycleEvent, Platform

CORPUS = Path(__file__).parent / "data" / "appspec"
EXAMPLE = Path(__file__).parent.parent / "examples" / "hello" / "appspec.yml"
HOOKABLE = "hooks can run at: ApplicationStop, BeforeInstall"


def hook(location: str, timeout: int = 3600, runas: str | None = None) -> dict[str, object]:
    return {"location": location, "timeout": timeout, "runas": runas}


def perm(obj: str, **given: object) -> dict[str, object]:
    """A normalized permission: the agent's defaults, overridden by ``given`` (``except_`` for ``except``)."""
    defaults: dict[str, object] = {"object": obj, "pattern": "**", "except": [], "type": ["directory", "file"]}
    defaults |= {"owner": None, "group": None, "mode": None, "acls": [], "context": None}
    given = {("except" if key == "except_" else key): value for key, value in given.items()}
    return defaults | given


def server(**given: object) -> dict[str, object]:
    spec: dict[str, object] = {"version": 0.0, "os": "linux", "files": [], "permissions": []}
    return spec | {"file_exists_behavior": None, "hooks": {}} | given


def files(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"source": source, "destination": destination} for source, destination in pairs]


DOCS_LAMBDA = {
    "version": 0.0,
    "function_name": "myLambdaFunction",
    "alias": "myLambdaFunctionAlias",
    "current_version": "1",
    "target_version": "2",
    "hooks": {
        "BeforeAllowTraffic": ["LambdaFunctionToValidateBeforeTrafficShift"],
        "AfterAllowTraffic": ["LambdaFunctionToValidateAfterTrafficShift"],
    },
}
DOCS_ECS = {
    "version": 0.0,
    "task_definition": "arn:aws:ecs:us-east-1:111222333444:task-definition/my-task-definition-family-name:1",
    "container_name": "SampleApplicationName",
    "container_port": 80,
    "platform_version": "LATEST",
    "network_configuration": {
        "awsvpcConfiguration": {
            "subnets": ["subnet-1234abcd", "subnet-5678abcd"],
            "securityGroups": ["sg-12345678"],
            "assignPublicIp": "ENABLED",
        }
    },
    "capacity_provider_strategy": [
        {"capacityProvider": "FARGATE_SPOT", "base": 1, "weight": 2},
        {"capacityProvider": "FARGATE", "base": 0, "weight": 1},
    ],
    "hooks": {
        "BeforeInstall": ["LambdaFunctionToValidateBeforeInstall"],
        "AfterInstall": ["LambdaFunctionToValidateAfterInstall"],
        "AfterAllowTestTraffic": ["LambdaFunctionToValidateAfterTestTrafficStarts"],
        "BeforeAllowTraffic": ["LambdaFunctionToValidateBeforeAllowingProductionTraffic"],
        "AfterAllowTraffic": ["LambdaFunctionToValidateAfterAllowingProductionTraffic"],
    },
}
ECS_WEB = {
    "version": 0.0,
    "task_definition": "arn:aws:ecs:us-east-1:111222333444:task-definition/web:2",
    "container_name": "web",
    "container_port": 80,
    "platform_version": None,
    "network_configuration": None,
    "capacity_provider_strategy": [],
    "hooks": {},
}

VALID: dict[str, dict[str, object]] = {
    "server/docs_example.yml": server(
        files=files(("Config/config.txt", "/webapps/Config"), ("source", "/webapps/myApp")),
        hooks={
            "BeforeInstall": [hook("Scripts/UnzipResourceBundle.sh"), hook("Scripts/UnzipDataBundle.sh")],
            "AfterInstall": [hook("Scripts/RunResourceTests.sh", 180)],
            "ApplicationStart": [hook("Scripts/RunFunctionalTests.sh", 3600)],
            "ValidateService": [hook("Scripts/MonitorService.sh", 3600, "codedeployuser")],
        },
    ),
    "server/docs_permissions.yml": server(
        files=files(
            ("./my-file-1.txt", "/tmp/my-app"),
            ("./my-file-2.txt", "/tmp/my-app"),
            ("./my-file-3.txt", "/tmp/my-app"),
            ("./my-folder-1", "/tmp/my-app/my-folder-1"),
            ("./my-folder-2", "/tmp/my-app/my-folder-2"),
        ),
        permissions=[
            perm("/tmp/my-app", pattern="*-3.txt", owner="adm", group="wheel", mode="464", type=["file"]),
            perm(
                "/tmp/my-app", pattern="*.txt", except_=["my-file-3.txt"], owner="ec2-user", mode="444", type=["file"]
            ),
            perm(
                "/tmp/my-app/my-folder-1",
                except_=["my-file-4.txt", "my-file-5.txt"],
                owner="operator",
                mode="646",
                type=["file"],
            ),
            perm("/tmp/my-app/my-folder-2", except_=["my-file-8.txt"], owner="ec2-user", mode="777", type=["file"]),
            perm(
                "/tmp/my-app",
                pattern="*my-folder*",
                except_=["tmp/my-app/my-folder-2/my-folder-3"],
                owner="ec2-user",
                mode="555",
                type=["directory"],
            ),
            perm("/tmp/my-app/my-folder-2", group="wheel", mode="564", type=["directory"]),
        ],
    ),
    "server/docs_acls_context.yml": server(
        files=files(("wordpress", "/var/www/html/WordPress")),
        permissions=[
            perm(
                "/var/www/html/WordPress",
                except_=["/var/www/html/WordPress/ReadMe.txt"],
                owner="bob",
                group="writers",
                mode="644",
                acls=["u:mary:rw", "u:sam:rw", "m::rw"],
                context={"name": "unconfined_u", "type": "httpd_sys_content_t", "range": "s0"},
                type=["file"],
            ),
            perm(
                "/var/www/html/WordPress/uploads",
                mode="2775",
                acls=["d:u::rwx", "default:group:writers:7", "g:writers:r-x"],
                context={"name": "system_u", "type": "httpd_sys_rw_content_t", "range": "s0-s1:c0.c3,c7"},
                type=["directory"],
            ),
        ],
    ),
    "server/docs_windows_files.yml": server(
        os="windows",
        files=files(("\\", "c:\\temp")),
        file_exists_behavior="OVERWRITE",
        hooks={"AfterInstall": [hook("scripts\\configure.ps1", 900)]},
    ),
    "server/docs_files_windows.yml": server(
        os="windows",
        files=files(
            (".\\my-folder\\my-file-2.txt", "c:\\temp\\my-folder"),
            (".\\my-folder\\my-file-3.txt", "c:\\temp\\my-folder"),
        ),
    ),
    "server/tab_indented.json": server(
        files=files(("app", "/opt/app")),
        hooks={"ApplicationStart": [hook("scripts/start.sh", 60, "app")]},
        file_exists_behavior="RETAIN",
    ),
    "server/minimal.yml": server(),
    "server/yaml_quirks.yml": server(
        files=files(("/", "/srv/app/")),
        hooks={"AfterInstall": [hook("scripts/migrate.sh", 300, "deploy")]},
        permissions=[
            perm("/srv/app/conf", mode="0644"),
            perm("/srv/app/bin", mode="007", type=["file"]),
            perm("/srv/app/sbin", mode="4755"),
        ],
    ),
    "lambda/docs_example.yml": DOCS_LAMBDA,
    "lambda/docs_example.json": DOCS_LAMBDA,
    "lambda/structure_lowercase.yml": {
        "version": 0.0,
        "function_name": "my-function",
        "alias": "live",
        "current_version": "3",
        "target_version": "4",
        "hooks": {"BeforeAllowTraffic": ["CheckBeforeShift"]},
    },
    "lambda/one_function_both_hooks.yml": {
        "version": 0.0,
        "function_name": "api",
        "alias": "prod",
        "current_version": "7",
        "target_version": "12",
        "hooks": {"BeforeAllowTraffic": ["SmokeTest"], "AfterAllowTraffic": ["SmokeTest"]},
    },
    "ecs/docs_example.yml": DOCS_ECS,
    "ecs/docs_example.json": DOCS_ECS,
    "ecs/minimal.yml": ECS_WEB,
    "ecs/structure_lowercase.yml": ECS_WEB
    | {
        "task_definition": "arn:aws:ecs:eu-west-1:123456789012:task-definition/web:7",
        "container_port": 8080,
        "network_configuration": {
            "awsvpcConfiguration": {"subnets": ["subnet-1"], "securityGroups": ["sg-1"], "assignPublicIp": "DISABLED"}
        },
        "hooks": {"AfterAllowTestTraffic": ["RunIntegrationTests"]},
    },
}

Expected = tuple[int, int, str | tuple[str, ...]]
"""line, column, and a fragment (or several) of the message of one problem."""

INVALID: dict[str, list[Expected]] = {
    "server/empty.yml": [(1, 1, "application specification file was empty")],
    "server/version_quoted.yml": [(1, 10, ("invalid version value (0.0)", "write `version: 0.0` without quotes"))],
    "server/version_missing.yml": [(2, 1, "Add `version: 0.0`")],
    "server/os_case.yml": [(2, 5, "unsupported operating system (Linux)")],
    "server/reserved_hooks.yml": [
        (4, 3, "DownloadBundle is run by CodeDeploy itself"),
        (6, 3, "Install is run by CodeDeploy itself"),
        (8, 3, "BlockTraffic is run by CodeDeploy itself"),
        (10, 3, f"AllowTraffic is run by CodeDeploy itself and cannot run scripts; {HOOKABLE}"),
    ],
    "server/unknown_hook.yml": [
        (4, 3, "unknown lifecycle event 'BeforeInstal' (did you mean 'BeforeInstall'?)"),
        (6, 3, "unknown lifecycle event 'AfterDeploy'; hooks can run at"),
    ],
    "server/relative_destination.yml": [
        (5, 18, "destination 'opt/app' is not a fully qualified path"),
        (7, 18, "destination '~/conf' is not a fully qualified path"),
    ],
    "server/mode_0755.yml": [
        (
            5,
            11,
            ("octal number 493", "mode (493) in the application specification file contains an invalid character (9)"),
        ),
    ],
    "server/mode_0775.yml": [(5, 11, 'Quote it (mode: "0775") or drop the leading zero (mode: 775)')],
    "server/mode_0644.yml": [(5, 11, "octal number 420. The agent would set mode 420 instead")],
    "server/mode_invalid.yml": [
        (5, 11, "length of a permissions mode (12345)"),
        (7, 11, "permissions mode (0855) in the application specification file contains an invalid character (8)"),
        (9, 11, "invalid character (r)"),
        (11, 11, "mode must be an octal number such as 644"),
    ],
    "server/timeout_total.yml": [
        (4, 3, "timeouts of the scripts in BeforeInstall add up to 3601 seconds"),
        (10, 3, "ValidateService add up to 7200 seconds"),
    ],
    "server/timeout_invalid.yml": [
        (6, 16, "invalid timeout value was provided"),
        (8, 16, "(got -5)"),
        (10, 16, "(got abc)"),
        (12, 16, "(got 1.5)"),
    ],
    "server/duplicate_destination.yml": [
        (6, 13, ("two source files named config/app.conf and defaults/app.conf", "destination (/etc/myapp/app.conf)")),
    ],
    "server/windows_duplicate.yml": [(7, 13, "for the same destination (C:\\Temp\\App\\Web.config)")],
    "server/permission_type.yml": [
        (5, 18, "object type not supported for permissions (link)"),
        (7, 11, "type must be a list"),
        (9, 11, "type must list file, directory or both"),
    ],
    "server/acls.yml": [
        (6, 9, "Use mode to set the base acl entry (u::rw)"),
        (7, 9, "Use mode to set the base acl entry (g::r)"),
        (8, 9, "Invalid acl entry (o:bob:r)"),
        (9, 9, "(ACL) named u:bob:rwz in the application specification file contains an invalid character (z)"),
        (10, 9, "Invalid acl entry (d:d:u:bob:rw)"),
        (11, 9, "Invalid acl entry (x:bob:rw)"),
        (12, 9, "Invalid acl entry (toolong:a:b:c:d)"),
        (13, 9, "Invalid acl entry (m:bob:rw)"),
    ],
    "server/context.yml": [
        (5, 5, "invalid context type ({user: unconfined_u, range: s0})"),
        (11, 14, "SELinux range specified (s0:c1024)"),
        (13, 31, "duplicate categories"),
        (15, 31, "the high sensitivity is lower than the low one"),
        (17, 31, "invalid sensitivity x0"),
        (19, 33, "give the SELinux user once"),
    ],
    "server/file_exists_behavior.yml": [
        (3, 23, ("invalid file_exists_behavior value (overwrite)", "write `file_exists_behavior: OVERWRITE`")),
    ],
    "server/file_exists_behavior_unknown.yml": [(3, 23, "one of DISALLOW,OVERWRITE,RETAIN")],
    "server/windows_permissions.yml": [
        (7, 18, "destination '/inetpub/conf' is not a fully qualified path; write an absolute path such as c:\\temp"),
        (8, 1, "specifies file permissions, but the deployment is targeting one or more Windows Server instances"),
    ],
    "server/tabs.yml": [(4, 1, "found character '\\t' that cannot start any token; tabs cannot indent YAML")],
    "server/yaml_syntax.yml": [(6, 6, "expected ',' or ']', but got ':' (the construct started at line 5, column 18)")],
    "server/missing_required.yml": [
        (4, 5, "specifies a destination file, but no source file"),
        (5, 5, "specifies only a source file (lonely.txt)"),
        (7, 17, "specifies only a source file (app)"),
        (10, 7, "specifies a script with no location value"),
        (11, 17, "specifies a script with no location value"),
        (13, 5, "has no object value"),
        (14, 13, "has no object value"),
    ],
    "server/shapes.yml": [
        (4, 3, "files must be a list"),
        (8, 5, "the scripts of BeforeInstall must be a list"),
        (10, 7, "a script of AfterInstall must be a mapping"),
        (11, 14, "permissions must be a list"),
    ],
    "server/unknown_keys.yml": [
        (3, 1, "unknown key 'file' in the AppSpec file (did you mean 'files'?)"),
        (9, 7, "unknown key 'timout' in a script of AfterInstall (did you mean 'timeout'?)"),
        (10, 7, "is given with 'runas'"),
        (13, 5, "(did you mean 'mode'?)"),
        (14, 1, "validate this file with platform lambda or ecs"),
    ],
    "server/duplicate_keys.yml": [(6, 3, "'AfterInstall' is given twice in hooks"), (8, 1, "'os' is given twice")],
    "server/many_problems.yml": [
        (2, 10, "invalid version value (1.0)"),
        (3, 5, "unsupported operating system (ubuntu)"),
        (6, 18, "not a fully qualified path"),
        (8, 3, "Install is run by CodeDeploy itself"),
        (12, 11, "octal number 509"),
        (13, 23, "write `file_exists_behavior: RETAIN`"),
    ],
    "lambda/invalid_versions.yml": [
        (8, 25, "CurrentVersion must be a valid positive integer"),
        (9, 24, "TargetVersion must be a valid positive integer"),
    ],
    "lambda/missing_properties.yml": [
        (5, 7, "Properties needs 'CurrentVersion'"),
        (5, 7, "Properties needs 'TargetVersion'"),
        (5, 7, "Properties needs 'Alias'"),
        (6, 15, "Name must not be empty"),
        (7, 9, "unknown key 'currentVersion' in the Properties of fn (did you mean 'CurrentVersion'?)"),
    ],
    "lambda/two_resources.yml": [(6, 5, "Only 1 Lambda resource (Function) supported in a deployment")],
    "lambda/bad_hooks.yml": [
        (7, 5, "The hooks must be one of the Lambda supported hooks: [BeforeAllowTraffic AfterAllowTraffic]"),
        (8, 25, "Value cannot be empty for hook: BeforeAllowTraffic"),
        (9, 5, "(did you mean 'AfterAllowTraffic'?)"),
        (11, 5, "AfterAllowTraffic is listed twice"),
    ],
    "lambda/hooks_as_mapping.yml": [(7, 3, "Hooks must be a list")],
    "lambda/wrong_type.yml": [
        (1, 10, "write `version: 0.0` without quotes"),
        (4, 13, "Lambda resource Type must be AWS::Lambda::Function, not AWS::Lambda::Alias"),
        (6, 1, "unknown key 'os' in the AppSpec file (it belongs to server AppSpec files"),
    ],
    "lambda/no_resources.yml": [(1, 1, "the AppSpec file needs 'Resources'")],
    "ecs/container_port.yml": [
        (9, 26, "ContainerPort must be a port number from 1 to 65535, not '80' (write 80 without")
    ],
    "ecs/missing_load_balancer_info.yml": [
        (6, 25, "TaskDefinition must not be empty"),
        (7, 9, "LoadBalancerInfo needs 'ContainerPort'"),
    ],
    "ecs/network_partial.yml": [
        (11, 11, "All or none of the settings under NetworkConfiguration must be specified: add SecurityGroups"),
        (12, 35, "Subnets cannot be empty strings"),
        (13, 29, "AssignPublicIp must be ENABLED or DISABLED, not enabled"),
    ],
    "ecs/capacity_base.yml": [
        (14, 19, "only one capacity provider may have a Base, and FARGATE already has one"),
        (17, 13, "a capacity provider needs 'CapacityProvider'"),
    ],
    "ecs/two_resources.yml": [(8, 5, "Only 1 ECS resource (TargetService) supported in a deployment")],
    "ecs/bad_hooks.yml": [
        (9, 5, "The hooks must be one of the ECS supported hooks: [BeforeInstall AfterInstall AfterAllowTestTraffic"),
        (10, 5, "ECS supported hooks"),
        (11, 5, "each hook is a map with a single key"),
    ],
    "ecs/wrong_resource.yml": [
        (3, 5, "the ECS resource must be named TargetService, not 'Service'"),
        (4, 13, "validate it with platform lambda"),
        (8, 9, "unknown key 'DesiredCount'"),
    ],
}

# A file validated for another platform than its folder's: the message points the user to the right one.
CROSS_PLATFORM: dict[tuple[str, Platform], list[Expected]] = {
    ("lambda/docs_example.yml", Platform.SERVER): [
        (2, 1, "Add `os: linux`"),
        (3, 1, "unknown key 'Resources' in the AppSpec file (it belongs to Lambda and ECS AppSpec files"),
        (11, 1, "unknown key 'Hooks' in the AppSpec file (did you mean 'hooks'?)"),
    ],
    ("server/minimal.yml", Platform.ECS): [
        (2, 1, "the AppSpec file needs 'Resources'"),
        (3, 1, "unknown key 'os' in the AppSpec file (it belongs to server AppSpec files"),
    ],
    ("server/empty.yml", Platform.LAMBDA): [(1, 1, "The AppSpec file is empty")],
}


def platform_of(name: str) -> Platform:
    return Platform(name.split("/")[0])


def problems_of(name: str, platform: Platform) -> list[tuple[int, int, str]]:
    with pytest.raises(AppSpecInvalid) as caught:
        parse_appspec((CORPUS / name).read_text(encoding="utf-8"), platform=platform, filename=name)
    assert all(problem.file == name for problem in caught.value.problems)
    return [(problem.line, problem.column, problem.message) for problem in caught.value.problems]


def assert_problems(found: list[tuple[int, int, str]], expected: list[Expected]) -> None:
    """One expected entry per problem, in order: the exact position, and fragment(s) of its message."""
    assert [(line, column) for line, column, _ in found] == [(line, column) for line, column, _ in expected]
    for (_, _, message), (_, _, fragments) in zip(found, expected, strict=True):
        for fragment in (fragments,) if isinstance(fragments, str) else fragments:
            assert fragment in message, (fragment, message)


def test_every_corpus_file_is_in_a_table() -> None:
    on_disk = {str(path.relative_to(CORPUS)) for path in CORPUS.rglob("*") if path.is_file()}
    assert on_disk == set(VALID) | set(INVALID)
    assert len(on_disk) >= 30


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_file_normalizes(name: str) -> None:
    spec = parse_appspec((CORPUS / name).read_text(encoding="utf-8"), platform=platform_of(name), filename=name)
    assert normalized(spec) == VALID[name]


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_file_reports_every_problem_where_it_is(name: str) -> None:
    assert_problems(problems_of(name, platform_of(name)), INVALID[name])


@pytest.mark.parametrize(("name", "platform"), sorted(CROSS_PLATFORM))
def test_file_for_another_platform_says_so(name: str, platform: Platform) -> None:
    assert_problems(problems_of(name, platform), CROSS_PLATFORM[(name, platform)])


def test_server_values_are_typed() -> None:
    spec = parse_appspec((CORPUS / "server/yaml_quirks.yml").read_text())
    assert isinstance(spec, ServerAppSpec)
    assert spec.files == (FileMapping("/", "/srv/app/"),)
    assert spec.hooks == {
        LifecycleEvent.AFTER_INSTALL: (HookScript("scripts/migrate.sh", 300, "deploy", sudo=True),),
    }
    assert spec.permissions[1] == Permission("/srv/app/bin", mode="007", types=frozenset({"file"}))
    context = parse_appspec((CORPUS / "server/docs_acls_context.yml").read_text()).permissions[0].context
    assert context == SELinuxContext("httpd_sys_content_t", "unconfined_u", "s0")


def test_lambda_and_ecs_values_are_typed() -> None:
    lambda_spec = parse_appspec((CORPUS / "lambda/structure_lowercase.yml").read_text(), platform=Platform.LAMBDA)
    assert lambda_spec == LambdaAppSpec(
        "my-function", "live", "3", "4", {LifecycleEvent.BEFORE_ALLOW_TRAFFIC: ("CheckBeforeShift",)}
    )
    ecs_spec = parse_appspec((CORPUS / "ecs/docs_example.yml").read_text(), platform="ecs")
    assert isinstance(ecs_spec, EcsAppSpec)
    assert ecs_spec.container_port == 80
    assert list(ecs_spec.hooks) == [
        LifecycleEvent.BEFORE_INSTALL,
        LifecycleEvent.AFTER_INSTALL,
        LifecycleEvent.AFTER_ALLOW_TEST_TRAFFIC,
        LifecycleEvent.BEFORE_ALLOW_TRAFFIC,
        LifecycleEvent.AFTER_ALLOW_TRAFFIC,
    ]


def test_hello_example_is_valid() -> None:
    spec = normalized(parse_appspec(EXAMPLE.read_text()))
    assert list(spec["hooks"]) == ["ApplicationStop", "BeforeInstall", "ApplicationStart", "ValidateService"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [(1, 1, "was empty")]),
        ("~\n", [(1, 1, "was empty")]),
        ("- version: 0.0\n", [(1, 1, "the AppSpec file must be a mapping")]),
        ("version: 0.0\n---\nos: linux\n", [(2, 1, "expected a single document in the stream")]),
        ("version: 0.0\nos: linux\x07\n", [(2, 10, "special characters are not allowed")]),
        ("version: 0.0\nos: !custom linux\n", [(2, 5, "unsupported YAML tag !custom")]),
        ("version: no\nos: linux\n", [(1, 10, "invalid version value (no)")]),
        ("version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n    - location: [a]\n", [(5, 17, "must be text")]),
        ("version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n    - {location: a, sudo: 1}\n", [(5, 27, "sudo must be")]),
    ],
)
def test_odd_documents(text: str, expected: list[Expected]) -> None:
    with pytest.raises(AppSpecInvalid) as caught:
        parse_appspec(text)
    assert_problems([(p.line, p.column, p.message) for p in caught.value.problems], expected)


def test_merge_keys_and_version_zero_are_accepted() -> None:
    text = (
        "version: 0\nos: linux\nhooks:\n  AfterInstall:\n    - &s {location: a.sh, timeout: 5}\n"
        "  ValidateService:\n    - <<: *s\n      location: b.sh\n"
    )
    spec = normalized(parse_appspec(text))
    assert spec["hooks"] == {"AfterInstall": [hook("a.sh", 5)], "ValidateService": [hook("b.sh", 5)]}


@pytest.mark.parametrize(
    ("location", "column", "fragment"),
    [
        ("../../victim", 17, "hook location '../../victim' has a '..' segment"),
        ("scripts/../../victim", 17, "has a '..' segment"),
        ("'scripts\\..\\..\\victim'", 17, "has a '..' segment"),
        ("/etc/cron.daily/x", 17, "hook location '/etc/cron.daily/x' is an absolute path"),
        ("'C:\\Windows\\x.ps1'", 17, "is an absolute path"),
    ],
)
def test_a_hook_location_that_could_leave_the_revision_is_refused_at_its_line_and_column(
    location: str, column: int, fragment: str
) -> None:
    text = (
        f"version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n    - location: scripts/ok.sh\n    - location: {location}\n"
    )
    with pytest.raises(AppSpecInvalid) as caught:
        parse_appspec(text, filename="appspec.yml")
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.column) == ("appspec.yml", 6, column)
    assert fragment in problem.message and "such as scripts/start.sh" in problem.message
    assert str(problem).startswith(f"appspec.yml:6:{column}: ")


def test_names_with_dots_inside_the_revision_are_still_hook_locations() -> None:
    text = "version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n    - location: scripts/..hidden/run..sh\n"
    spec = normalized(parse_appspec(text))
    assert spec["hooks"] == {"AfterInstall": [hook("scripts/..hidden/run..sh")]}


def test_validation_returns_the_first_50_problems_and_counts_the_rest() -> None:
    text = "version: 0.0\nos: linux\n" + "".join(f"typo{n}: x\n" for n in range(120))
    with pytest.raises(AppSpecInvalid) as caught:
        parse_appspec(text)
    problems = caught.value.problems
    assert len(problems) == 51
    assert [p.line for p in problems[:50]] == list(range(3, 53))
    assert "unknown key 'typo0'" in problems[0].message
    assert (problems[50].line, problems[50].column) == (53, 1)  # where the first one left out is
    assert problems[50].message == "and 70 more problems (only the first 50 are listed)"
