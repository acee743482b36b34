"""Two regions on one machine: region eu-west-2 (gateway + CPU engine on 127.0.0.1) and region eu-north-1 (gateway
over TLS + CPU engine on 127.0.0.2), peers of each other in the residency set EUROPE. A region whose engine dies
spills to the other without a client-visible error; a spilled request is never spilled again; a peer outside the
residency set refuses to start; a peer that answers as another region is never used."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import ROOT
from tests.runtime.conftest import (
    ENGINE_MODEL,
    KEYS,
    MODEL,
    STARTUP_SECONDS,
    Http,
    Server,
    http,
    metric,
    wait_for,
)
from tests.runtime.standin import StandInEngine

REGION_A, REGION_B = "eu-west-2", "eu-north-1"
HOST_A, HOST_B = "127.0.0.1", "127.0.0.2"
SPILLED_FROM = "X-Byoc-Spilled-From"


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def access_lines(server: Server) -> list[str]:
    return [line for line in server.log.read_text().splitlines() if " byoc.gateway.access " in line]


def start_engine_at(models: dict[str, Path], folder: Path, host: str, port: int) -> Server:
    args = ["engine", "--model-dir", str(models["base"]), "--listen", f"{host}:{port}"]
    server = Server(f"engine-{host}", [*args, "--model-name", ENGINE_MODEL, "--threads", "1"], folder, port)
    server.url = f"http://{host}:{port}"
    server.wait()
    return server


def gateway_args(host: str, port: int, metrics_port: int, upstream: str, keys: Path, *extra: str) -> list[str]:
    return [
        "gateway",
        "--listen",
        f"{host}:{port}",
        "--metrics-listen",
        f"{host}:{metrics_port}",
        "--model",
        MODEL,
        "--max-context",
        "2048",
        "--upstream",
        upstream,
        "--api-keys",
        str(keys),
        "--health-interval",
        "0.5",
        "--residency",
        "EUROPE",
        *extra,
    ]


@dataclass
class Region:
    name: str
    gateway: Server
    url: str  # the API, http:// or https://
    metrics_url: str
    engine: Server | None = None
    context: ssl.SSLContext | None = None  # trust for an https:// API

    def metrics(self) -> str:
        return http("GET", self.metrics_url).body.decode()

    def ready(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/ready", context=self.context, timeout=5) as answer:
            body: dict[str, Any] = json.loads(answer.read())
            return body

    def client(self) -> openai.OpenAI:
        http_client = openai.DefaultHttpxClient(verify=self.context) if self.context is not None else None
        return openai.OpenAI(
            base_url=self.url + "/v1", api_key=KEYS["ci"], max_retries=0, timeout=120, http_client=http_client
        )


def wait_ready(region: Region, timeout: float = STARTUP_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert region.gateway.process.poll() is None, region.gateway.log.read_text()
        with contextlib.suppress(OSError):
            if region.ready().get("upstreams_ready"):
                return
        time.sleep(0.1)
    raise AssertionError(region.gateway.log.read_text())


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Region B's gateway certificate, for 127.0.0.2 (the CA a peer trusts with --peer-ca-file: self-signed)."""
    folder = tmp_path_factory.mktemp("peer-tls")
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)),
            *("-days", "1", "-subj", f"/CN={HOST_B}", "-addext", f"subjectAltName=IP:{HOST_B}"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture(scope="module")
def regions(
    tiny_models: dict[str, Path], runtime_dir: Path, keys_file: Path, certificate: tuple[Path, Path]
) -> Iterator[tuple[Region, Region]]:
    cert, key = certificate
    engine_a = start_engine_at(tiny_models, runtime_dir, HOST_A, free_port(HOST_A))
    engine_b = start_engine_at(tiny_models, runtime_dir, HOST_B, free_port(HOST_B))
    port_a, port_b = free_port(HOST_A), free_port(HOST_B)
    metrics_a, metrics_b = free_port(HOST_A), free_port(HOST_B)
    # A -> B over TLS, verified against B's certificate; B -> A plain HTTP (allowed to loopback test peers only)
    args_a = gateway_args(HOST_A, port_a, metrics_a, engine_a.url, keys_file, "--region", REGION_A)
    args_a += ["--peer-region", f"{REGION_B}=https://{HOST_B}:{port_b}", "--peer-ca-file", str(cert)]
    args_a += ["--wake-timeout", "3"]
    args_b = gateway_args(HOST_B, port_b, metrics_b, engine_b.url, keys_file, "--region", REGION_B)
    args_b += ["--peer-region", f"{REGION_A}=http://{HOST_A}:{port_a}", "--tls-cert", str(cert), "--tls-key", str(key)]
    gateway_a = Server("gateway-a", args_a, runtime_dir, port_a)
    gateway_b = Server("gateway-b", args_b, runtime_dir, port_b)
    a = Region(REGION_A, gateway_a, f"http://{HOST_A}:{port_a}", f"http://{HOST_A}:{metrics_a}/metrics", engine_a)
    b = Region(
        REGION_B,
        gateway_b,
        f"https://{HOST_B}:{port_b}",
        f"http://{HOST_B}:{metrics_b}/metrics",
        engine_b,
        ssl.create_default_context(cafile=str(cert)),
    )
    try:
        wait_ready(a)
        wait_ready(b)
        yield a, b
    finally:
        for server in (gateway_a, gateway_b, engine_a, engine_b, a.engine, b.engine):
            if server is not None:
                server.stop()


def start_refused(flags: list[str]) -> subprocess.CompletedProcess[str]:
    """`byoc serve gateway` with these flags, expected to refuse to start."""
    command = [
        sys.executable,
        "-m",
        "byoc",
        "serve",
        "gateway",
        "--insecure-no-auth",
        "--upstream",
        "http://127.0.0.1:1",
    ]
    return subprocess.run([*command, *flags], check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)


def ask(region: Region) -> bool:
    """One completion through the region's gateway: True when it was answered (whatever the tiny random model says:
    sampled at temperature 1 its answer may be an end token alone, whose text is empty)."""
    answer = region.client().completions.create(model=MODEL, prompt="One two three", max_tokens=4)
    assert answer.model == MODEL and answer.usage is not None and answer.usage.completion_tokens >= 1
    return answer.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        # a EUROPE deployment never gets a US peer: refused at start, naming the flag and the region
        (["--region", REGION_A, "--residency", "EUROPE", "--peer-region", "us-east-1=https://10.1.0.5"], "us-east-1"),
        (["--region", REGION_A, "--residency", "EUROPE", "--peer-region", f"{REGION_B}=http://10.1.0.5"], "http://"),
        (["--region", REGION_A, "--peer-region", f"{REGION_B}=https://10.1.0.5"], "--residency"),
        (["--residency", "EUROPE", "--peer-region", f"{REGION_B}=https://10.1.0.5"], "--region"),
        (["--region", REGION_A, "--residency", "EUROPE", "--peer-region", "europe-west4=https://10.1.0.5"], "gcp"),
        # a DNS name that starts with "127." is not a loopback address: no plain http to it
        (
            ["--region", REGION_A, "--residency", "EUROPE", "--peer-region", f"{REGION_B}=http://127.evil.example"],
            "http://",
        ),
        (["--residency", "EUROPE"], "--region"),  # a residency set bounds a region: not given alone
    ],
)
def test_a_peer_outside_the_residency_set_or_unencrypted_refuses_to_start(flags: list[str], named: str) -> None:
    done = start_refused(flags)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --") and named in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_a_saturated_or_overloaded_region_spills_and_a_peer_of_another_region_is_never_used(
    regions: tuple[Region, Region], runtime_dir: Path, keys_file: Path, certificate: tuple[Path, Path]
) -> None:
    _, b = regions
    cert, _ = certificate
    standin = StandInEngine()
    port, metrics_port = free_port(HOST_A), free_port(HOST_A)
    args = gateway_args(HOST_A, port, metrics_port, standin.url, keys_file, "--region", "eu-west-1")
    args += ["--peer-region", f"{REGION_B}={b.url}", "--peer-ca-file", str(cert), "--max-concurrency", "1"]
    # the same gateway B under the name of another region: a URL that reaches a region it does not expect
    port_wrong, metrics_wrong = free_port(HOST_A), free_port(HOST_A)
    wrong_args = gateway_args(
        HOST_A, port_wrong, metrics_wrong, f"http://{HOST_A}:{free_port(HOST_A)}", keys_file, "--region", REGION_A
    )
    wrong_args += ["--peer-region", f"eu-central-1={b.url}", "--peer-ca-file", str(cert)]
    wrong_args += ["--wake-timeout", "1", "--spill-hold", "0"]
    a = Region(
        "eu-west-1", Server("gateway-a2", args, runtime_dir, port), "", f"http://{HOST_A}:{metrics_port}/metrics"
    )
    a.url = f"http://{HOST_A}:{port}"
    wrong = Region(REGION_A, Server("gateway-wrong", wrong_args, runtime_dir, port_wrong), "", "")
    wrong.url, wrong.metrics_url = f"http://{HOST_A}:{port_wrong}", f"http://{HOST_A}:{metrics_wrong}/metrics"
    try:
        wait_ready(a)
        wait_for(lambda: metric(a.metrics(), "byoc_gateway_peers_healthy") == 1, what="B healthy for A2")
        # saturated: the one admission slot is held by a slow answer; the next request would queue, B has room
        client = a.client()
        slow = threading.Thread(
            target=lambda: client.completions.create(model=MODEL, prompt="x", max_tokens=2, user="hold:8")
        )
        slow.start()
        wait_for(lambda: metric(a.metrics(), "byoc_gateway_in_flight_requests") == 1, what="the slot held")
        # on a loaded machine a probe of B may have timed out meanwhile: spill needs B healthy at that moment
        wait_for(lambda: metric(a.metrics(), "byoc_gateway_peers_healthy") == 1, what="B healthy for A2")
        assert ask(a)
        slow.join(timeout=30)
        text = a.metrics()
        spilled = {"from": "eu-west-1", "to": REGION_B}
        assert metric(text, "byoc_gateway_spillover_total", **spilled, reason="saturated") == 1
        # overloaded: the engine refuses work (429, as vLLM and SGLang do when full): B answers instead
        standin.status = 429
        assert ask(a)
        assert metric(a.metrics(), "byoc_gateway_spillover_total", **spilled, reason="overloaded") == 1
        assert metric(a.metrics(), "byoc_gateway_requests_total", code="200") == 3
        # a peer whose /ready names another region than --peer-region says is never healthy, never sent a request
        wait_for(lambda: _answers_ready(wrong), what="the gateway with a wrong peer up")
        time.sleep(1.5)  # several probes of B
        assert metric(wrong.metrics(), "byoc_gateway_peers_healthy") == 0
        received = metric(b.metrics(), "byoc_gateway_spilled_in_total", **{"from": "unknown"}) or 0
        with pytest.raises(openai.InternalServerError) as caught:
            wrong.client().completions.create(model=MODEL, prompt="x", max_tokens=2)
        assert caught.value.status_code == 503
        assert (metric(b.metrics(), "byoc_gateway_spilled_in_total", **{"from": "unknown"}) or 0) == received
        assert "answers as region 'eu-north-1', not 'eu-central-1': never used" in wrong.gateway.log.read_text()
    finally:
        a.gateway.stop()
        wrong.gateway.stop()
        standin.stop()


