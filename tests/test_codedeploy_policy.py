"""Who may call what on the CodeDeploy API: boto3's real client, one per access key, against the real app.

Each access key is a deploybot user (the config's ``users.NAME.aws_access_key_id``, else a declared user its
DEPLOYBOT_AWS_KEYS ACTOR names), and every operation that changes something asks ``engine.may``. The tables below
are operation x caller x environment: an allowed call really happens (the deployment exists, stops, resumes, the
configuration is created, ...) and its audit entries name the caller's user; a refused one raises
``AccessDeniedException`` with who, what, where and the rule, and changes nothing but one ``access.denied`` entry.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from test_codedeploy import Served, call, serving

from bot.codedeploy.access import Target, key_problems
from bot.codedeploy.operations import CodeDeployOperations
from bot.codedeploy.sigv4 import parse_keys
from engine import Action
from engine.core.config.parse import parse_config
from engine.core.configs import DeploymentConfig, MinimumHealthyHosts, MinimumHealthyHostsType
from engine.core.model import Platform
from engine.core.requests import DeployRequest

HOSTS = """
hosts:
  - {name: s1, port: 9901, tags: {env: staging}}
  - {name: s2, port: 9902, tags: {env: staging}}
  - {name: p1, port: 9903, tags: {env: production}}
  - {name: p2, port: 9904, tags: {env: production}}
"""
PEOPLE = """
server: {data_dir: var, admins: [ada]}
users:
  ada: {aws_access_key_id: AKIAADMIN}       # an admin; its key's ACTOR says otherwise, the config wins
  dee: {aws_access_key_id: AKIADEPLOYER}    # deploys to shop-production through @release
  una: {aws_access_key_id: AKIAUSER}        # declared, listed nowhere
  rob: {}                                   # no key id: a key whose ACTOR is rob acts as rob
roles:
  release: [dee]
"""
# app: staging and production with no lists (anyone; nobody but admins); shop: production with deployers and
# rollbackers set.
GROUPS = """
applications:
  app:
    platform: server
    revision: rev-a
    environments: [staging, production]
    deployment_groups:
      staging: {%(staging)s, targets: {tags: {env: staging}}}
      production: {%(production)s, targets: {tags: {env: production}}}
  shop:
    platform: server
    revision: rev-a
    environments: [production]
    deployment_groups:
      production:
        {%(listed)s, targets: {tags: {env: production}}, deployers: [rob, '@release'], rollbackers: ['@release']}
