"""engine/core/config/model.py: lookups people type in chat (case-insensitive), target selection, stable group ids."""

from __future__ import annotations

import pytest

from engine.core.config.model import Application, DeploymentGroup, EngineConfig, Host, ServerSettings
from engine.core.errors import ApplicationNotFound, EnvironmentNotFound, UnknownDeploymentConfig
from engine.core.model import DeploymentType, Platform


def group(app: str, env: str, **kwargs: object) -> DeploymentGroup:
    return DeploymentGroup(
        name=f"{app}-{env}",
        application=app,
        environment=env,
        platform=Platform.SERVER,
        deployment_type=DeploymentType.IN_PLACE,
        deployment_config="CodeDeployDefault.OneAtATime",
        traffic_config=None,
        **kwargs,  # type: ignore[arg-type]
    )


HOSTS = {
    "web-1": Host("web-1", {"env": "prod", "zone": "a"}, local=True, port=9201),
    "web-2": Host("web-2", {"env": "prod", "zone": "b"}),
    "web-3": Host("web-3", {"env": "prod", "zone": "a"}, local=True, port=9203),
    "stage-1": Host("stage-1", {"env": "staging"}, local=True, port=9101),
}
STAGING = group("Hello", "Staging", hosts=("stage-1",))
PRODUCTION = group("Hello", "Production", target_tags={"env": "prod", "zone": "a"})
CONFIG = EngineConfig(
    source="deploybot.yml",
    server=ServerSettings(),
    applications={
        "Hello": Application(
            "Hello", Platform.SERVER, ("Staging", "Production"), {"Staging": STAGING, "Production": PRODUCTION}
        ),
        "api": Application("api", Platform.SERVER, ("prod",), {"prod": group("api", "prod", hosts=("web-2", "web-1"))}),
    },
    hosts=HOSTS,
    deployment_configs={},
)


@pytest.mark.parametrize("typed", ["Hello", "hello", "HELLO", "hElLo"])
def test_application_lookup_ignores_case(typed: str) -> None:
    assert CONFIG.application(typed).name == "Hello"


def test_unknown_application_lists_known_ones() -> None:
    with pytest.raises(ApplicationNotFound) as caught:
        CONFIG.application("hellp")
    assert (caught.value.application, caught.value.known) == ("hellp", ("Hello", "api"))


@pytest.mark.parametrize("app, env", [("hello", "production"), ("HELLO", "PRODUCTION"), ("Hello", "Production")])
def test_group_lookup_ignores_case(app: str, env: str) -> None:
    assert CONFIG.group(app, env) is PRODUCTION


def test_unknown_environment_lists_known_ones() -> None:
    with pytest.raises(EnvironmentNotFound) as caught:
        CONFIG.group("hello", "qa")
    assert (caught.value.application, caught.value.environment, caught.value.known) == (
        "Hello",
        "qa",
        ("Staging", "Production"),
    )


def test_targets_by_name_keep_the_given_order() -> None:
    assert [h.name for h in CONFIG.targets(CONFIG.group("api", "prod"))] == ["web-2", "web-1"]


def test_targets_by_tags_need_every_tag_in_declaration_order() -> None:
    assert [h.name for h in CONFIG.targets(PRODUCTION)] == ["web-1", "web-3"]
    only_env = group("Hello", "Production", target_tags={"env": "prod"})
    assert [h.name for h in CONFIG.targets(only_env)] == ["web-1", "web-2", "web-3"]


def test_a_group_with_no_targets_selects_nothing() -> None:
    assert CONFIG.targets(group("fn", "prod")) == ()
    assert not HOSTS["web-1"].matches({})


def test_group_id_is_stable_and_file_name_safe() -> None:
    assert STAGING.group_id() == "hello-staging"
    assert group("my app", "prod/eu").group_id() == "my_app-prod_eu"


def test_promotion_order() -> None:
    hello = CONFIG.application("hello")
    assert hello.next_environment("staging") == "Production"
    assert hello.next_environment("production") is None


def test_iterating_groups_and_local_hosts() -> None:
    assert [g.name for g in CONFIG.groups()] == ["Hello-Staging", "Hello-Production", "api-prod"]
    assert [h.name for h in CONFIG.local_hosts()] == ["web-1", "web-3", "stage-1"]


def test_server_url() -> None:
    assert ServerSettings().url == "http://127.0.0.1:8080"
    assert ServerSettings(listen_host="::1", listen_port=9000).url == "http://[::1]:9000"
    assert ServerSettings(public_url="https://deploy.example.com/").url == "https://deploy.example.com"


def test_deployment_config_resolves_builtins_and_custom_names() -> None:
    assert CONFIG.deployment_config("CodeDeployDefault.AllAtOnce").name == "CodeDeployDefault.AllAtOnce"
    with pytest.raises(UnknownDeploymentConfig):
        CONFIG.deployment_config("Nope")
