"""A real Prometheus scrapes the gateway and answers the TTFT quantile the recording rules are built on."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.runtime.conftest import LOG_FILES, MODEL, GatewayUnderTest, free_port, http, wait_for

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


def test_prometheus_scrapes_the_gateway_and_computes_the_ttft_quantile(
    gateway: GatewayUnderTest, tmp_path: Path
) -> None:
    port = free_port()
    target = urllib.parse.urlsplit(gateway.metrics_url).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    log = tmp_path / "prometheus.log"
    LOG_FILES.append(log)
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    def query(expr: str) -> list[dict[str, object]]:
        answer = http("GET", f"{base}/api/v1/query?query={urllib.parse.quote(expr)}")
        assert answer.status == 200, answer.body
        result: list[dict[str, object]] = answer.json()["data"]["result"]
        return result

    try:

        def prometheus_ready() -> bool:
            assert server.poll() is None, log.read_text()
            with contextlib.suppress(OSError):
                return http("GET", base + "/-/ready").status == 200
            return False

        wait_for(prometheus_ready, timeout=30, what="Prometheus to start")
        client = gateway.client()
        deadline = time.monotonic() + 45
        value = math.nan
        while time.monotonic() < deadline and math.isnan(value):
            assert server.poll() is None, log.read_text()
            with contextlib.suppress(OSError):
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=3, stream=True
                ).close()
                client.completions.create(model=MODEL, prompt="One two", max_tokens=3)
                result = query(TTFT_P50)
                if result:
                    sample = result[0]["value"]
                    assert isinstance(sample, list)
                    value = float(sample[1])
            time.sleep(0.5)
        assert not math.isnan(value), f"no TTFT quantile after 45 s:\n{log.read_text()[-2000:]}"
        assert 0 < value < 60
        up = query('up{job="gateway"}')
        assert up and up[0]["value"][1] == "1"  # type: ignore[index]
        slo = query("byoc_slo_ttft_p95_seconds")
        assert slo and float(slo[0]["value"][1]) == 1.5  # type: ignore[index]
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
