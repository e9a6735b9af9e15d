"""slack/manifest.yml against the bot it describes: pasting it must give an app whose command, URLs, events and
scopes are exactly what the bot answers, serves and calls.

- the commands the manifest declares are the ones the real bolt app answers (and a command it does not declare is
  not answered); the bot listens to no events, and the manifest subscribes to none;
- every URL in it is a POST route of the real aiohttp app, which answers a signed command and click there;
- the scopes are exactly those needed by the Web API methods bot/ calls (found by walking its syntax tree for
  slack_sdk's method names, checked against what a real deployment thread sent the fake Slack) and by its features;
- it keeps to Slack's manifest schema (the parts and limits of github.com/slackapi/manifest-schema it uses).
"""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import yaml
from slack_sdk.web.async_client import AsyncWebClient
from slack_support import button_body, open_slack_rig, signed, slash_body

ROOT = Path(__file__).resolve().parent.parent
MANIFEST_FILE = ROOT / "slack" / "manifest.yml"

# The bot token scopes each Web API method needs, from Slack's method reference (docs.slack.dev/reference/methods).
# A method bot/ starts calling must be added here with its scopes, and the scopes to the manifest.
METHOD_SCOPES: dict[str, frozenset[str]] = {
    # chat:write.public too: threads go to an application's slack_channel, which the bot need not have joined
    "chat.postMessage": frozenset({"chat:write", "chat:write.public"}),
    "chat.update": frozenset({"chat:write"}),
}
# The scopes a manifest feature needs whatever the code calls.
FEATURE_SCOPES: dict[str, frozenset[str]] = {"slash_commands": frozenset({"commands"})}

CONFIG = """
server: {data_dir: var}
hosts:
  - {name: s1, tags: {env: staging}}
applications:
  app:
    platform: server
    revision: rev-a
    slack_channel: "#deploys"
    environments: [staging]
    deployment_groups:
      staging:
        deployment_config: CodeDeployDefault.AllAtOnce
        targets: {tags: {env: staging}}
"""


def manifest() -> dict[str, Any]:
    return dict(yaml.safe_load(MANIFEST_FILE.read_text()))


def manifest_urls(found: dict[str, Any]) -> list[str]:
    urls = [str(c["url"]) for c in found["features"].get("slash_commands", []) if "url" in c]
    settings = found.get("settings", {})
    for section in ("interactivity", "event_subscriptions"):
        if "request_url" in settings.get(section, {}):
            urls.append(str(settings[section]["request_url"]))
    return urls


def web_api_methods_called(package: Path) -> set[str]:
    """The Slack Web API methods the code under ``package`` names: every attribute or string that is one of
    slack_sdk's method names (``client.chat_postMessage(...)``, ``getattr(client, "chat_update")``,
    ``client.api_call("chat.update")``), as Slack spells it (``chat.postMessage``)."""
    known = {name for name in vars(AsyncWebClient) if not name.startswith("_") and "_" in name}
    named: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Attribute):
                named.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                named.add(node.value.replace(".", "_"))
    return {name.replace("_", ".") for name in named & known}


def slash_body_for(command: str, text: str) -> str:
    fields = dict(parse_qsl(slash_body(text)))
    return urlencode({**fields, "command": command})


def page_link_click() -> str:
    """A click on a thread's "View deployment" link button (only acknowledged: the browser opens the link)."""
    from bot.slack.notifier import PAGE_ACTION

    payload = json.loads(dict(parse_qsl(button_body("page", "")))["payload"])
    payload["actions"][0]["action_id"] = PAGE_ACTION
    return urlencode({"payload": json.dumps(payload)})


# -- the manifest itself --------------------------------------------------------------------------------------------


def test_the_manifest_keeps_to_slacks_schema() -> None:
    found = manifest()
    assert set(found) <= {"_metadata", "display_information", "features", "oauth_config", "settings"}
    assert found["_metadata"]["major_version"] == 1
    info = found["display_information"]
    assert set(info) <= {"name", "description", "background_color", "long_description"}
    assert 1 <= len(info["name"]) <= 35 and 1 <= len(info["description"]) <= 140
    assert len(info["background_color"]) in (4, 7) and info["background_color"].startswith("#")
    features = found["features"]
    assert 1 <= len(features["bot_user"]["display_name"]) <= 80
    for command in features["slash_commands"]:
        assert set(command) <= {"command", "url", "description", "usage_hint", "should_escape"}
        assert command["command"].startswith("/") and 2 <= len(command["command"]) <= 32
        assert 1 <= len(command["description"]) <= 2000 and 1 <= len(command.get("usage_hint", "x")) <= 1000
    assert set(found["oauth_config"]["scopes"]) == {"bot"}  # no user token: the bot acts as itself
    settings = found["settings"]
    assert set(settings) <= {
        "interactivity",
        "event_subscriptions",
        "org_deploy_enabled",
        "socket_mode_enabled",
        "token_rotation_enabled",
    }
    for url in manifest_urls(found):
        assert url.startswith("https://"), url  # Slack only calls public https URLs


