"""A stand-in AWS for trying the Lambda platform offline: moto in server mode on 127.0.0.1:5005 with a function
``greeter`` (versions 1 and 2, alias ``live`` → 1) and a hook function ``greeter-check``.

    .venv/bin/python examples/aws/moto_demo.py          # leave it running
    make run CONFIG=config/deploybot.aws.yml             # in another terminal

Real AWS needs none of this: point the config's ``aws`` account at your region (and drop ``endpoint_url``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import urllib.request
import zipfile

import boto3
from moto.server import ThreadedMotoServer

HOST, PORT = "127.0.0.1", 5005
ENDPOINT = f"http://{HOST}:{PORT}"
ROLE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def package(body: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", body)
    return buffer.getvalue()


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log would drown the one line that matters
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "testing")
    server = ThreadedMotoServer(ip_address=HOST, port=PORT, verbose=False)
    server.start()
    # moto's Lambda without Docker (invoke answers at once); must be set before any function exists.
    request = urllib.request.Request(
        f"{ENDPOINT}/moto-api/config",
        data=json.dumps({"lambda": {"use_docker": False}}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).close()
    session = boto3.session.Session(region_name="us-east-1")
    iam = session.client("iam", endpoint_url=ENDPOINT)
    role = iam.create_role(RoleName="greeter", AssumeRolePolicyDocument=json.dumps(ROLE_POLICY))["Role"]["Arn"]
    functions = session.client("lambda", endpoint_url=ENDPOINT)
    common = {"Runtime": "python3.11", "Role": role, "Handler": "handler.handler"}
    functions.create_function(
        FunctionName="greeter", Code={"ZipFile": package("def handler(e, c): return 1")}, **common
    )
    functions.publish_version(FunctionName="greeter")
    functions.update_function_code(FunctionName="greeter", ZipFile=package("def handler(e, c): return 2"))
    functions.publish_version(FunctionName="greeter")
    functions.create_alias(FunctionName="greeter", Name="live", FunctionVersion="1")
    functions.create_function(
        FunctionName="greeter-check", Code={"ZipFile": package("def handler(e, c): return e")}, **common
    )
    print(f"moto on {ENDPOINT}: function greeter (versions 1, 2; alias live -> 1), hook greeter-check", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
