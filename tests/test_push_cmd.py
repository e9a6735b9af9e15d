"""``deploybot push``: argument and config errors (exit 2, nothing uploaded), and the upload to S3 (moto in server
mode) followed by the registration request, received by a small aiohttp server standing in for deploybot's API
(the real server's side is covered end to end elsewhere)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.cli import main
from engine.adapters.aws.accounts import AwsClients
from tests.moto_support import aws, aws_env, moto_endpoint, moto_reset  # noqa: F401

HELLO = Path(__file__).resolve().parent.parent / "examples" / "hello"
BUCKET = "artifacts"


@dataclass
class FakeApi:
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    answer: tuple[int, dict[str, Any]] | None = None


@pytest.fixture
async def api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeApi]:
    fake = FakeApi()

    async def revisions(request: web.Request) -> web.Response:
        body = await request.json()
        fake.requests.append({"body": body, "auth": request.headers.get("Authorization")})
        if fake.answer is not None:
            return web.json_response(fake.answer[1], status=fake.answer[0])
        s3 = body["s3"]
        return web.json_response(
            {"sha256": "f" * 64, "size": 1, "source": f"s3://{s3['bucket']}/{s3['key']}", "location": {"s3": s3}},
            status=201,
        )

    app = web.Application()
    app.router.add_post("/api/v1/revisions", revisions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("DEPLOYBOT_TOKEN", "t0ken")
    try:
        yield fake
    finally:
        await runner.cleanup()


async def deploybot(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


def config_file(tmp_path: Path, endpoint: str) -> Path:
    path = tmp_path / "deploybot.yml"
    path.write_text(
        f"""\
aws:
  local: {{region: us-east-1, endpoint_url: "{endpoint}"}}
hosts:
  - name: web-1
applications:
  hello:
    environments: [prod]
    deployment_groups:
      prod:
        targets: {{hosts: [web-1]}}
"""
    )
    return path


# -- usage errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--source", "/no/such/dir", "--to", "s3://artifacts/x"], "--source /no/such/dir: not a directory"),
        (["--source", str(HELLO / "appspec.yml"), "--to", "s3://artifacts/x"], "not a directory"),
        (["--source", str(HELLO), "--to", "artifacts/x"], "--to: expected s3://BUCKET/PREFIX"),
        (["--source", str(HELLO), "--to", "s3://a/x"], "'a' is not an S3 bucket name"),
        (["--source", str(HELLO), "--to", "s3://artifacts", "--account", "prod"], "give --config FILE too"),
        (["--source", str(HELLO), "--to", "s3://artifacts", "--config", "/no/such.yml"], "cannot read /no/such.yml"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["push", "hello", *argv]) == 2
    assert message in capsys.readouterr().err


def test_an_unknown_account_of_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_file(tmp_path, "http://127.0.0.1:9")
    argv = ["push", "hello", "--source", str(HELLO), "--to", "s3://artifacts", "--config", str(config)]
    assert main([*argv, "--account", "prod"]) == 2
    assert "has no aws account 'prod' (accounts: local)" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["--source", "--to"])
def test_required_options(missing: str, capsys: pytest.CaptureFixture[str]) -> None:
    options = {"--source": str(HELLO), "--to": "s3://artifacts/x"}
    del options[missing]
    with pytest.raises(SystemExit) as exit_info:
        main(["push", "hello", *(item for pair in options.items() for item in pair)])
    assert exit_info.value.code == 2
    assert missing in capsys.readouterr().err


# -- upload + registration ---------------------------------------------------------------------------------------


async def test_push_uploads_and_registers(
    aws: AwsClients,  # noqa: F811
    api: FakeApi,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s3 = await aws.get("s3")
    await s3.create_bucket(Bucket=BUCKET)
    assert aws.account.endpoint_url
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.account.endpoint_url)  # honoured by botocore itself

    code = await deploybot(
        "push", "hello", "--source", str(HELLO), "--to", f"s3://{BUCKET}/releases", "--description", "v1",
        "--server", api.url,
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    [request] = api.requests
    sent = request["body"]
    key = sent["s3"]["key"]
    assert key.startswith("releases/hello-") and key.endswith(".tar.gz")
    assert sent == {
        "s3": {"bucket": BUCKET, "key": key, "version": None, "etag": sent["s3"]["etag"], "bundle_type": "tgz"},
        "application": "hello",
        "description": "v1",
    }
    assert request["auth"] == "Bearer t0ken"
    head = await s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ETag"].strip('"') == sent["s3"]["etag"]
    assert key.endswith(f"-{head['Metadata']['sha256'][:12]}.tar.gz")
    etag = sent["s3"]["etag"]
    assert f"deploy it with: deploybot deploy hello --to ENV --revision 's3://{BUCKET}/{key}?etag={etag}'" in out.out


async def test_push_uses_the_config_account_and_prints_json(
    aws: AwsClients,  # noqa: F811
    api: FakeApi,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s3 = await aws.get("s3")
    await s3.create_bucket(Bucket=BUCKET)
    assert aws.account.endpoint_url
    config = config_file(tmp_path, aws.account.endpoint_url)
    code = await deploybot(
        "push", "hello", "--source", str(HELLO), "--to", f"s3://{BUCKET}", "--config", str(config),
        "--account", "local", "--server", api.url, "--json",
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    document = json.loads(out.out)
    assert document["revision"]["sha256"] == "f" * 64
    location = document["location"]
    assert location["key"] == f"hello-{location['sha256'][:12]}.tar.gz" and location["bucket"] == BUCKET
    listed = await s3.list_objects_v2(Bucket=BUCKET)
    assert [o["Key"] for o in listed["Contents"]] == [location["key"]]


async def test_failures_exit_1_with_the_reason(
    aws: AwsClients,  # noqa: F811
    api: FakeApi,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert aws.account.endpoint_url
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.account.endpoint_url)
    argv = ("push", "hello", "--source", str(HELLO), "--to", f"s3://{BUCKET}/r", "--server", api.url)
    assert await deploybot(*argv) == 1  # no bucket yet
    assert "error: s3: NoSuchBucket" in capsys.readouterr().err
    assert api.requests == []

    await (await aws.get("s3")).create_bucket(Bucket=BUCKET)
    api.answer = (400, {"error": "AppSpecInvalid", "message": "bad appspec", "problems": []})
    assert await deploybot(*argv) == 1
    assert "error: bad appspec" in capsys.readouterr().err