"""
IN_PLACE = "deployment_type: in-place, deployment_config: CodeDeployDefault.AllAtOnce"
BLUE_GREEN = (  # the router is never started here (assemble_deployer without routers): the port is only a name
    "deployment_type: blue-green, deployment_config: CodeDeployDefault.AllAtOnce, "
    "load_balancer: {type: haproxy, port: %d}, "
    "blue_green: {ready_action: CONTINUE_DEPLOYMENT, termination_wait_minutes: 30}"
)
CONFIG = PEOPLE + HOSTS + GROUPS % {"staging": IN_PLACE, "production": IN_PLACE, "listed": IN_PLACE}
BLUE_GREEN_CONFIG = (
    PEOPLE
    + HOSTS
    + GROUPS % {"staging": BLUE_GREEN % 9910, "production": BLUE_GREEN % 9911, "listed": BLUE_GREEN % 9912}
)
KEYS = ",".join(
    (
        "AKIAADMIN:secret-a:ci-admin",
        "AKIADEPLOYER:secret-d:dee",
        "AKIAUSER:secret-u:una",
        "AKIAROB:secret-r:rob",
        "AKIAUNMAPPED:secret-x:mallory",
    )
)


@dataclass(frozen=True)
class Caller:
    key: str
    secret: str
    user: str | None  # None: the key maps to no deploybot user


CALLERS = {
    "admin": Caller("AKIAADMIN", "secret-a", "ada"),
    "deployer": Caller("AKIADEPLOYER", "secret-d", "dee"),
    "user": Caller("AKIAUSER", "secret-u", "una"),
    "unmapped": Caller("AKIAUNMAPPED", "secret-x", None),
}
ENVIRONMENTS = {  # the matrix's environment -> (application, environment, group)
    "staging": ("app", "staging", "app-staging"),
    "production": ("app", "production", "app-production"),
    "listed": ("shop", "production", "shop-production"),
}
UNMAPPED = (
    "access key AKIAUNMAPPED is not mapped to a deploybot user: give a user of the config's users section "
    "aws_access_key_id: AKIAUNMAPPED, or name a declared user as its ACTOR in DEPLOYBOT_AWS_KEYS"
)
ENGINE = "deploybot"  # the actor of the engine's own audit entries (a deployment finishing, a rollback starting)
ADMINS_ONLY = "only admins may administer deploybot (server.admins)"

# (environment, action) -> (the rule that decides for the callers who are not admins, the users it allows)
RULES: dict[tuple[str, Action], tuple[str, frozenset[str]]] = {
    ("staging", Action.DEPLOY): ("app-staging has no deployers list: anyone may deploy", frozenset({"dee", "una"})),
    ("staging", Action.CONTROL): (
        "app-staging has no deployers list: anyone may control deployments",
        frozenset({"dee", "una"}),
    ),
    ("staging", Action.ROLLBACK): (
        "app-staging has no rollbackers or deployers list: anyone may roll back",
        frozenset({"dee", "una"}),
    ),
    ("production", Action.DEPLOY): ("app-production has no deployers list: production needs one", frozenset()),
    ("production", Action.CONTROL): ("app-production has no deployers list: production needs one", frozenset()),
    ("production", Action.ROLLBACK): (
        "app-production has no rollbackers or deployers list: production needs one",
        frozenset(),
    ),
    ("listed", Action.DEPLOY): ("shop-production.deployers: rob, @release", frozenset({"dee"})),
    ("listed", Action.CONTROL): ("shop-production.deployers: rob, @release", frozenset({"dee"})),
    ("listed", Action.ROLLBACK): ("shop-production.rollbackers: @release", frozenset({"dee"})),
}


def refusal(caller: Caller, operation: str, action: Action | None, target: str) -> str | None:
    """The AccessDeniedException message ``caller`` gets, or None when the call is allowed."""
    if caller.user is None:
        return UNMAPPED
    if action is None or caller.user == "ada":
        return None
    if action is Action.ADMIN:
        rule, allowed = ADMINS_ONLY, frozenset[str]()
    else:
        environment = next(env for env, (_, _, group) in ENVIRONMENTS.items() if group == target)
        rule, allowed = RULES[(environment, action)]
    if caller.user in allowed:
        return None
    return f"User: {caller.user} is not authorized to perform: codedeploy:{operation} on {target} ({rule})"


# -- the cells --------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One call: ``served`` runs the app, ``client`` signs with the caller's key, ``state`` is what setup made."""

    served: Served
    client: Any
    application: str
    environment: str
    group: str
    state: dict[str, Any]

    @property
    def deployer(self) -> Any:
        return self.served.deployer


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def row(cell: Cell) -> dict[str, Any]:
    found = await cell.deployer.store.get_deployment(cell.state["id"])
    assert found is not None
    return dict(found)


def paused(found: dict[str, Any]) -> bool:
    return bool(((found.get("state") or {}).get("machine") or {}).get("paused"))


async def started(cell: Cell) -> None:
    """A deployment by the admin, through the engine, that waits for agents which never come."""
    doc = await cell.deployer.start(DeployRequest(cell.application, cell.environment, actor="ada"))
    cell.state["id"] = doc["id"]
    await until(lambda: _status_in(cell, ("InProgress",)))


async def _status_in(cell: Cell, statuses: tuple[str, ...]) -> bool:
    return (await row(cell))["status"] in statuses


async def paused_deployment(cell: Cell) -> None:
    await started(cell)
    await cell.deployer.control(cell.state["id"], "pause", actor="ada")

    async def is_paused() -> bool:
        return paused(await row(cell))

    await until(is_paused)


async def waiting_hook(cell: Cell) -> None:
    await started(cell)
    hooks = cell.deployer.hooks
    at = cell.deployer.clock.now()  # the hook's timeout counts from its start
    execution, _ = await hooks.start(cell.state["id"], "fn:live", "BeforeAllowTraffic", "check-fn", at=at)
    cell.state["execution"] = execution.execution_id
    cell.state["waiting"] = asyncio.ensure_future(hooks.wait(execution, 30))


async def baking(cell: Cell) -> None:
    """A blue/green deployment whose traffic moved and whose original fleet waits 30 minutes to be released."""
    doc = await cell.deployer.start(DeployRequest(cell.application, cell.environment, actor="ada"))
    cell.state["id"] = doc["id"]
    await until(lambda: _status_in(cell, ("Baking",)))


