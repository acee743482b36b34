"""A real Prometheus scrapes the gateway and answers the TTFT quantile the recording rules are built on."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.conftest import LOG_FILES, MODEL, GatewayUnderTest, free_port, http, metric, wait_for

TTFT_P50 = "histogram_quantile(0.5, sum by (le) (rate(byoc_gateway_time_to_first_token_seconds_bucket[1m])))"


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/test.sh (it installs the Debian prometheus package)")
    return path


def test_gateway_metrics_pass_promtool(gateway: GatewayUnderTest) -> None:
    gateway.client().completions.create(model=MODEL, prompt="One", max_tokens=2)
    text = http("GET", gateway.metrics_url).body
    result = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=text, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


@contextlib.contextmanager
def running_prometheus(
    folder: Path, target: str, scrape_interval: str = "1s", labels: dict[str, str] | None = None
) -> Iterator[Callable[[str], list[dict[str, Any]]]]:
    """A real Prometheus scraping one target; yields `query(expr)` -> the instant vector's samples."""
    port = free_port()
    config = folder / "prometheus.yml"
    static = {"targets": [target], **({"labels": labels} if labels else {})}
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
                "scrape_configs": [{"job_name": "gateway", "static_configs": [static]}],
            }
        )
    )
    log = folder / "prometheus.log"
    LOG_FILES.append(log)
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    def query(expr: str) -> list[dict[str, Any]]:
        assert server.poll() is None, log.read_text()
        answer = http("GET", f"{base}/api/v1/query?query={urllib.parse.quote(expr)}")
        assert answer.status == 200, answer.body
        result: list[dict[str, Any]] = answer.json()["data"]["result"]
        return result

    def prometheus_ready() -> bool:
        assert server.poll() is None, log.read_text()
        with contextlib.suppress(OSError):
            return http("GET", base + "/-/ready").status == 200
        return False

    try:
        wait_for(prometheus_ready, timeout=30, what="Prometheus to start")
        yield query
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def test_prometheus_scrapes_the_gateway_and_computes_the_ttft_quantile(
    gateway: GatewayUnderTest, tmp_path: Path
) -> None:
    target = urllib.parse.urlsplit(gateway.metrics_url).netloc
    with running_prometheus(tmp_path, target) as query:
        client = gateway.client()
        deadline = time.monotonic() + 45
        value = math.nan
        while time.monotonic() < deadline and math.isnan(value):
            with contextlib.suppress(OSError):
                # streamed answers read to the end: TTFT is measured on streamed answers only
                list(
                    client.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=3, stream=True
                    )
                )
                client.completions.create(model=MODEL, prompt="One two", max_tokens=3)
                result = query(TTFT_P50)
                if result:
                    value = float(result[0]["value"][1])
            time.sleep(0.5)
        assert not math.isnan(value), "no TTFT quantile after 45 s"
        assert 0 < value < 60
        up = query('up{job="gateway"}')
        assert up and up[0]["value"][1] == "1"
        slo = query("byoc_slo_ttft_p95_seconds")
        assert slo and float(slo[0]["value"][1]) == 1.5


def _sample(gateway: GatewayUnderTest, name: str) -> float:
    return metric(gateway.server.metrics(), name, model=MODEL, addon="base") or 0.0


def test_ttft_is_the_first_tokens_time_never_the_whole_answer(gateway: GatewayUnderTest) -> None:
    """Long answers on a healthy deployment: the TTFT histogram holds first tokens only, so the SLO alert is quiet."""
    client = gateway.client()
    count = "byoc_gateway_time_to_first_token_seconds_count"
    ttft_count, ttft_sum = _sample(gateway, count), _sample(gateway, "byoc_gateway_time_to_first_token_seconds_sum")
    duration_sum = _sample(gateway, "byoc_gateway_request_duration_seconds_sum")
    long: dict[str, Any] = {"max_tokens": 600, "temperature": 0, "extra_body": {"ignore_eos": True}}
    for _ in range(2):
        client.completions.create(model=MODEL, prompt="One two", **long)
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], **long)
    # the gateway cannot see a non-streamed answer's first token: it records none (the duration has them)
    assert _sample(gateway, count) == ttft_count
    answered = _sample(gateway, "byoc_gateway_request_duration_seconds_sum") - duration_sum
    for _ in range(2):
        list(client.completions.create(model=MODEL, prompt="One two", stream=True, **long))
    assert _sample(gateway, count) == ttft_count + 2
    first_tokens = _sample(gateway, "byoc_gateway_time_to_first_token_seconds_sum") - ttft_sum
    assert first_tokens / 2 < 0.2 * (answered / 4), (first_tokens, answered)  # first tokens, not whole answers


def test_activation_stays_on_under_light_traffic_and_goes_off_after_the_window(
    gateway: GatewayUnderTest, tmp_path: Path
) -> None:
    """KEDA's activity query over a real Prometheus: one short request every 3 s keeps every sample active, though
    the in-flight gauge is 0 in most scrapes; once traffic stops, the query reads 0 after the window."""
    from stacks.k8s.serving import activity_query

    window = 8
    query_text = activity_query("byoc-test", window)
    target = urllib.parse.urlsplit(gateway.metrics_url).netloc
    client = gateway.client()
    with running_prometheus(tmp_path, target, "1s", {"namespace": "byoc-test"}) as query:

        def value(expr: str) -> float:
            result = query(expr)
            return float(result[0]["value"][1]) if result else 0.0

        wait_for(lambda: query('up{job="gateway"} == 1'), timeout=20, what="the first scrape")
        active: list[float] = []
        in_flight: list[float] = []
        started = time.monotonic()
        next_request = last_request = started
        while time.monotonic() - started < 3 * window:
            now = time.monotonic()
            if now >= next_request:
                client.completions.create(model=MODEL, prompt="One", max_tokens=1)
                last_request = time.monotonic()
                next_request = now + 3
            if now - started > window:  # once the window has filled (as after a deployment's first minute)
                active.append(value(query_text))
                in_flight.append(value('sum(byoc_gateway_in_flight_requests{namespace="byoc-test"})'))
            time.sleep(0.5)
        assert len(active) >= 10
        assert all(v == 1 for v in active), active
        assert sum(1 for v in in_flight if v > 0) < len(in_flight) / 2  # what the instantaneous gauge saw
        wait_for(lambda: value(query_text) == 0, timeout=3 * window, what="the activity to end")
        assert time.monotonic() - last_request >= window - 1  # idle only once the window has passed
