"""Gateway overhead benchmark: `python -m runtime.serve.bench`.

Starts a fixed fake upstream (aiohttp: a small fixed JSON answer and a fixed SSE stream), the real gateway
(`byoc serve gateway` with API keys, per-key limits, the admission queue, metrics and the access log all on), the
outside reference, vLLM's Rust router `vllm-router` (round robin over the same upstream), and a load generator (wrk
when it is on PATH, else a Python one in its own process), all on loopback, and prints JSON: requests/s direct,
through the gateway and through vllm-router at 32 and 64 connections (non-streamed and SSE), the gateway's
throughput as a ratio of direct and of vllm-router's, and the latency each proxy adds at one connection (p50, p99).

vllm-router is a benchmark dependency, never a runtime one: it lives in a virtual environment of its own,
`.venv-bench/` at the repository root (`make bench-venv`), or wherever `--vllm-router PATH` points.

Cores (os.sched_setaffinity, set before each process starts so every thread it spawns inherits it): the gateway
and vllm-router each get core 0 to themselves in turn (tokio sizes its worker pool from the affinity mask: one
worker, as the gateway's one event loop); the load generator runs on the last core. The upstream runs on core 0
for the direct runs (so the direct figure is one core of upstream, like a proxy's one core) and beside the load
generator for the runs through a proxy. With one core everything shares it.
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

ROOT = Path(__file__).resolve().parents[2]
MODEL = "bench-model"
# The outside reference: vLLM's router (Rust, PyPI `vllm-router`), at the version the figures in
# docs/performance.md were taken with.
VLLM_ROUTER = "vllm-router==0.1.17"
VLLM_ROUTER_VENV = ROOT / ".venv-bench"
VLLM_ROUTER_INSTALL = (
    f"make bench-venv   (or: python3 -m venv .venv-bench && .venv-bench/bin/pip install '{VLLM_ROUTER}')"
)
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


def _sse(continuous: bool) -> bytes:
    """The fixed stream: trtllm-serve's chunks (pydantic's compact dumps), with the running usage on every chunk
    when the request asks for `continuous_usage_stats` (as the gateway does; a client through vllm-router does not),
    and the total on a last `choices: []` chunk."""
    words = ("Hello", " there", ",", " friend", "!")

    def chunk(delta: dict[str, str], reason: str | None, generated: int) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
        }
        if continuous:
            data["usage"] = {"prompt_tokens": 9, "total_tokens": 9 + generated, "completion_tokens": generated}
        return data

    events = [chunk({"role": "assistant", "content": ""}, None, 0)]
    events += [chunk({"content": word}, None, i) for i, word in enumerate(words, 1)]
    events.append(chunk({}, "stop", len(words)))
    usage = {
        **chunk({}, None, 0),
        "choices": [],
        "usage": {"prompt_tokens": 9, "total_tokens": 9 + len(words), "completion_tokens": len(words)},
    }
    events.append(usage)
    dumped = (json.dumps(e, separators=(",", ":")).encode() for e in events)
    return b"".join(b"data: " + e + b"\n\n" for e in dumped) + b"data: [DONE]\n\n"


STREAM, STREAM_CONTINUOUS = _sse(False), _sse(True)


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
            continuous = b'"continuous_usage_stats": true' in body or b'"continuous_usage_stats":true' in body
            await response.write(STREAM_CONTINUOUS if continuous else STREAM)
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
    """Every thread of `pid` onto `cpu` (sched_setaffinity on a pid moves only its main thread)."""
    try:
        threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        threads = [pid]
    for thread in threads:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(thread, {cpu})


def _start_pinned(command: list[str], cpu: int, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a process already on `cpu`: threads it starts inherit the mask, and a thread pool sized from it
    (tokio's workers, say) is sized for one core."""

    def on_cpu() -> None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})

    return subprocess.Popen(command, preexec_fn=on_cpu, **kwargs)  # noqa: PLW1509 (no threads in this parent)


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


PROXIES = ("gateway", "vllm_router")
MODES = {"json": CHAT_BODY, "sse": STREAM_BODY}
CONNECTIONS = ("32", "64")


def _median(values: list[float], digits: int) -> float:
    return round(statistics.median(values), digits)