async def nothing(cell: Cell) -> None:
    return None


@dataclass(frozen=True)
class GroupOperation:
    """An operation on a deployment group: its setup, the call, and what "it happened" / "nothing changed" mean."""

    name: str
    action: Action | None
    setup: Callable[[Cell], Awaitable[None]]
    call: Callable[[Cell], Awaitable[Any]]
    happened: Callable[[Cell, Any], Awaitable[None]]
    unchanged: Callable[[Cell], Awaitable[None]]
    config: str = CONFIG
    hosts: tuple[str, ...] = ()


async def _create(cell: Cell) -> Any:
    return await call(cell.client.create_deployment, applicationName=cell.application, deploymentGroupName=cell.group)


async def _created(cell: Cell, answer: Any) -> None:
    doc = await cell.deployer.get(answer["deploymentId"])
    assert (doc["group"], doc["created_by"]) == (cell.group, cell.state["user"])


async def _none_created(cell: Cell) -> None:
    assert await cell.deployer.store.list_deployments(limit=None) == []


async def _stopped(cell: Cell, answer: Any) -> None:
    assert answer["status"] == "Succeeded"
    assert (await row(cell))["status"] == "Stopped"


async def _still_running(cell: Cell) -> None:
    assert (await row(cell))["status"] == "InProgress"


async def _resumed(cell: Cell, answer: Any) -> None:
    async def is_running() -> bool:
        return not paused(await row(cell))

    await until(is_running)


async def _still_paused(cell: Cell) -> None:
    assert paused(await row(cell))


async def _hook_reported(cell: Cell, answer: Any) -> None:
    assert answer["lifecycleEventHookExecutionId"] == cell.state["execution"]
    assert await cell.state["waiting"] == "Succeeded"


async def _hook_waiting(cell: Cell) -> None:
    assert not cell.state["waiting"].done()
    assert [e["execution_id"] for e in cell.deployer.hooks.pending()] == [cell.state["execution"]]
    cell.state["waiting"].cancel()


async def _released(cell: Cell, answer: Any) -> None:
    await until(lambda: _status_in(cell, ("Succeeded",)))


async def _still_baking(cell: Cell) -> None:
    assert (await row(cell))["status"] == "Baking"


async def _read(cell: Cell, answer: Any) -> None:
    assert answer["deploymentInfo"]["deploymentId"] == cell.state["id"]


async def _unchanged_read(cell: Cell) -> None:
    await _still_running(cell)


GROUP_OPERATIONS = (
    GroupOperation("CreateDeployment", Action.DEPLOY, nothing, _create, _created, _none_created),
    GroupOperation(
        "StopDeployment",
        Action.CONTROL,
        started,
        lambda cell: call(cell.client.stop_deployment, deploymentId=cell.state["id"]),
        _stopped,
        _still_running,
    ),
    GroupOperation(
        "StopDeployment+autoRollbackEnabled",
        Action.ROLLBACK,
        started,
        lambda cell: call(cell.client.stop_deployment, deploymentId=cell.state["id"], autoRollbackEnabled=True),
        _stopped,
        _still_running,
    ),
    GroupOperation(
        "ContinueDeployment",
        Action.CONTROL,
        paused_deployment,
        lambda cell: call(cell.client.continue_deployment, deploymentId=cell.state["id"]),
        _resumed,
        _still_paused,
    ),
    GroupOperation(
        "PutLifecycleEventHookExecutionStatus",
        Action.CONTROL,
        waiting_hook,
        lambda cell: call(
            cell.client.put_lifecycle_event_hook_execution_status,
            lifecycleEventHookExecutionId=cell.state["execution"],
            status="Succeeded",
        ),
        _hook_reported,
        _hook_waiting,
    ),
    GroupOperation(
        "SkipWaitTimeForInstanceTermination",
        Action.CONTROL,
        baking,
        lambda cell: call(cell.client.skip_wait_time_for_instance_termination, deploymentId=cell.state["id"]),
        _released,
        _still_baking,
        config=BLUE_GREEN_CONFIG,
        hosts=("s1", "s2", "p1", "p2"),
    ),
    GroupOperation(
        "GetDeployment",
        None,
        started,
        lambda cell: call(cell.client.get_deployment, deploymentId=cell.state["id"]),
        _read,
        _unchanged_read,
    ),
)


async def audit_after(served: Served, last: int) -> list[dict[str, Any]]:
    return [dict(e) for e in await served.deployer.store.read_log(after_id=last)]


