"""Gateway overhead benchmark: `python -m runtime.serve.bench`.

Starts a fixed fake upstream (aiohttp: a small fixed JSON answer and a fixed SSE stream), the real gateway
(`byoc serve gateway` with API keys, per-key limits, the admission queue, metrics and the access log all on) and a
load generator (wrk when it is on PATH, else a Python one in its own process), all on loopback, and prints JSON:
requests/s direct and through the gateway at 32 and 64 connections (non-streamed and SSE), and the latency the
gateway adds at one connection (p50, p99).

Cores (os.sched_setaffinity): the gateway gets core 0 to itself; the load generator runs on the last core. The
upstream runs on core 0 for the direct runs (so the direct figure is one core of upstream, like the gateway's one
core) and beside the load generator for the gateway runs. With one core everything shares it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

MODEL = "bench-model"
KEY = "sk-bench-4f1e9a7c2b5d8e0f3a6c"
CHAT_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
STREAM_BODY = {**CHAT_BODY, "stream": True}
ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there!"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    }
).encode()


def _sse() -> bytes:
    def chunk(delta: dict[str, str], reason: str | None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
        }

    events = [chunk({"role": "assistant", "content": ""}, None)]
    events += [chunk({"content": word}, None) for word in ("Hello", " there", ",", " friend", "!")]
    events.append(chunk({}, "stop"))
    usage = {
        **chunk({}, None),
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
    }
    events.append(usage)
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


STREAM = _sse()


# -- the fake upstream -------------------------------------------------------------------------------------------
async def run_upstream(port: int) -> None:
    from aiohttp import web

    models = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()
    headers = {"Content-Type": "application/json"}

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    async def list_models(request: web.Request) -> web.Response:
        return web.Response(body=models, headers=headers)

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if b'"stream": true' not in body and b'"stream":true' not in body:
            return web.Response(body=ANSWER, headers=headers)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        with contextlib.suppress(ConnectionResetError):  # wrk hangs up mid-answer when a run ends
            await response.prepare(request)
            await response.write(STREAM)
            await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
    await asyncio.Event().wait()


# -- the Python load generator (when wrk is missing) ---------------------------------------------------------------
async def run_load(url: str, body: bytes, connections: int, seconds: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        begun = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - begun
    latencies.sort()
    return {
        "requests_per_second": len(latencies) / elapsed,
        "errors": errors,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else None,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else None,
    }


# -- orchestration -----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _pin(pid: int, cpu: int) -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(pid, {cpu})


def _wait(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


FEATURES = ["api_keys", "per_key_rpm", "per_key_concurrency", "admission_queue", "metrics", "access_log"]
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def _run_pinned(command: list[str], cpu: int) -> str:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _pin(process.pid, cpu)  # before it has done any measurable work
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {err.strip()[-500:]}")
    return out


def _wrk_ms(value: str) -> float | None:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if found is None:
        return None
    number, unit = found.groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


class Load:
    def __init__(self, cpu: int, seconds: float, folder: Path) -> None:
        self.cpu = cpu
        self.seconds = seconds
        self.folder = folder
        self.wrk = shutil.which("wrk")

    @property
    def name(self) -> str:
        if self.wrk is None:
            return "python (aiohttp client, one process)"
        version = subprocess.run([self.wrk, "-v"], capture_output=True, text=True, check=False)
        return (version.stdout + version.stderr).split("[")[0].strip() or "wrk"

    def run(self, url: str, body: dict[str, Any], connections: int, seconds: float | None = None) -> dict[str, Any]:
        seconds = seconds or self.seconds
        payload = json.dumps(body)
        if self.wrk is not None:
            script = self.folder / "post.lua"
            script.write_text(WRK_SCRIPT.format(body=json.dumps(payload), key=KEY))
            command = [
                self.wrk,
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "-s",
                str(script),
                url,
            ]
            out = _run_pinned(command, self.cpu)
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
            bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            errors = int(bad.group(1)) if bad else 0
            errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
            p50 = re.search(r"^\s*50%\s+(\S+)", out, re.MULTILINE)
            p99 = re.search(r"^\s*99%\s+(\S+)", out, re.MULTILINE)
            return {
                "requests_per_second": rps,
                "errors": errors,
                "p50_ms": _wrk_ms(p50.group(1)) if p50 else None,
                "p99_ms": _wrk_ms(p99.group(1)) if p99 else None,
            }
        command = [
            sys.executable,
            "-m",
            "runtime.serve.bench",
            "--role",
            "load",
            "--url",
            url,
            "--connections",
            str(connections),
            "--seconds",
            str(seconds),
            "--body",
            payload,
        ]
        out = _run_pinned(command, self.cpu)
        result: dict[str, Any] = json.loads(out)
        return result


def _measure(
    load: Load, targets: dict[str, str], upstream: subprocess.Popen[bytes], gateway_cpu: int, load_cpu: int, repeat: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any], int]:
    """Throughput and single-connection latency, direct and through the gateway, `repeat` times; medians."""
    errors = 0
    for target, url in targets.items():
        _pin(upstream.pid, gateway_cpu if target == "direct" else load_cpu)
        load.run(url, CHAT_BODY, 8, 1.0)  # warm up connections, caches, metric children
    # This machine's CPU time is shared and noisy (+-30% between runs): each configuration is measured direct and
    # through the gateway back to back, `repeat` times, and the medians are reported.
    rps: dict[str, dict[str, dict[str, list[float]]]] = {
        t: {m: {"32": [], "64": []} for m in ("json", "sse")} for t in targets
    }
    ratios: dict[str, dict[str, list[float]]] = {m: {"32": [], "64": []} for m in ("json", "sse")}
    singles: dict[str, dict[str, list[float]]] = {t: {"p50_ms": [], "p99_ms": []} for t in targets}
    added_samples: dict[str, list[float]] = {"p50_ms": [], "p99_ms": []}
    for _ in range(repeat):
        for mode, body in (("json", CHAT_BODY), ("sse", STREAM_BODY)):
            for connections in ("32", "64"):
                pair = {}
                for target, url in targets.items():
                    # direct: the upstream alone on the gateway's core; through the gateway: beside the load
                    _pin(upstream.pid, gateway_cpu if target == "direct" else load_cpu)
                    result = load.run(url, body, int(connections))
                    errors += result["errors"]
                    pair[target] = result["requests_per_second"]
                    rps[target][mode][connections].append(pair[target])
                ratios[mode][connections].append(pair["gateway"] / pair["direct"])
        single_pair = {}
        for target, url in targets.items():
            _pin(upstream.pid, gateway_cpu if target == "direct" else load_cpu)
            single = load.run(url, CHAT_BODY, 1)
            errors += single["errors"]
            single_pair[target] = single
            for key in ("p50_ms", "p99_ms"):
                singles[target][key].append(single[key] or 0.0)
        for key in ("p50_ms", "p99_ms"):
            added_samples[key].append((single_pair["gateway"][key] or 0.0) - (single_pair["direct"][key] or 0.0))
    throughput = {
        t: {m: {c: round(statistics.median(v), 1) for c, v in per.items()} for m, per in modes.items()}
        for t, modes in rps.items()
    }
    ratio = {m: {c: round(statistics.median(v), 3) for c, v in per.items()} for m, per in ratios.items()}
    ratio_range = {m: {c: [round(min(v), 3), round(max(v), 3)] for c, v in per.items()} for m, per in ratios.items()}
    latency = {t: {k: round(statistics.median(v), 3) for k, v in per.items()} for t, per in singles.items()}
    added = {k: round(statistics.median(v), 3) for k, v in added_samples.items()}
    return throughput, ratio, ratio_range, latency, added, errors


def benchmark(seconds: float, repeat: int = 3, routing: str = "least_outstanding") -> dict[str, Any]:
    cpus = _cpus()
    gateway_cpu, load_cpu = cpus[0], cpus[-1]
    folder = Path(tempfile.mkdtemp(prefix="byoc-bench-"))
    keys = folder / "keys.yaml"
    from runtime.serve.keys import hash_key_entry

    entry = hash_key_entry("bench", KEY, rpm=10_000_000, max_concurrency=10_000)
    keys.write_text("keys:\n  " + entry)
    upstream_port, gateway_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        upstream = subprocess.Popen(
            [sys.executable, "-m", "runtime.serve.bench", "--role", "upstream", "--port", str(upstream_port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(upstream)
        gateway_log = folder / "gateway.log"
        with gateway_log.open("wb") as log:
            gateway = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "byoc",
                    "serve",
                    "gateway",
                    "--listen",
                    f"127.0.0.1:{gateway_port}",
                    "--upstream",
                    f"http://127.0.0.1:{upstream_port}",
                    "--api-keys",
                    str(keys),
                    "--model",
                    MODEL,
                    "--rate-limit-rpm",
                    "10000000",
                    "--max-concurrency",
                    "1024",
                    "--max-queue",
                    "1024",
                    "--routing",
                    routing,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        _pin(gateway.pid, gateway_cpu)
        processes.append(gateway)
        _wait(f"http://127.0.0.1:{upstream_port}/health")
        _wait(f"http://127.0.0.1:{gateway_port}/ready")
        load = Load(load_cpu, seconds, folder)
        targets = {
            "direct": f"http://127.0.0.1:{upstream_port}/v1/chat/completions",
            "gateway": f"http://127.0.0.1:{gateway_port}/v1/chat/completions",
        }
        throughput, ratio, ratio_range, latency, added, errors = _measure(
            load, targets, upstream, gateway_cpu, load_cpu, repeat
        )
        access_lines = sum(1 for line in gateway_log.read_text().splitlines() if "byoc.gateway.access" in line)
        worst_ratio = min(v for per_mode in ratio.values() for v in per_mode.values())
        return {
            "command": "python -m runtime.serve.bench",
            "machine": {
                "cpus": len(cpus),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "load_generator": load.name,
            "layout": {
                "gateway_cpu": gateway_cpu,
                "load_generator_cpu": load_cpu,
                "upstream_cpu": {"direct": gateway_cpu, "gateway": load_cpu},
            },
            "gateway_features_on": FEATURES,
            "routing": routing,
            "seconds_per_run": seconds,
            "repeat": repeat,
            "requests_per_second": throughput,
            "gateway_to_direct_ratio": ratio,
            "gateway_to_direct_ratio_range": ratio_range,
            "latency_at_1_connection_ms": {**latency, "added_by_gateway": added},
            "errors": errors,
            "access_log_lines": access_lines,
            "targets": {
                "throughput_ratio_at_least": 0.3,
                "throughput_ratio_met": worst_ratio >= 0.3,
                "added_p50_ms_below": 1.0,
                "added_p50_met": added["p50_ms"] < 1.0,
            },
        }
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--role", choices=["bench", "upstream", "load"], default="bench")
    parser.add_argument("--seconds", type=float, default=5.0, help="Length of each measured run.")
    parser.add_argument("--repeat", type=int, default=3, help="Measurements per configuration (medians reported).")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--url", default="")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--body", default="")
    parser.add_argument(
        "--scenario",
        choices=["pass-through", "shared-prefix", "multi-addon"],
        default="pass-through",
        help="pass-through: the gateway's overhead (this module); shared-prefix / multi-addon: routing modes on CPU "
        "engines (runtime/serve/bench_routing.py).",
    )
    parser.add_argument("--requests", type=int, default=None, help="shared-prefix / multi-addon: requests per mode.")
    parser.add_argument("--rate", type=float, default=None, help="shared-prefix / multi-addon: requests per second.")
    parser.add_argument(
        "--routing", default="least_outstanding", help="pass-through: the gateway's --routing mode [least_outstanding]."
    )
    args = parser.parse_args()
    if args.scenario != "pass-through" and args.role == "bench":
        from runtime.serve import bench_routing

        bench_routing.main(args.scenario, args.requests, args.rate)
        return
    if args.role == "upstream":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_upstream(args.port))
        return
    if args.role == "load":
        result = asyncio.run(run_load(args.url, args.body.encode(), args.connections, args.seconds))
        print(json.dumps(result))
        return
    print(json.dumps(benchmark(args.seconds, args.repeat, args.routing), indent=2))


if __name__ == "__main__":
    main()
