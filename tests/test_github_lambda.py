"""A merge into a Lambda application's repository: the commit's AppSpec is checked as a Lambda AppSpec (not a
server one) and deployed, moving the alias in moto — the same merge flow as for host fleets."""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from conftest import eventually
from fake_github import FakeGitHub, push_payload, signed

from bot.app import create_app
from bot.assembly import assemble_deployer
from bot.github import GITHUB
from bot.settings import Settings
from engine.adapters.aws.accounts import AwsClients
from engine.core.config.parse import parse_config
from tests.aws_fixtures import alias_now, create_lambda_function
from tests.moto_support import REGION, aws, aws_env, moto_endpoint, moto_reset  # noqa: F401

SECRET = "webhook-secret"
SHA = "c" * 40


async def test_a_merge_deploys_the_lambda_appspec_of_the_commit(
    tmp_path: Path,
    aws: AwsClients,  # noqa: F811
    moto_reset: str,  # noqa: F811
) -> None:
    setup = await create_lambda_function(aws)
    github = FakeGitHub()
    github.commits[SHA] = {
        "appspec.yml": (
            "version: 0.0\nResources:\n  - api:\n      Type: AWS::Lambda::Function\n      Properties:\n"
            f"        Name: {setup.function_name}\n        Alias: {setup.alias}\n"
            '        CurrentVersion: "1"\n        TargetVersion: "2"\n'
        )
    }
    await github.start()
    config = parse_config(
        f"server: {{data_dir: var}}\naws:\n  default: {{region: {REGION}, endpoint_url: '{moto_reset}'}}\n"
        "applications:\n  fn:\n    platform: lambda\n    environments: [prod]\n"
        "    github: {repository: acme/fn, auto_deploy: {branch: main, to: prod}}\n"
        "    deployment_groups:\n"
        # prod is production: merges deploy there only when its deployers list the integration user
        "      prod: {deployment_config: CodeDeployDefault.LambdaAllAtOnce, deployers: [github]}\n",
        base_dir=str(tmp_path),
    )
    deployer = await assemble_deployer(config, data_dir=tmp_path / "var")
    environ = {"GITHUB_WEBHOOK_SECRET": SECRET, "GITHUB_TOKEN": "ghp_test", "GITHUB_API_URL": github.url}
    app = create_app(Settings.from_env(environ, data_dir=tmp_path / "var"), deployer=deployer)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            body, headers = signed(SECRET, "push", push_payload("acme/fn", "main", SHA), "delivery-1")
            async with client.post("/github/webhook", data=body, headers=headers) as response:
                assert response.status == 202
            await app[GITHUB].idle()

            async def finished() -> bool:
                history = await deployer.history("fn")
                return bool(history) and history[0]["status"] in ("Succeeded", "Failed", "Stopped")

            await eventually(finished, "the merge's deployment finished")
            history = await deployer.history("fn")
    finally:
        await deployer.close()
        await github.close()
    [deployment] = history
    assert deployment["status"] == "Succeeded", deployment
    assert deployment["revision"]["commit"] == SHA
    assert [t["name"] for t in deployment["targets"]] == ["api:live"]
    assert await alias_now(aws, setup) == ("2", {})