async def last_entry(served: Served) -> int:
    entries = await served.deployer.store.read_log(limit=100_000)
    return int(entries[-1]["id"]) if entries else 0


async def expect(
    served: Served,
    caller: Caller,
    operation: str,
    refused: str | None,
    attempt: Callable[[], Awaitable[Any]],
    happened: Callable[[Any], Awaitable[None]],
    unchanged: Callable[[], Awaitable[None]],
    *,
    mutating: bool = True,
) -> None:
    """Make the call; allowed: it happened and every audit entry it wrote names the caller's user; refused:
    AccessDeniedException with exactly ``refused``, nothing changed, one access.denied entry (none for a key that
    is nobody's)."""
    before = await last_entry(served)
    if refused is None:
        await happened(await attempt())
        written = await audit_after(served, before)
        assert {e["actor"] for e in written} <= {caller.user, ENGINE}, written  # the engine's own steps
        assert any(e["actor"] == caller.user for e in written) == mutating, written
        return
    with pytest.raises(ClientError) as info:
        await attempt()
    error = info.value.response["Error"]
    assert (error["Code"], error["Message"]) == ("AccessDeniedException", refused)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    await unchanged()
    written = await audit_after(served, before)
    if caller.user is None:
        assert written == []
    else:
        assert [(e["kind"], e["actor"], e["data"]["operation"]) for e in written] == [
            ("access.denied", caller.user, operation.split("+")[0])
        ]


@pytest.mark.parametrize(
    ("operation", "role", "environment"),
    list(itertools.product(GROUP_OPERATIONS, CALLERS, ENVIRONMENTS)),
    ids=lambda value: getattr(value, "name", None) or str(value),
)
async def test_group_operations(tmp_path: Path, operation: GroupOperation, role: str, environment: str) -> None:
    caller = CALLERS[role]
    application, env, group = ENVIRONMENTS[environment]
    async with serving(tmp_path, config=operation.config, hosts=operation.hosts, keys=KEYS, admins=()) as served:
        client = served.client(caller.key, caller.secret)
        cell = Cell(served, client, application, env, group, {"user": caller.user})
        await operation.setup(cell)
        name = operation.name.split("+")[0]
        await expect(
            served,
            caller,
            operation.name,
            refusal(caller, name, operation.action, group),
            lambda: operation.call(cell),
            lambda answer: operation.happened(cell, answer),
            lambda: operation.unchanged(cell),
            mutating=operation.action is not None,
        )


# -- what is registered: ADMIN, no group ---------------------------------------------------------------------------

COMMIT = "a" * 40
GITHUB = {"revisionType": "GitHub", "gitHubLocation": {"repository": "acme/app", "commitId": COMMIT}}
TWO = DeploymentConfig("TwoAtATime", Platform.SERVER, MinimumHealthyHosts(MinimumHealthyHostsType.HOST_COUNT, 2))


@dataclass(frozen=True)
class RegistryOperation:
    name: str
    setup: Callable[[Served], Awaitable[None]]
    call: Callable[[Any], Awaitable[Any]]  # the boto3 client -> the answer
    registered: Callable[[Served], Any]  # what the operation changes, read from the registry
    before: Any  # that, untouched
    after: Any  # that, once the operation happened


def _configs(served: Served) -> bool:
    return "TwoAtATime" in served.deployer.registry.deployment_configs()


def _instance(served: Served) -> tuple[bool, dict[str, str]] | None:
    found = [i for i in served.deployer.registry.instances() if i.name == "edge-1"]
    return (found[0].registered, dict(found[0].tags)) if found else None


async def _with_config(served: Served) -> None:
    await served.deployer.registry.create_config(TWO)


async def _with_instance(served: Served) -> None:
    await served.deployer.registry.register_instance("edge-1")


async def _with_tagged_instance(served: Served) -> None:
    await served.deployer.registry.register_instance("edge-1", tags={"env": "staging"})


async def _empty(served: Served) -> None:
    return None


EDGE_ARN = "arn:aws:codedeploy:us-east-1:123456789012:application:edge"
ROLE = "arn:aws:iam::123456789012:role/codedeploy"


async def _with_api_app(served: Served) -> None:
    await served.deployer.registry.create_application("edge", Platform.SERVER)


async def _with_tagged_api_app(served: Served) -> None:
    await served.deployer.registry.create_application("edge", Platform.SERVER, tags={"team": "web"})