def test_a_region_scaled_to_zero_holds_briefly_then_spills_and_still_signals_the_wake(
    regions: tuple[Region, Region], runtime_dir: Path, keys_file: Path, certificate: tuple[Path, Path]
) -> None:
    """No replica known (a headless Service with no ready pod resolves to nothing): the first request waits
    --spill-hold for a wake here, then B answers it; the next ones go to B at once."""
    _, b = regions
    port, metrics_port = free_port(HOST_A), free_port(HOST_A)
    args = gateway_args(HOST_A, port, metrics_port, "dns+http://byoc-scaled-to-zero.invalid:8000", keys_file)
    args += ["--region", "eu-west-3", "--peer-region", f"{REGION_B}={b.url}", "--peer-ca-file", str(certificate[0])]
    args += ["--spill-hold", "1", "--wake-timeout", "60"]
    zero = Region("eu-west-3", Server("gateway-zero", args, runtime_dir, port), "", "")
    zero.url, zero.metrics_url = f"http://{HOST_A}:{port}", f"http://{HOST_A}:{metrics_port}/metrics"
    try:
        wait_for(lambda: _answers_ready(zero) and zero.ready()["ready"], timeout=STARTUP_SECONDS, what="holding")
        wait_for(lambda: metric(zero.metrics(), "byoc_gateway_peers_healthy") == 1, what="B healthy for it")
        began = time.monotonic()
        assert ask(zero)
        first = time.monotonic() - began
        began = time.monotonic()
        assert ask(zero)
        second = time.monotonic() - began
        assert first >= 1.0 and second < 1.0, (first, second)
        text = zero.metrics()
        labels = {"from": "eu-west-3", "to": REGION_B, "reason": "no_replica"}
        assert metric(text, "byoc_gateway_spillover_total", **labels) == 2
        assert metric(text, "byoc_gateway_pending_requests") == 0  # raised only while a spilled request runs
    finally:
        zero.gateway.stop()


