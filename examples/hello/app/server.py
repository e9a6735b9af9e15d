"""The hello example app: a stdlib-only HTTP server that deploybot deploys in its demo and tests.

It answers `GET /` with its version and host so a deployment's progress is visible with curl, and
`GET /health` for ValidateService and load balancers. A revision can be made deliberately unhealthy
(to try out failures and rollbacks) with `HELLO_FAIL_HEALTH=1` or a `fail-health` file next to this one, and
a build that passes its health check but answers `GET /` with 500 (what only traffic alarms catch) with
`HELLO_FAIL_REQUESTS=1` or a `fail-requests` file.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent
FAIL_HEALTH_MARKER = HERE / "fail-health"
FAIL_REQUESTS_MARKER = HERE / "fail-requests"


def read_version() -> str:
    """The VERSION file is installed next to this script by the AppSpec `files` section."""
    try:
        return (HERE / "VERSION").read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


def health_should_fail() -> bool:
    """Checked on every request, so a test can break a running server by touching the marker."""
    return os.environ.get("HELLO_FAIL_HEALTH") == "1" or FAIL_HEALTH_MARKER.exists()


def requests_should_fail() -> bool:
    return os.environ.get("HELLO_FAIL_REQUESTS") == "1" or FAIL_REQUESTS_MARKER.exists()


class HelloHandler(BaseHTTPRequestHandler):
    app_version = read_version()
    host_name = os.environ.get("DEPLOYBOT_HOST") or socket.gethostname()

    def do_GET(self) -> None:
        if self.path == "/health":
            if health_should_fail():
                self.reply(HTTPStatus.INTERNAL_SERVER_ERROR, "unhealthy\n")
            else:
                self.reply(HTTPStatus.OK, f"ok {self.app_version}\n")  # says which revision answers
        elif self.path == "/" and requests_should_fail():
            self.reply(HTTPStatus.INTERNAL_SERVER_ERROR, f"hello {self.app_version} is broken\n")
        elif self.path == "/":
            self.reply(HTTPStatus.OK, f"hello {self.app_version} from {self.host_name}\n")
        else:
            self.reply(HTTPStatus.NOT_FOUND, "not found\n")

    def reply(self, status: HTTPStatus, text: str) -> None:
        body = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet: health checks every few seconds would otherwise flood the log."""


class HelloServer(ThreadingHTTPServer):
    """``request_queue_size`` is the listen backlog: the stdlib's 5 drops connections under the few hundred requests
    a second the README's traffic demo sends when the machine is busy; 128 is the usual system default (SOMAXCONN)."""

    request_queue_size = 128


def stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """ApplicationStop sends SIGTERM; leaving serve_forever via SystemExit closes the socket cleanly."""
    raise SystemExit(0)


def main() -> int:
    port = os.environ.get("PORT")
    if not port:
        print("hello: PORT is not set; deploybot passes the host's service port in PORT", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    with HelloServer(("127.0.0.1", int(port)), HelloHandler) as server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