def _measure(
    load: Load, targets: dict[str, str], upstream: subprocess.Popen[bytes], proxy_cpu: int, load_cpu: int, repeat: int
) -> dict[str, Any]:
    """Throughput and single-connection latency, direct and through each proxy, `repeat` times; medians.

    This machine's CPU time is shared and noisy (+-30% between runs): each configuration is measured direct and
    through every proxy back to back, and each ratio is taken within one such round, so a slow spell moves a round's
    figures together rather than one side of a ratio.
    """

    def place_upstream(target: str) -> None:
        # direct: the upstream alone on the proxies' core; through a proxy: beside the load generator
        _pin(upstream.pid, proxy_cpu if target == "direct" else load_cpu)

    errors = 0
    for target, url in targets.items():
        place_upstream(target)
        for body in MODES.values():
            load.run(url, body, 8, 1.0)  # warm up connections, caches, metric children
    rps: dict[str, dict[str, dict[str, list[float]]]] = {
        t: {m: {c: [] for c in CONNECTIONS} for m in MODES} for t in targets
    }
    ratio_names = [f"{p}_to_direct" for p in targets if p != "direct"]
    if "vllm_router" in targets:
        ratio_names.append("gateway_to_vllm_router")
    ratios: dict[str, dict[str, dict[str, list[float]]]] = {
        r: {m: {c: [] for c in CONNECTIONS} for m in MODES} for r in ratio_names
    }
    singles: dict[str, dict[str, list[float]]] = {t: {"p50_ms": [], "p99_ms": []} for t in targets}
    added: dict[str, dict[str, list[float]]] = {p: {"p50_ms": [], "p99_ms": []} for p in targets if p != "direct"}
    for _ in range(repeat):
        for mode, body in MODES.items():
            for connections in CONNECTIONS:
                round_rps: dict[str, float] = {}
                for target, url in targets.items():
                    place_upstream(target)
                    result = load.run(url, body, int(connections))
                    errors += result["errors"]
                    round_rps[target] = result["requests_per_second"]
                    rps[target][mode][connections].append(round_rps[target])
                for name in ratio_names:
                    over, under = name.split("_to_")
                    ratios[name][mode][connections].append(round_rps[over] / round_rps[under])
        round_single: dict[str, dict[str, Any]] = {}
        for target, url in targets.items():
            place_upstream(target)
            single = load.run(url, CHAT_BODY, 1)
            errors += single["errors"]
            round_single[target] = single
            for key in ("p50_ms", "p99_ms"):
                singles[target][key].append(single[key] or 0.0)
        for proxy, samples in added.items():
            for key, values in samples.items():
                values.append((round_single[proxy][key] or 0.0) - (round_single["direct"][key] or 0.0))
    return {
        "requests_per_second": {
            t: {m: {c: _median(v, 1) for c, v in per.items()} for m, per in modes.items()} for t, modes in rps.items()
        },
        "ratios": {
            r: {m: {c: _median(v, 3) for c, v in per.items()} for m, per in modes.items()}
            for r, modes in ratios.items()
        },
        "ratio_ranges": {
            r: {m: {c: [round(min(v), 3), round(max(v), 3)] for c, v in per.items()} for m, per in modes.items()}
            for r, modes in ratios.items()
        },
        "latency": {t: {k: _median(v, 3) for k, v in per.items()} for t, per in singles.items()},
        "added": {p: {k: _median(v, 3) for k, v in per.items()} for p, per in added.items()},
        "errors": errors,
    }


def find_vllm_router(given: str | None) -> Path | None:
    """`--vllm-router PATH`, else `.venv-bench/bin/vllm-router`, else one on PATH."""
    if given:
        path = Path(given)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    local = VLLM_ROUTER_VENV / "bin" / "vllm-router"
    if local.is_file():
        return local
    found = shutil.which("vllm-router")
    return Path(found) if found else None


def _vllm_router_version(path: Path) -> str:
    """The wheel's version, read from the venv the executable belongs to (the CLI has no --version)."""
    python = path.parent / "python"
    probe = "import importlib.metadata as m; print(m.version('vllm-router'))"
    if python.is_file():
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return done.stdout.strip()
    return "unknown"