def _answers_ready(region: Region) -> bool:
    """/ready answered at all (this gateway has no replica, so 503 with the holding state)."""
    assert region.gateway.process.poll() is None, region.gateway.log.read_text()
    return http("GET", region.url + "/ready").status in (200, 503) if _listening(region) else False


def _listening(region: Region) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST_A, region.gateway.port), timeout=1):
        return True
    return False


def test_a_region_whose_engine_dies_is_answered_by_its_peer_and_a_spilled_request_never_spills_again(
    regions: tuple[Region, Region], tiny_models: dict[str, Path], runtime_dir: Path
) -> None:
    a, b = regions
    assert ask(b)
    began = time.monotonic()
    assert ask(a)
    local = time.monotonic() - began
    wait_for(lambda: access_lines(a.gateway), timeout=5, what="A's access line")
    assert f" region={REGION_A}" in access_lines(a.gateway)[-1] and " spill=" not in access_lines(a.gateway)[-1]
    wait_for(lambda: metric(a.metrics(), "byoc_gateway_peers_healthy") == 1, what="A sees B healthy")
    wait_for(lambda: metric(b.metrics(), "byoc_gateway_peers_healthy") == 1, what="B sees A healthy")
    _engine_a_dies(a, b, local)
    _a_spilled_request_is_not_sent_back(a, b, tiny_models, runtime_dir)
    _both_regions_down(a, b)


