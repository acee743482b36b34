"""`byoc regions --refresh` against real HTTP servers on 127.0.0.1: moto's EC2, and one that refuses access."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import moto_server, run_byoc


def _env(endpoint: str, credentials: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",  # never probe the instance metadata service
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    if credentials:
        env |= {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    return env


def refresh(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_byoc("regions", "--cloud", "aws", "--refresh", "--output", "json", env=env)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


def test_live_offerings_agree_with_the_table(moto_endpoint: str) -> None:
    result = refresh(_env(moto_endpoint))
    assert result.returncode == 0, result.stderr
    rows = {r["region"]: r for r in json.loads(result.stdout)["regions"]}
    assert "p5.48xlarge" in rows["eu-west-2"]["live"]["instance_types"]
    assert "p5.48xlarge" in rows["eu-north-1"]["live"]["instance_types"]
    assert "p5.48xlarge" not in rows["eu-west-1"]["live"]["instance_types"]
    assert {r["live"]["summary"] for r in rows.values()} == {"same"}


def test_no_credentials_is_a_failure_not_a_traceback(moto_endpoint: str) -> None:
    result = refresh(_env(moto_endpoint, credentials=False))
    assert result.returncode == 1
    assert "no AWS credentials" in result.stderr
    assert "Traceback" not in result.stderr


def test_endpoint_gone(moto_endpoint: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()  # nothing listens on this port any more
    result = refresh(_env(f"http://127.0.0.1:{port}"))
    assert result.returncode == 1
    assert "cannot reach the EC2 API" in result.stderr
    assert "Traceback" not in result.stderr


class _Denying(BaseHTTPRequestHandler):
    """Answers every EC2 call the way EC2 does for a principal without ec2:DescribeInstanceTypeOfferings."""

    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>UnauthorizedOperation</Code>'
        b"<Message>You are not authorized to perform this operation.</Message></Error></Errors>"
        b"<RequestID>1</RequestID></Response>"
    )

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(403)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_access_denied_everywhere() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Denying)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = refresh(_env(f"http://127.0.0.1:{server.server_address[1]}"))
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1
    assert "UnauthorizedOperation" in result.stderr
    assert "Traceback" not in result.stderr
