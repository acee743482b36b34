"""A request held through a wake from zero sends nothing for minutes; the load balancer in front of the gateway
(an AWS NLB: 350 s idle timeout by default; GCP's passthrough load balancer: 600 s) would drop the silent flow. The
gateway's connections carry TCP keepalive probes after KEEPALIVE_IDLE_S of silence, which reset those idle timers:
read here from the kernel's own view of the gateway's end of a real connection (`ss -o`)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from runtime.serve.gateway import KEEPALIVE_IDLE_S
from tests.runtime.conftest import Server, start_gateway
from tests.runtime.standin import StandInEngine

NLB_IDLE_TIMEOUT_S = 350  # AWS Network Load Balancer TCP listener default (Elastic Load Balancing docs)


def _keepalive_timer_seconds(port: int) -> float | None:
    """The keepalive timer of the gateway's side of an established connection on `port`, in seconds, or None."""
    ss = shutil.which("ss")
    assert ss, "ss (iproute2) is not installed"
    out = subprocess.run(
        [ss, "-tnoH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"timer:\(keepalive,(?:(\d+)min)?(?:([\d.]+)sec)?(?:(\d+)ms)?", out)
    if not match:
        return None
    minutes, seconds, millis = match.groups()
    return int(minutes or 0) * 60 + float(seconds or 0) + int(millis or 0) / 1000


def test_the_gateway_keeps_a_silent_client_flow_alive_for_the_load_balancer(runtime_dir: Path) -> None:
    standin = StandInEngine()
    gateway: Server | None = None
    try:
        gateway = start_gateway(runtime_dir, [standin.url])
        with socket.create_connection(("127.0.0.1", gateway.port)) as client:
            client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive connection, then silence
            assert client.recv(65536).startswith(b"HTTP/1.1 200")
            deadline = time.monotonic() + 10
            timer = _keepalive_timer_seconds(gateway.port)
            while timer is None and time.monotonic() < deadline:
                time.sleep(0.1)
                timer = _keepalive_timer_seconds(gateway.port)
            assert timer is not None, "the gateway's end of the connection has no keepalive timer"
            # the first probe comes well inside the strictest load balancer's idle timeout (Linux's own: 2 hours)
            assert 0 < timer <= KEEPALIVE_IDLE_S < NLB_IDLE_TIMEOUT_S
    finally:
        if gateway is not None:
            gateway.stop()
        standin.stop()