def _engine_a_dies(a: Region, b: Region, local: float) -> None:
    """Region A's engine is killed: the next requests to A are answered by B, with no error the client sees."""
    assert a.engine is not None
    a.engine.kill()
    started = time.monotonic()
    assert ask(a)
    failover = time.monotonic() - started
    timings = []
    for _ in range(5):
        began = time.monotonic()
        assert ask(a)
        timings.append(time.monotonic() - began)
    stream = a.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=4, stream=True
    )
    assert "".join((chunk.choices[0].delta.content or "") for chunk in stream if chunk.choices)
    print(
        f"\nfailover: first request after the engine was killed answered by {REGION_B} in {failover * 1000:.0f} ms; "
        f"the next 5: mean {sum(timings) / len(timings) * 1000:.0f} ms, max {max(timings) * 1000:.0f} ms "
        f"(served in {REGION_A} before: {local * 1000:.0f} ms)"
    )
    assert failover < 10
    text = a.metrics()
    assert metric(text, "byoc_gateway_spillover_total", **{"from": REGION_A, "to": REGION_B}, reason="no_replica") == 7
    assert metric(text, "byoc_gateway_requests_total", code="200") == 8
    assert metric(b.metrics(), "byoc_gateway_spilled_in_total", **{"from": REGION_A}) == 7
    assert metric(text, "byoc_gateway_pending_requests") == 0
    wait_for(lambda: len(access_lines(a.gateway)) >= 8, timeout=5, what="A's access lines")
    for line in access_lines(a.gateway)[-7:]:
        # A's line: the serving region, why, and no tokens (B meters them): usage counted once, where served
        assert "key=ci " in line and "status=200 " in line, line
        assert "usage=peer " in line and "prompt_tokens=0 output_tokens=0 " in line, line
        assert f" region={REGION_B} spill=no_replica" in line, line
    served = [line for line in access_lines(b.gateway) if f"spilled_from={REGION_A}" in line]
    assert len(served) == 7
    for line in served:
        assert "key=ci " in line and "status=200 " in line and "usage=engine " in line, line  # the key, as sent
        assert f" region={REGION_B} spilled_from={REGION_A}" in line, line


def _a_spilled_request_is_not_sent_back(a: Region, b: Region, models: dict[str, Path], folder: Path) -> None:
    """A's engine back, B's engine killed: a request B got from A is answered 503 at once, not sent back to A
    (nor held for a wake); the same request without the header does go to A."""
    assert a.engine is not None and b.engine is not None
    a.engine = start_engine_at(models, folder, HOST_A, a.engine.port)
    wait_for(lambda: a.ready()["upstreams_ready"] == 1, what="A ready again")
    wait_for(lambda: metric(b.metrics(), "byoc_gateway_peers_healthy") == 1, what="B sees A healthy again")
    b.engine.kill()
    began = time.monotonic()
    answer = _post_b(b, {SPILLED_FROM: REGION_A})
    assert answer.status == 503 and answer.json()["error"]["code"] == "no_replica_ready", answer.body
    assert time.monotonic() - began < 2
    assert (metric(a.metrics(), "byoc_gateway_spilled_in_total", **{"from": REGION_B}) or 0) == 0
    assert _post_b(b, {}).status == 200
    assert metric(a.metrics(), "byoc_gateway_spilled_in_total", **{"from": REGION_B}) == 1