async def _with_api_group(served: Served) -> None:
    await _with_api_app(served)
    await served.deployer.registry.create_group("edge", "edge-qa", {"serviceRoleArn": ROLE})


def _api_applications(served: Served) -> list[str]:
    return sorted(a.name for a in served.deployer.config.applications.values() if a.origin == "API")


def _api_groups(served: Served) -> dict[str, str]:
    return {g.name: g.deployment_config for g in served.deployer.config.groups() if g.application == "edge"}


def _edge_tags(served: Served) -> dict[str, str]:
    found = served.deployer.registry.api_application("edge")
    return dict(found.tags) if found else {}


REGISTRY_OPERATIONS = (
    RegistryOperation(
        "CreateApplication",
        _empty,
        lambda client: call(client.create_application, applicationName="edge"),
        _api_applications,
        [],
        ["edge"],
    ),
    RegistryOperation(
        "UpdateApplication",
        _with_api_app,
        lambda client: call(client.update_application, applicationName="edge", newApplicationName="edge2"),
        _api_applications,
        ["edge"],
        ["edge2"],
    ),
    RegistryOperation(
        "DeleteApplication",
        _with_api_app,
        lambda client: call(client.delete_application, applicationName="edge"),
        _api_applications,
        ["edge"],
        [],
    ),
    RegistryOperation(
        "CreateDeploymentGroup",
        _with_api_app,
        lambda client: call(
            client.create_deployment_group, applicationName="edge", deploymentGroupName="edge-qa", serviceRoleArn=ROLE
        ),
        _api_groups,
        {},
        {"edge-qa": "CodeDeployDefault.OneAtATime"},
    ),
    RegistryOperation(
        "UpdateDeploymentGroup",
        _with_api_group,
        lambda client: call(
            client.update_deployment_group,
            applicationName="edge",
            currentDeploymentGroupName="edge-qa",
            deploymentConfigName="CodeDeployDefault.AllAtOnce",
        ),
        _api_groups,
        {"edge-qa": "CodeDeployDefault.OneAtATime"},
        {"edge-qa": "CodeDeployDefault.AllAtOnce"},
    ),
    RegistryOperation(
        "DeleteDeploymentGroup",
        _with_api_group,
        lambda client: call(client.delete_deployment_group, applicationName="edge", deploymentGroupName="edge-qa"),
        _api_groups,
        {"edge-qa": "CodeDeployDefault.OneAtATime"},
        {},
    ),
    RegistryOperation(
        "TagResource",
        _with_api_app,
        lambda client: call(client.tag_resource, ResourceArn=EDGE_ARN, Tags=[{"Key": "team", "Value": "web"}]),
        _edge_tags,
        {},
        {"team": "web"},
    ),
    RegistryOperation(
        "UntagResource",
        _with_tagged_api_app,
        lambda client: call(client.untag_resource, ResourceArn=EDGE_ARN, TagKeys=["team"]),
        _edge_tags,
        {"team": "web"},
        {},
    ),
    RegistryOperation(  # changes nothing (deploybot keeps nothing by external id), but only an admin may ask
        "DeleteResourcesByExternalId",
        _empty,
        lambda client: call(client.delete_resources_by_external_id, externalId="stack-1"),
        _api_applications,
        [],
        [],
    ),
    RegistryOperation(
        "CreateDeploymentConfig",
        _empty,
        lambda client: call(
            client.create_deployment_config,
            deploymentConfigName="TwoAtATime",
            minimumHealthyHosts={"type": "HOST_COUNT", "value": 2},
        ),
        _configs,
        False,
        True,
    ),
    RegistryOperation(
        "DeleteDeploymentConfig",
        _with_config,
        lambda client: call(client.delete_deployment_config, deploymentConfigName="TwoAtATime"),
        _configs,
        True,
        False,
    ),
    RegistryOperation(
        "RegisterApplicationRevision",
        _empty,
        lambda client: call(client.register_application_revision, applicationName="app", revision=GITHUB),
        lambda served: [dict(r.location) for r in served.deployer.registry.revisions("app")],
        [],
        [GITHUB],
    ),
    RegistryOperation(
        "RegisterOnPremisesInstance",
        _empty,
        lambda client: call(client.register_on_premises_instance, instanceName="edge-1"),
        _instance,
        None,
        (True, {}),
    ),
    RegistryOperation(
        "DeregisterOnPremisesInstance",
        _with_instance,
        lambda client: call(client.deregister_on_premises_instance, instanceName="edge-1"),
        _instance,
        (True, {}),
        (False, {}),
    ),
    RegistryOperation(
        "AddTagsToOnPremisesInstances",
        _with_instance,
        lambda client: call(
            client.add_tags_to_on_premises_instances,
            instanceNames=["edge-1"],
            tags=[{"Key": "env", "Value": "staging"}],
        ),
        _instance,
        (True, {}),
        (True, {"env": "staging"}),
    ),
    RegistryOperation(
        "RemoveTagsFromOnPremisesInstances",
        _with_tagged_instance,
        lambda client: call(
            client.remove_tags_from_on_premises_instances,
            instanceNames=["edge-1"],
            tags=[{"Key": "env", "Value": "staging"}],
        ),
        _instance,
        (True, {"env": "staging"}),
        (True, {}),
    ),
)


