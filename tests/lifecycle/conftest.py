"""Shared pieces of the lifecycle tests: a BYOC_HOME per test, a moto server on 127.0.0.1, a local server speaking
the Service Quotas JSON API (moto does not answer EC2 quotas), recorded Google API responses on 127.0.0.1 (`gcp_api`),
the stand-in `pulumi`, and a runner for `byoc`."""

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


GCP_DATA = HERE / "data" / "gcp"
GCP_PROJECT = "byoc-test"


def gcp_recorded(name: str) -> Any:
    """One recorded Google API response (tests/lifecycle/data/gcp/README.md says what each is shaped from)."""
    return json.loads((GCP_DATA / name).read_text())


def gcp_routes() -> dict[tuple[str, str], tuple[int, str | dict[str, Any]]]:
    """(method, path) -> (status, recorded file): project byoc-test with deployment qwen-eu's leftovers."""
    compute = f"/compute/v1/projects/{GCP_PROJECT}"
    ring = f"/v1/projects/{GCP_PROJECT}/locations/europe-west4/keyRings/byoc-qwen-eu/cryptoKeys"
    routes: dict[tuple[str, str], tuple[int, str | dict[str, Any]]] = {
        ("GET", compute): (200, "compute/projects.get.json"),
        ("GET", f"{compute}/regions/europe-west4"): (200, "compute/regions.get.europe-west4.json"),
        ("GET", f"{compute}/aggregated/acceleratorTypes"): (
            200,
            "compute/acceleratorTypes.aggregatedList.nvidia-l4.json",
        ),
        ("GET", f"{compute}/aggregated/instances"): (200, "compute/instances.aggregatedList.empty.json"),
        ("GET", f"{compute}/aggregated/disks"): (200, "compute/disks.aggregatedList.qwen-eu.json"),
        ("GET", f"{compute}/global/firewalls"): (200, "compute/firewalls.list.json"),
        ("GET", f"{compute}/global/networks"): (200, "compute/networks.list.json"),
        ("GET", f"{compute}/regions/europe-west4/routers"): (200, "compute/routers.list.europe-west4.json"),
        ("GET", f"{compute}/regions/europe-west4/subnetworks"): (200, "compute/subnetworks.list.europe-west4.json"),
        ("GET", f"/v1/projects/{GCP_PROJECT}/locations/-/clusters"): (200, "container/clusters.list.json"),
        ("GET", f"/v2/projects/{GCP_PROJECT}/sinks"): (200, "logging/sinks.list.json"),
        ("GET", "/storage/v1/b"): (200, "storage/buckets.list.json"),
        ("GET", "/storage/v1/b/byoc-qwen-eu-artifacts-123456789012/o"): (200, "storage/objects.list.artifacts.json"),
        ("GET", "/storage/v1/b/byoc-qwen-eu-access-logs-123456789012/o"): (200, "storage/objects.list.empty.json"),
        ("GET", ring): (200, "cloudkms/cryptoKeys.list.json"),
        ("GET", f"/v1/projects/{GCP_PROJECT}/serviceAccounts"): (200, "iam/serviceAccounts.list.json"),
    }
    for key in ("artifacts", "disks", "logs", "secrets"):
        routes["GET", f"{ring}/{key}/cryptoKeyVersions"] = (200, f"cloudkms/cryptoKeyVersions.list.{key}.json")
    return routes


@dataclass
class GcpApi:
    """Google's Compute, GKE, Storage, Cloud KMS, IAM and Logging REST APIs as recorded responses on 127.0.0.1.

    `routes`: (method, path) -> (status, recorded file or a document derived from one), changeable per test; a
    GET of anything else answers 404.
    DELETEs answer as the APIs do (a Compute operation DONE, a GKE operation RUNNING then DONE, Storage 204,
    others {}), `busy[path]` DELETEs first answer 400 resourceInUseByAnotherResource; `:destroy` on a key version
    answers it DESTROY_SCHEDULED. `calls`: every request as (method, path, query)."""

    routes: dict[tuple[str, str], tuple[int, str | dict[str, Any]]] = field(default_factory=gcp_routes)
    busy: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Every Google API call to this server, with a fake token and project; never ADC or a real project."""
        env = {k: v for k, v in (base or dict(os.environ)).items() if not k.startswith(("GOOGLE_", "CLOUDSDK_"))}
        return env | {
            "BYOC_GCP_ENDPOINT": self.url,
            "GOOGLE_OAUTH_ACCESS_TOKEN": "ya29.recorded-responses-only",
            "GOOGLE_CLOUD_PROJECT": GCP_PROJECT,
        }

    def deletes(self) -> list[str]:
        return [f"{m} {p}" for m, p, _ in self.calls if m in ("DELETE", "POST")]

    def answer(self, method: str, path: str) -> tuple[int, Any]:
        if (method, path) in self.routes:
            status, recorded = self.routes[method, path]
            return status, gcp_recorded(recorded) if isinstance(recorded, str) else recorded
        if method == "GET" and "/operations/" in path:
            return 200, gcp_recorded("container/operation.done.json")
        if method == "POST" and path.endswith(":destroy"):
            name = path.removeprefix("/v1/").removesuffix(":destroy")
            return 200, {"name": name, "state": "DESTROY_SCHEDULED", "destroyTime": "2027-01-05T16:00:00.000Z"}
        if method == "DELETE":
            if self.busy.get(path, 0) > 0:
                self.busy[path] -= 1
                return 400, gcp_recorded("errors/400.resourceInUse.json")
            if path.startswith("/compute/"):
                operation = gcp_recorded("compute/operation.done.json")
                return 200, operation | {"targetLink": f"https://www.googleapis.com{path}"}
            if path.startswith("/v1/") and "/clusters/" in path:
                return 200, gcp_recorded("container/operation.running.json")
            if path.startswith("/storage/"):
                return 204, None
            return 200, {}
        return 404, gcp_recorded("errors/404.json")


@pytest.fixture
def gcp_api() -> Iterator[GcpApi]:
    from urllib.parse import parse_qsl, urlsplit

    state = GcpApi()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            if not self.headers.get("Authorization", "").startswith("Bearer "):
                status, data = 401, {"error": {"code": 401, "message": "no token", "status": "UNAUTHENTICATED"}}
            else:
                state.calls.append((self.command, parts.path, dict(parse_qsl(parts.query))))
                status, data = state.answer(self.command, parts.path)
            payload = b"" if data is None else json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()