def _both_regions_down(a: Region, b: Region) -> None:
    """Both engines down: a clear 503 after A's wake timeout, no request going round between the regions."""
    assert a.engine is not None
    a.engine.kill()
    wait_for(lambda: metric(a.metrics(), "byoc_gateway_peers_healthy") == 0, what="A sees B down")
    spilled_before = metric(b.metrics(), "byoc_gateway_spilled_in_total", **{"from": REGION_A})
    with pytest.raises(openai.InternalServerError) as caught:
        ask(a)
    assert caught.value.status_code == 503
    assert "no model replica is ready here or in a peer region" in caught.value.message
    assert metric(b.metrics(), "byoc_gateway_spilled_in_total", **{"from": REGION_A}) == spilled_before
    assert (metric(a.metrics(), "byoc_gateway_spilled_in_total", **{"from": REGION_B}) or 0) == 1


def _post_b(b: Region, headers: dict[str, str]) -> Any:
    """A completion straight to B's gateway, with the headers given (urllib: the header is set by hand here)."""
    request = urllib.request.Request(
        b.url + "/v1/completions",
        data=json.dumps({"model": MODEL, "prompt": "One two", "max_tokens": 2}).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {KEYS['ci']}", "Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, context=b.context, timeout=30) as response:
            return Http(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Http(error.code, dict(error.headers), error.read())


def test_the_config_file_takes_the_same_region_settings_and_refusals(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"region: {REGION_A}\nresidency: EUROPE\npeer_regions: ['{REGION_B}=https://10.1.0.5', 'us-east-1=https://10.1.0.6']\n"
    )
    done = start_refused(["--config", str(config)])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: --peer-region us-east-1: us-east-1 is outside the residency set EUROPE")


class FakePeer:
    """A plain HTTP server on 127.0.0.x that answers /ready as `ready` says and a POST as `post` says, counting the
    POSTs that reach it (a prompt delivered)."""

    def __init__(self, host: str, ready: dict[str, Any], post: tuple[int, dict[str, str]] = (200, {})) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.posts = 0
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = json.dumps(ready).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                peer.posts += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers = post
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_peer_that_names_no_region_or_redirects_never_gets_a_prompt(runtime_dir: Path, keys_file: Path) -> None:
    """A gateway of a one-region deployment names no region in /ready: it is never taken for the peer configured
    (a wrong DNS record must not carry prompts out). A peer that answers a spilled request with a redirect is
    declined: the redirect is never followed to a host neither the https rule nor the residency check has seen."""
    ready = {"ready": True, "upstreams_ready": 1, "draining": False}
    nameless = FakePeer("127.0.0.3", ready)
    target = FakePeer("127.0.0.4", ready)  # where the redirect points
    redirecting = FakePeer(
        "127.0.0.5", {**ready, "region": REGION_B}, (307, {"Location": target.url + "/v1/completions"})
    )
    gateways = []
    try:
        for name, peer in (("nameless", nameless), ("redirecting", redirecting)):
            port, metrics_port = free_port(HOST_A), free_port(HOST_A)
            args = gateway_args(
                HOST_A, port, metrics_port, f"http://{HOST_A}:{free_port(HOST_A)}", keys_file, "--region", REGION_A
            )
            args += ["--peer-region", f"{REGION_B}={peer.url}", "--wake-timeout", "2", "--spill-hold", "0"]
            region = Region(REGION_A, Server(f"gateway-{name}", args, runtime_dir, port), "", "")
            region.url, region.metrics_url = f"http://{HOST_A}:{port}", f"http://{HOST_A}:{metrics_port}/metrics"
            gateways.append(region)
            wait_for(lambda region=region: _answers_ready(region), what=f"the gateway with the {name} peer up")
            time.sleep(1.5)  # several probes of the peer
            with pytest.raises(openai.APIStatusError) as caught:
                region.client().completions.create(model=MODEL, prompt="SECRET", max_tokens=2)
            assert caught.value.status_code == 503
        assert nameless.posts == 0  # never trusted as eu-north-1
        assert "answers as region None" in gateways[0].gateway.log.read_text()
        assert target.posts == 0  # the redirect was not followed
        assert redirecting.posts >= 1  # it was asked (spilled to), and declined by its redirect
    finally:
        for region in gateways:
            region.gateway.stop()
        for peer in (nameless, target, redirecting):
            peer.stop()