@pytest.mark.parametrize(
    ("operation", "role"),
    list(itertools.product(REGISTRY_OPERATIONS, CALLERS)),
    ids=lambda value: getattr(value, "name", None) or str(value),
)
async def test_registry_operations(tmp_path: Path, operation: RegistryOperation, role: str) -> None:
    caller = CALLERS[role]
    async with serving(tmp_path, config=CONFIG, hosts=(), keys=KEYS, admins=()) as served:
        await operation.setup(served)
        assert operation.registered(served) == operation.before

        async def happened(answer: Any) -> None:
            assert operation.registered(served) == operation.after

        async def unchanged() -> None:
            assert operation.registered(served) == operation.before

        await expect(
            served,
            caller,
            operation.name,
            refusal(caller, operation.name, Action.ADMIN, "*"),
            lambda: operation.call(served.client(caller.key, caller.secret)),
            happened,
            unchanged,
        )


# -- reads: any user, but only a user ------------------------------------------------------------------------------

READS: dict[str, dict[str, Any]] = {  # every read operation, with a request that finds something
    "ListApplications": {},
    "GetApplication": {"applicationName": "shop"},
    "BatchGetApplications": {"applicationNames": ["app", "shop"]},
    "ListDeploymentGroups": {"applicationName": "shop"},
    "GetDeploymentGroup": {"applicationName": "shop", "deploymentGroupName": "shop-production"},
    "BatchGetDeploymentGroups": {"applicationName": "shop", "deploymentGroupNames": ["shop-production"]},
    "ListDeploymentConfigs": {},
    "GetDeploymentConfig": {"deploymentConfigName": "TwoAtATime"},
    "ListApplicationRevisions": {"applicationName": "app"},
    "GetApplicationRevision": {"applicationName": "app", "revision": GITHUB},
    "BatchGetApplicationRevisions": {"applicationName": "app", "revisions": [GITHUB]},
    "GetDeployment": {"deploymentId": "ID"},
    "BatchGetDeployments": {"deploymentIds": ["ID"]},
    "ListDeployments": {"applicationName": "shop", "deploymentGroupName": "shop-production"},
    "ListDeploymentTargets": {"deploymentId": "ID"},
    "GetDeploymentTarget": {"deploymentId": "ID", "targetId": "p1"},
    "BatchGetDeploymentTargets": {"deploymentId": "ID", "targetIds": ["p1", "p2"]},
    "ListDeploymentInstances": {"deploymentId": "ID"},
    "GetDeploymentInstance": {"deploymentId": "ID", "instanceId": "p1"},
    "BatchGetDeploymentInstances": {"deploymentId": "ID", "instanceIds": ["p1"]},
    "ListOnPremisesInstances": {},
    "GetOnPremisesInstance": {"instanceName": "edge-1"},
    "BatchGetOnPremisesInstances": {"instanceNames": ["edge-1"]},
    "ListTagsForResource": {"ResourceArn": "arn:aws:codedeploy:us-east-1:123456789012:application:app"},
    "ListGitHubAccountTokenNames": {},
}


