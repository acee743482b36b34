"""Shared pieces of the lifecycle tests: a BYOC_HOME per test, a moto server on 127.0.0.1, a local server speaking
the Service Quotas JSON API (moto does not answer EC2 quotas), the stand-in `pulumi`, and a runner for `byoc`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import moto_server, run_byoc

HERE = Path(__file__).resolve().parent


def aws_env(endpoint: str, quotas: str | None = None, credentials: bool = True) -> dict[str, str]:
    """Every AWS call to `endpoint` (and Service Quotas to `quotas`), never the real account or a profile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PULUMI_"))}
    env |= {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_DEFAULT_REGION": "eu-west-2",
    }
    if quotas:
        env["AWS_ENDPOINT_URL_SERVICE_QUOTAS"] = quotas
    if credentials:
        env |= {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    return env


def byoc(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_byoc(*args, env=env, timeout=timeout)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@dataclass
class QuotaServer:
    """Answers ServiceQuotasV20190624.GetServiceQuota / GetAWSDefaultServiceQuota like Service Quotas does.

    `applied`/`defaults`: quota code -> vCPUs; a code missing from `applied` answers NoSuchResourceException (no
    value was ever applied to the account); `deny` answers AccessDeniedException to everything."""

    applied: dict[str, float] = field(default_factory=dict)
    defaults: dict[str, float] = field(default_factory=dict)
    deny: bool = False
    calls: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def quota_server() -> Iterator[QuotaServer]:
    state = QuotaServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            action = self.headers.get("X-Amz-Target", "").split(".")[-1]
            code = body.get("QuotaCode", "")
            state.calls.append((action, code))
            table = state.applied if action == "GetServiceQuota" else state.defaults
            if state.deny:
                self._answer(400, {"__type": "AccessDeniedException", "Message": "not authorized"})
            elif action not in ("GetServiceQuota", "GetAWSDefaultServiceQuota"):
                self._answer(400, {"__type": "InvalidParameterException", "Message": action})
            elif code not in table:
                self._answer(400, {"__type": "NoSuchResourceException", "Message": f"The request failed: {code}"})
            else:
                quota = {"ServiceCode": "ec2", "QuotaCode": code, "QuotaName": code, "Value": table[code]}
                self._answer(200, {"Quota": quota})

        def _answer(self, status: int, data: dict[str, Any]) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@dataclass
class StandIn:
    """The stand-in `pulumi` on PATH (tests/lifecycle/standin_pulumi.py): argument and flow checks only."""

    bin: Path
    home: Path

    def mode(self, mode: str) -> None:
        (self.home / "mode").write_text(mode)

    def calls(self) -> list[dict[str, Any]]:
        path = self.home / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def commands(self) -> list[str]:
        return [" ".join(a for a in c["argv"] if not a.startswith("-"))[:40] for c in self.calls()]

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return base | {"PATH": f"{self.bin}{os.pathsep}{base.get('PATH', '')}", "STANDIN_DIR": str(self.home)}


@pytest.fixture
def standin(tmp_path: Path) -> StandIn:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    home = tmp_path / "standin"
    home.mkdir()
    script = bin_dir / "pulumi"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} {HERE / "standin_pulumi.py"} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return StandIn(bin_dir, home)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "byoc-home"
    monkeypatch.setenv("BYOC_HOME", str(path))
    return path


def no_pulumi_path() -> str:
    """PATH without any `pulumi` (none is installed here; this keeps a developer's own out of the tests)."""
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if not (Path(p) / "pulumi").exists())