def test_it_is_for_http_events_by_default_on_one_workspace() -> None:
    settings = manifest()["settings"]
    assert settings["socket_mode_enabled"] is False  # docs/slack.md: switch it on with SLACK_APP_TOKEN
    assert settings["org_deploy_enabled"] is False
    assert settings["interactivity"]["is_enabled"] is True  # the thread's buttons


# -- scopes ---------------------------------------------------------------------------------------------------------


def test_every_scope_is_needed_by_a_method_the_bot_calls_or_a_feature_it_declares() -> None:
    found = manifest()
    called = web_api_methods_called(ROOT / "bot")
    unknown = called - set(METHOD_SCOPES)
    assert not unknown, f"bot/ calls {sorted(unknown)}: add their scopes to METHOD_SCOPES and slack/manifest.yml"
    needed = set().union(*(METHOD_SCOPES[m] for m in called))
    needed |= set().union(*(scopes for feature, scopes in FEATURE_SCOPES.items() if found["features"].get(feature)))
    assert sorted(found["oauth_config"]["scopes"]["bot"]) == sorted(needed)


async def test_a_deployment_thread_calls_only_methods_the_walk_found(tmp_path: Path) -> None:
    """The walk checked against what happened: every call a real deployment thread made of the fake Slack."""
    async with open_slack_rig(tmp_path, CONFIG) as rig:
        await rig.command("app to staging")
        await rig.settle()  # the command's work, after its ack, has started the deployment
        [row] = await rig.deployer.store.list_deployments(limit=1)
        await rig.final(str(row["id"]))
        await rig.showing(str(row["id"]), "Succeeded")
        called = {call.method for call in rig.slack.calls}
    assert called and called <= web_api_methods_called(ROOT / "bot")


# -- the command, the URLs and events --------------------------------------------------------------------------------


async def test_the_commands_the_manifest_declares_are_the_ones_the_bot_answers(tmp_path: Path) -> None:
    declared = {str(c["command"]) for c in manifest()["features"]["slash_commands"]}
    async with open_slack_rig(tmp_path, CONFIG) as rig:
        answered = set()
        for command in sorted(declared | {"/other", "/deploy-other"}):
            status, text = await rig.post(slash_body_for(command, "help"))
            if status == 200:
                assert "/deploy" in text
                answered.add(command)
            else:
                assert status == 404, (command, status, text)  # bolt: no listener for it
    assert answered == declared


@pytest.mark.parametrize("url", sorted(set(manifest_urls(manifest()))))
async def test_each_url_is_a_route_the_server_serves(tmp_path: Path, url: str) -> None:
    path = urlsplit(url).path
    async with open_slack_rig(tmp_path, CONFIG) as rig:
        posts = {r.resource.canonical for r in rig.app.router.routes() if r.method == "POST" and r.resource}
        assert path in posts
        command = slash_body_for("/deploy", "help")
        async with rig.session.post(rig.url + path, data=command, headers=signed(command)) as response:
            assert response.status == 200 and "/deploy" in (await response.json())["text"]
        click = page_link_click()
        async with rig.session.post(rig.url + path, data=click, headers=signed(click)) as response:
            assert response.status == 200  # a click Slack sends to the interactivity URL is acknowledged


async def test_the_bot_listens_to_no_events_and_the_manifest_subscribes_to_none(tmp_path: Path) -> None:
    assert "event_subscriptions" not in manifest()["settings"]
    async with open_slack_rig(tmp_path, CONFIG) as rig:
        for event in ("app_mention", "message", "reaction_added", "member_joined_channel"):
            body = json.dumps(
                {
                    "type": "event_callback",
                    "team_id": "T0TEAM",
                    "api_app_id": "A0APP",
                    "event_id": f"Ev{event}",
                    "event_time": int(time.time()),
                    "event": {"type": event, "user": "U0ALICE", "channel": "C0DEPLOYS", "ts": "1.1"},
                }
            )
            headers = {**signed(body), "Content-Type": "application/json"}
            status, _ = await rig.post(body, headers)
            assert status == 404, event  # nothing to subscribe to