def snake(operation: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")


@pytest.mark.parametrize(("operation", "role"), list(itertools.product(READS, CALLERS)))
async def test_reads(tmp_path: Path, operation: str, role: str) -> None:
    """Reads need a deploybot user and nothing else: even of a production group nobody but its list may touch."""
    caller = CALLERS[role]
    async with serving(tmp_path, config=CONFIG, hosts=(), keys=KEYS, admins=()) as served:
        registry = served.deployer.registry
        await registry.create_config(TWO)
        await registry.register_revision("app", GITHUB)
        await registry.register_instance("edge-1")
        doc = await served.deployer.start(DeployRequest("shop", "production", actor="ada"))
        request = {
            key: [doc["id"]] if value == ["ID"] else doc["id"] if value == "ID" else value
            for key, value in READS[operation].items()
        }
        client = served.client(caller.key, caller.secret)

        async def answered(answer: Any) -> None:
            assert set(answer) - {"ResponseMetadata"}, answer  # found what the request names
            assert "errorMessage" not in answer, answer

        async def unchanged() -> None:
            return None

        await expect(
            served,
            caller,
            operation,
            refusal(caller, operation, None, "*"),
            lambda: call(getattr(client, snake(operation)), **request),
            answered,
            unchanged,
            mutating=False,
        )


def test_every_operation_has_its_access_and_is_in_a_table_here() -> None:
    access = CodeDeployOperations.access_table()
    reads = {name for name, needs in access.items() if needs.action is None}
    assert reads == {name for name in access if name.startswith(("Get", "List", "BatchGet"))}
    assert all(access[name].target is Target.NONE for name in reads)
    tested = {op.name.split("+")[0] for op in GROUP_OPERATIONS} | {op.name for op in REGISTRY_OPERATIONS}
    # DeleteGitHubAccountToken never succeeds, even for an admin (test_codedeploy_groups_api.py tests who may ask)
    assert tested | set(READS) | {"DeleteGitHubAccountToken"} == set(access)
    assert {name for name, needs in access.items() if needs.action is Action.ADMIN} == {
        op.name for op in REGISTRY_OPERATIONS
    } | {"DeleteGitHubAccountToken"}
    for op in GROUP_OPERATIONS:
        needs = access[op.name.split("+")[0]]
        asked = Action.ROLLBACK if "+" in op.name else needs.action
        assert asked == op.action and (needs.target is Target.NONE) == (op.action is None), op.name


def test_the_docs_table_is_the_access_table() -> None:
    """docs/codedeploy-api.md's "Who may call what" lists each operation with what it asks, as the code does."""
    text = (Path(__file__).parent.parent / "docs" / "codedeploy-api.md").read_text(encoding="utf-8")
    section = text.split("#### Who may call what", 1)[1].split("\n#", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    documented: dict[str, tuple[str, str]] = {}
    for cells in rows[1:]:  # after the header
        operations, action, target = (cell.strip() for cell in cells)
        for operation in operations.split(", "):
            documented[operation] = (action, target)
    assert documented == {
        name: (needs.describe(), str(needs.target)) for name, needs in CodeDeployOperations.access_table().items()
    }


# -- who: the identity rules -----------------------------------------------------------------------------------------


async def test_a_key_without_a_mapping_acts_as_the_declared_user_its_actor_names(tmp_path: Path) -> None:
    async with serving(tmp_path, config=CONFIG, hosts=(), keys=KEYS, admins=()) as served:
        client = served.client("AKIAROB", "secret-r")  # rob declares no key id; the key's ACTOR is rob
        created = await call(client.create_deployment, applicationName="shop", deploymentGroupName="shop-production")
        assert (await served.deployer.get(created["deploymentId"]))["created_by"] == "rob"
        with pytest.raises(ClientError) as info:
            await call(client.create_deployment, applicationName="app", deploymentGroupName="app-production")
        assert info.value.response["Error"]["Message"] == (
            "User: rob is not authorized to perform: codedeploy:CreateDeployment on app-production "
            "(app-production has no deployers list: production needs one)"
        )


async def test_the_secret_that_signs_is_still_the_keys_one(tmp_path: Path) -> None:
    """The config maps key ids to users; only DEPLOYBOT_AWS_KEYS holds secrets, and the signature must use it."""
    config = CONFIG.replace("rob: {}", "rob: {aws_access_key_id: AKIANOWHERE}")
    async with serving(tmp_path, config=config, hosts=(), keys=KEYS, admins=()) as served:
        for key, secret in (("AKIAADMIN", "secret-d"), ("AKIADEPLOYER", "secret-a")):
            with pytest.raises(ClientError) as info:
                await call(served.client(key, secret).list_applications)
            assert info.value.response["Error"]["Code"] == "InvalidSignatureException"
        # A key id the config maps but DEPLOYBOT_AWS_KEYS does not hold signs nothing.
        with pytest.raises(ClientError) as info:
            await call(served.client("AKIANOWHERE", "anything").list_applications)
        assert info.value.response["Error"]["Code"] == "UnrecognizedClientException"


async def test_without_a_users_section_the_keys_actor_is_the_name(tmp_path: Path) -> None:
    """test_service's config declares no users: bob (AKIOTHER) is whoever DEPLOYBOT_AWS_KEYS says, free-form, and
    the policy still applies: anyone in staging, nobody but admins in a production without a deployers list."""
    async with serving(tmp_path, hosts=(), admins=()) as served:
        client = served.client("AKIOTHER", "other")
        created = await call(client.create_deployment, applicationName="app", deploymentGroupName="app-staging")
        assert (await served.deployer.get(created["deploymentId"]))["created_by"] == "bob"
        with pytest.raises(ClientError) as info:
            await call(client.create_deployment, applicationName="app", deploymentGroupName="app-production")
        assert info.value.response["Error"] == {
            "Code": "AccessDeniedException",
            "Message": "User: bob is not authorized to perform: codedeploy:CreateDeployment on app-production "
            "(app-production has no deployers list: production needs one)",
        }
        with pytest.raises(ClientError) as info:
            await call(client.register_on_premises_instance, instanceName="edge-1")
        assert info.value.response["Error"]["Message"] == (
            "User: bob is not authorized to perform: codedeploy:RegisterOnPremisesInstance on * "
            "(only admins may administer deploybot (server.admins))"
        )
        assert served.deployer.registry.instances() == []


async def test_no_key_acts_as_the_bootstrap_admin(tmp_path: Path) -> None:
    keys = "AKIAROOT:root-secret:deploybot-admin"
    async with serving(tmp_path, hosts=(), keys=keys, admins=()) as served:
        with pytest.raises(ClientError) as info:
            await call(served.client("AKIAROOT", "root-secret").list_applications)
        assert info.value.response["Error"]["Code"] == "AccessDeniedException"
        assert info.value.response["Error"]["Message"].startswith(
            "access key AKIAROOT names deploybot-admin, the data directory's API token"
        )


async def test_a_refusal_is_kept_in_the_audit_log_with_its_rule(tmp_path: Path) -> None:
    async with serving(tmp_path, config=CONFIG, hosts=(), keys=KEYS, admins=()) as served:
        client = served.client("AKIAUSER", "secret-u")
        with pytest.raises(ClientError):
            await call(client.create_deployment, applicationName="shop", deploymentGroupName="shop-production")
        entries = await served.deployer.store.read_log()
        assert [(e["kind"], e["actor"], e["deployment_id"], e["data"]) for e in entries] == [
            (
                "access.denied",
                "una",
                None,
                {
                    "door": "codedeploy",
                    "operation": "CreateDeployment",
                    "action": "deploy",
                    "target": "shop-production",
                    "rule": "shop-production.deployers: rob, @release",
                },
            )
        ]


async def test_what_does_not_exist_is_said_before_who_may(tmp_path: Path) -> None:
    """A request naming nothing that exists gets the operation's own error, not a refusal about no group."""
    async with serving(tmp_path, config=CONFIG, hosts=(), keys=KEYS, admins=()) as served:
        client = served.client("AKIAUSER", "secret-u")
        with pytest.raises(client.exceptions.DeploymentDoesNotExistException):
            await call(client.stop_deployment, deploymentId="d-AAAAAAAAA")
        with pytest.raises(client.exceptions.DeploymentGroupDoesNotExistException):
            await call(client.create_deployment, applicationName="shop", deploymentGroupName="shop-qa")
        with pytest.raises(client.exceptions.LifecycleEventAlreadyCompletedException):
            await call(
                client.put_lifecycle_event_hook_execution_status, lifecycleEventHookExecutionId="gone", status="Failed"
            )


def test_startup_names_the_keys_that_will_be_refused_or_act_as_someone_else() -> None:
    config = parse_config(CONFIG.replace("rob: {}", "rob: {aws_access_key_id: AKIANOWHERE}"), filename="t.yml")
    assert key_problems(config, parse_keys(KEYS)) == [
        "access key AKIAADMIN acts as ada (users.ada), not its ACTOR ci-admin",
        "access key AKIAUNMAPPED (ACTOR mallory) is not mapped to a deploybot user: it will be refused",
        "users.rob.aws_access_key_id AKIANOWHERE is not in DEPLOYBOT_AWS_KEYS: no request can be signed with it",
    ]