def benchmark(
    seconds: float, repeat: int = 3, routing: str = "least_outstanding", vllm_router: Path | None = None
) -> dict[str, Any]:
    cpus = _cpus()
    proxy_cpu, load_cpu = cpus[0], cpus[-1]
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
            gateway = _start_pinned(
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
                proxy_cpu,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        processes.append(gateway)
        targets = {
            "direct": f"http://127.0.0.1:{upstream_port}/v1/chat/completions",
            "gateway": f"http://127.0.0.1:{gateway_port}/v1/chat/completions",
        }
        reference: dict[str, Any] = {"name": "vllm-router", "measured": False, "install": VLLM_ROUTER_INSTALL}
        if vllm_router is not None:
            router_port = _free_port()
            with (folder / "vllm-router.log").open("wb") as log:
                # its defaults (cache_aware policy, metrics, retries, circuit breaker) but round robin, which is
                # what one upstream gets anyway and skips the prefix tree: the cheapest path it has
                router = _start_pinned(
                    [
                        str(vllm_router),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(router_port),
                        "--worker-urls",
                        f"http://127.0.0.1:{upstream_port}",
                        "--policy",
                        "round_robin",
                        "--prometheus-host",
                        "127.0.0.1",
                        "--prometheus-port",
                        str(_free_port()),
                    ],
                    proxy_cpu,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            processes.append(router)
            targets["vllm_router"] = f"http://127.0.0.1:{router_port}/v1/chat/completions"
            reference = {
                "name": "vllm-router",
                "measured": True,
                "version": _vllm_router_version(vllm_router),
                "path": str(vllm_router),
                "policy": "round_robin",
            }
        _wait(f"http://127.0.0.1:{upstream_port}/health")
        _wait(f"http://127.0.0.1:{gateway_port}/ready")
        if "vllm_router" in targets:
            _wait(targets["vllm_router"].replace("/v1/chat/completions", "/readiness"))
        load = Load(load_cpu, seconds, folder)
        measured = _measure(load, targets, upstream, proxy_cpu, load_cpu, repeat)
        access_lines = sum(1 for line in gateway_log.read_text().splitlines() if "byoc.gateway.access" in line)
        ratios, ranges = measured["ratios"], measured["ratio_ranges"]
        worst_ratio = min(v for per_mode in ratios["gateway_to_direct"].values() for v in per_mode.values())
        added = measured["added"]
        targets_met: dict[str, Any] = {
            "throughput_ratio_at_least": 0.3,
            "throughput_ratio_met": worst_ratio >= 0.3,
            "added_p50_ms_below": 1.0,
            "added_p50_met": added["gateway"]["p50_ms"] < 1.0,
        }
        if "gateway_to_vllm_router" in ratios:
            sse = ratios["gateway_to_vllm_router"]["sse"]
            targets_met["sse_to_vllm_router_at_least"] = 0.6
            targets_met["sse_to_vllm_router_met"] = min(sse.values()) >= 0.6
        return {
            "command": " ".join(["python -m runtime.serve.bench", *sys.argv[1:]]),
            "machine": {
                "cpus": len(cpus),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "load_average_1m_at_start": round(os.getloadavg()[0], 2),
            },
            "load_generator": load.name,
            "layout": {
                "proxy_cpu": proxy_cpu,
                "load_generator_cpu": load_cpu,
                "upstream_cpu": {"direct": proxy_cpu, "through_a_proxy": load_cpu},
            },
            "gateway_features_on": FEATURES,
            "routing": routing,
            "reference": reference,
            "seconds_per_run": seconds,
            "repeat": repeat,
            "requests_per_second": measured["requests_per_second"],
            **{f"{name}_ratio": value for name, value in ratios.items()},
            **{f"{name}_ratio_range": value for name, value in ranges.items()},
            "latency_at_1_connection_ms": {
                **measured["latency"],
                **{f"added_by_{proxy}": value for proxy, value in added.items()},
            },
            "errors": measured["errors"],
            "access_log_lines": access_lines,
            "targets": targets_met,
        }
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
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
        "--gateways",
        type=int,
        default=1,
        help="shared-prefix / multi-addon: gateway processes, requests alternated across them (as a Service spreads "
        "clients over gateway replicas) [1].",
    )
    parser.add_argument(
        "--modes",
        default="",
        help="shared-prefix / multi-addon: routing modes to run, comma-separated [all three].",
    )
    parser.add_argument(
        "--routing", default="least_outstanding", help="pass-through: the gateway's --routing mode [least_outstanding]."
    )
    parser.add_argument(
        "--vllm-router",
        default=None,
        metavar="PATH",
        help="pass-through: the vllm-router executable measured as the outside reference "
        "[.venv-bench/bin/vllm-router, else vllm-router on PATH].",
    )
    parser.add_argument(
        "--without-reference",
        action="store_true",
        help="pass-through: measure direct and the gateway only (no vllm-router, no ratio to it).",
    )
    args = parser.parse_args()
    if args.scenario != "pass-through" and args.role == "bench":
        from runtime.serve import bench_routing

        modes = tuple(m for m in args.modes.split(",") if m) or bench_routing.MODES
        bench_routing.main(args.scenario, args.requests, args.rate, args.gateways, modes)
        return
    if args.role == "upstream":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_upstream(args.port))
        return
    if args.role == "load":
        result = asyncio.run(run_load(args.url, args.body.encode(), args.connections, args.seconds))
        print(json.dumps(result))
        return
    router = None
    if not args.without_reference:
        router = find_vllm_router(args.vllm_router)
        if router is None:
            where = args.vllm_router or f"{VLLM_ROUTER_VENV}/bin/vllm-router or on PATH"
            print(
                f"vllm-router (the outside reference) not found at {where}: install it into a venv of its own with\n"
                f"  {VLLM_ROUTER_INSTALL}\n"
                "or run without it: --without-reference",
                file=sys.stderr,
            )
            sys.exit(2)
    print(json.dumps(benchmark(args.seconds, args.repeat, args.routing, router), indent=2))


if __name__ == "__main__":
    main()
