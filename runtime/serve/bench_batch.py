"""Batch benchmarks (issue 22): `python -m runtime.serve.bench_batch`. Prints JSON.

On 127.0.0.1: one CPU engine (`byoc serve engine`, the model runtime/serve/bench_routing.py makes: a 6-layer Llama with
random weights, nothing downloaded), the real gateway in front of it with the batch admission class on
(`--batch-worker-token-file`, `--max-concurrency` = `--batch-slots-per-replica` = the engine's `--max-batch-size`,
`--batch-headroom H`), and the batch worker (`python -m runtime.serve.batch.worker`) over a file:// batch root.

1. capacity: closed-loop online requests (as many at once as the engine batches) for `--seconds`: requests/s.
2. online alone: streamed online requests arriving at `--online-rate` per second (evenly spaced, seeded prompts) for
   `--seconds`: TTFT p50/p90.
3. online + batch: the same online arrivals while the worker runs a large batch of requests shaped like them: TTFT
   p50/p90 again (target: p90 at most 1.25x of 2), and the batch lines completed in that window per second, against
   the capacity online traffic leaves idle (1's requests/s less the online rate; target: at least 70%).
4. 10,000 lines end to end: a batch of `--lines` lines through the worker and the gateway to the fixed fake upstream
   of runtime/serve/bench.py (no model: what the batch machinery itself sustains): wall time from the batch's
   creation to `completed`, and lines per second.
5. with `--peer`, after 3: the reference with no admission control, the same online arrivals while the worker sends
   its lines straight to the engine; TTFT p50/p90, and the lines it completed per second.

The online phases' prompts are numbers no other phase uses, of one length, so that 2 and 3 prefill alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runtime.serve.bench_routing import (
    MODEL,
    Request,
    _byoc,
    _drive,
    _free_port,
    _get,
    _ms,
    _quantile,
    _sample,
    _stop,
    _wait,
    make_model,
)

TOKEN = "wk-bench-batch-5a9c3e1f7b2d4086"


def _engine_cpu(pin: bool) -> int | None:
    """The CPU the engine gets to itself with --pin (the last one; the gateway, the worker and this client share the
    rest), as a cluster runs them: the engine on its GPU node, the gateway and the worker on other nodes. Without it
    the worker's own CPU use on a small machine slows the engine and counts as the batch's cost."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not pin or len(cpus) < 2:
        return None
    os.sched_setaffinity(0, set(cpus[:-1]))  # this process and every child started after (gateway, worker)
    return cpus[-1]


def _pinned(process: subprocess.Popen[bytes], cpu: int | None) -> subprocess.Popen[bytes]:
    if cpu is not None:
        os.sched_setaffinity(process.pid, {cpu})
    return process


# The online phases' prompts: numbers no other phase uses (the capacity loop and the batch lines count from 0), all of
# the same number of digits, so both phases' prompts have the same length and the same cached prefix in the engine.
# (Before 2026-12-07 "alone" reused the capacity loop's prompts, 1 token left to prefill of 23, while "with batch" had
# 12 of 28: that difference alone made "with batch" TTFT 1.4-1.6x, which was read as the batch's cost.)
ALONE_OFFSET, WITH_BATCH_OFFSET, PEER_OFFSET = 200_000, 300_000, 400_000


def _prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"ka lo mi ne ru sa ti vo ze {i} pa qu de fo gi ha ju be co"}]


def _batch_lines(count: int, model: str, max_tokens: int) -> bytes:
    lines = []
    for i in range(count):
        body = {"model": model, "messages": _prompt(i), "max_tokens": max_tokens, "ignore_eos": True}
        lines.append(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}))
    return ("\n".join(lines) + "\n").encode()


def _write_batch(root: Path, content: bytes) -> str:
    from runtime.model_build.stores import open_store
    from runtime.serve.batch import layout

    store = open_store(f"file://{root}", "--batch-store")
    file_id, batch_id, now = layout.new_file_id(), layout.new_batch_id(), int(time.time())
    store.write_bytes(layout.file_content(file_id), content)
    store.write_bytes(layout.file_object(file_id), json.dumps({"id": file_id, "purpose": "batch"}).encode())
    record = {"id": batch_id, "owner": "bench", "input_file_id": file_id, "endpoint": "/v1/chat/completions",
              "completion_window": "24h", "created_at": now, "expires_at": now + 86400}  # fmt: skip
    store.write_bytes(layout.batch_record(batch_id), json.dumps(record).encode())
    return batch_id


def _state(root: Path, batch_id: str) -> dict[str, Any]:
    path = root / "batches" / batch_id / "state.json"
    try:
        value: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return value


def _worker(gateway: str, root: Path, token: Path, log: Path, concurrency: int) -> subprocess.Popen[bytes]:
    args = ["--gateway", gateway, "--batch-store", f"file://{root}", "--worker-token-file", str(token),
            "--concurrency", str(concurrency), "--poll-seconds", "0.2", "--commit-seconds", "1"]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "runtime.serve.batch.worker", *args], stdout=out, stderr=subprocess.STDOUT
        )


def _online(url: str, rate: float, seconds: float, tokens: int, offset: int) -> dict[str, Any]:
    count = max(1, int(rate * seconds))
    requests = [Request(i / rate, _prompt(offset + i), MODEL) for i in range(count)]
    results, wall = asyncio.run(_drive([url], requests, tokens))
    ttfts = [r.ttft for r in results if r.ttft is not None]
    return {
        "requests": count,
        "answered": sum(r.ok for r in results),
        "ttft_p50_ms": _ms(_quantile(ttfts, 0.5)),
        "ttft_p90_ms": _ms(_quantile(ttfts, 0.9)),
        "e2e_p50_ms": _ms(_quantile([r.e2e for r in results], 0.5)),
        "wall_s": round(wall, 2),
    }


async def _closed_loop(url: str, connections: int, seconds: float, tokens: int) -> int:
    import aiohttp

    done = 0
    end = time.perf_counter() + seconds

    async def loop(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal done
        i = n
        while time.perf_counter() < end:
            body = {"model": MODEL, "messages": _prompt(i), "max_tokens": tokens, "ignore_eos": True}
            async with session.post(url, json=body) as response:
                await response.read()
                done += response.status == 200
            i += connections

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(loop(session, n) for n in range(connections)))
    return done


def benchmark(
    seconds: float,
    online_rate: float,
    tokens: int,
    headroom: int,
    batch_size: int,
    lines: int,
    folder: Path,
    preempt: bool = False,
    pin: bool = False,
    peer: bool = False,
    ttft_ratio: float | None = None,
) -> dict[str, Any]:
    token = folder / "token"
    token.write_text(TOKEN)
    model_dir = make_model(folder / "model")
    processes: list[subprocess.Popen[bytes]] = []
    log = folder / "bench.log"
    out: dict[str, Any] = {}
    engine_cpu = _engine_cpu(pin)
    out["engine_cpu"] = engine_cpu
    try:
        engine_port, gateway_port = _free_port(), _free_port()
        engine = ["engine", "--model-dir", str(model_dir), "--listen", f"127.0.0.1:{engine_port}", "--model-name",
                  MODEL, "--max-batch-size", str(batch_size), "--threads", "1"]  # fmt: skip
        processes.append(_pinned(_byoc(engine, log), engine_cpu))
        _wait(f"http://127.0.0.1:{engine_port}/health", processes[-1])
        slots = str(batch_size)
        command = ["gateway", "--listen", f"127.0.0.1:{gateway_port}", "--upstream", f"http://127.0.0.1:{engine_port}",
                   "--model", MODEL, "--insecure-no-auth", "--max-concurrency", slots, "--batch-slots-per-replica",
                   slots, "--batch-headroom", str(headroom), "--batch-worker-token-file", str(token),
                   "--health-interval", "0.5", *(["--batch-preempt"] if preempt else []),
                   *(["--batch-ttft-ratio", str(ttft_ratio)] if ttft_ratio is not None else [])]  # fmt: skip
        processes.append(_byoc(command, log))
        gateway = f"http://127.0.0.1:{gateway_port}"
        _wait(gateway + "/ready", processes[-1])
        url = gateway + "/v1/chat/completions"
        asyncio.run(_closed_loop(url, 2, 2.0, tokens))  # warm-up
        capacity = asyncio.run(_closed_loop(url, batch_size, seconds, tokens)) / seconds
        out["capacity_requests_per_s"] = round(capacity, 2)
        out["online_alone"] = _online(url, online_rate, seconds, tokens, ALONE_OFFSET)

        idle, batch_rate = _with_batch(out, gateway, folder, token, log, batch_size, online_rate, seconds, tokens)
        _targets(out, idle, batch_rate)
        if peer:
            engine_url = f"http://127.0.0.1:{engine_port}"
            out["peer_no_admission_control"] = _peer(engine_url, url, folder, token, log, batch_size, online_rate,
                                                     seconds, tokens, out)  # fmt: skip
        _stop(processes)
        processes.clear()
        if lines:
            out["end_to_end"] = _end_to_end(folder, token, lines, log)
    finally:
        _stop(processes)
    return out


def _with_batch(
    out: dict[str, Any],
    gateway: str,
    folder: Path,
    token: Path,
    log: Path,
    batch_size: int,
    online_rate: float,
    seconds: float,
    tokens: int,
) -> tuple[float, float]:
    """The online arrivals again while the worker runs a batch; (idle capacity, batch lines admitted) per second."""
    url = gateway + "/v1/chat/completions"
    root = folder / "batch-online"
    batch_id = _write_batch(root, _batch_lines(5_000, MODEL, tokens))
    worker = _worker(gateway, root, token, log, 2 * batch_size)
    try:
        deadline = time.monotonic() + 60
        while _state(root, batch_id).get("status") != "in_progress" and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3.0)  # the worker fills the idle capacity first
        before = _get(gateway + "/metrics")
        admitted0 = _sample(before, 'byoc_gateway_batch_requests_total{decision="admitted"}')
        preempted0 = _sample(before, 'byoc_gateway_batch_requests_total{decision="preempted"}')
        started = time.perf_counter()
        out["online_with_batch"] = _online(url, online_rate, seconds, tokens, WITH_BATCH_OFFSET)
        window = time.perf_counter() - started
        metrics = _get(gateway + "/metrics")
    finally:
        _stop([worker])
    # lines answered in the window: admitted, less those an online arrival pre-empted (sent again later)
    preempted = _sample(metrics, 'byoc_gateway_batch_requests_total{decision="preempted"}') - preempted0
    # (a line admitted before the window and pre-empted in it counts against it: at most 0, not below)
    admitted_total = _sample(metrics, 'byoc_gateway_batch_requests_total{decision="admitted"}')
    admitted = max(0.0, admitted_total - admitted0 - preempted)
    idle = max(0.0, out["capacity_requests_per_s"] - out["online_with_batch"]["answered"] / window)
    batch_rate = admitted / window
    out["batch_during_online"] = {
        "window_s": round(window, 2),
        "lines_answered_per_s": round(batch_rate, 2),
        "idle_capacity_per_s": round(idle, 2),
        "share_of_idle": round(batch_rate / idle, 3) if idle else None,
        "yielded_total": _sample(metrics, 'byoc_gateway_batch_requests_total{decision="yielded"}'),
        "preempted_in_window": preempted,
    }
    return idle, batch_rate


def _completed(root: Path, batch_id: str) -> int:
    counts = _state(root, batch_id).get("request_counts") or {}
    return int(counts.get("completed", 0))


def _peer(
    engine: str,
    url: str,
    folder: Path,
    token: Path,
    log: Path,
    batch_size: int,
    online_rate: float,
    seconds: float,
    tokens: int,
    out: dict[str, Any],
) -> dict[str, Any]:
    """The reference with no admission control at all: the worker sends its lines straight to the engine (as a batch
    job pointed at the model server would), the online arrivals still come through the gateway. Batch lines per second
    are the lines the worker committed as completed in the window (its state is written every second)."""
    root = folder / "batch-peer"
    batch_id = _write_batch(root, _batch_lines(5_000, MODEL, tokens))
    worker = _worker(engine, root, token, log, 2 * batch_size)
    try:
        deadline = time.monotonic() + 60
        while _state(root, batch_id).get("status") != "in_progress" and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3.0)
        done0, started = _completed(root, batch_id), time.perf_counter()
        online = _online(url, online_rate, seconds, tokens, PEER_OFFSET)
        window, done = time.perf_counter() - started, _completed(root, batch_id)
    finally:
        _stop([worker])
    idle = max(0.0, out["capacity_requests_per_s"] - online["answered"] / window)
    rate = (done - done0) / window
    alone = out["online_alone"]["ttft_p90_ms"]
    return {
        "online_with_batch": online,
        "ttft_p90_ratio": round(online["ttft_p90_ms"] / alone, 3) if alone and online["ttft_p90_ms"] else None,
        "lines_completed_per_s": round(rate, 2),
        "share_of_idle": round(rate / idle, 3) if idle else None,
    }


def _targets(out: dict[str, Any], idle: float, batch_rate: float) -> None:
    alone, loaded = out["online_alone"]["ttft_p90_ms"], out["online_with_batch"]["ttft_p90_ms"]
    out["ttft_p90_ratio"] = round(loaded / alone, 3) if alone and loaded else None
    out["targets"] = {
        "ttft_p90_ratio_at_most_1.25": out["ttft_p90_ratio"] is not None and out["ttft_p90_ratio"] <= 1.25,
        "share_of_idle_at_least_0.7": bool(idle) and batch_rate / idle >= 0.7,
    }


def _end_to_end(folder: Path, token: Path, lines: int, log: Path) -> dict[str, Any]:
    """`lines` lines through the worker and the gateway to runtime/serve/bench.py's fixed upstream."""
    upstream_port, gateway_port = _free_port(), _free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        upstream = subprocess.Popen(
            [sys.executable, "-m", "runtime.serve.bench", "--role", "upstream", "--port", str(upstream_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(upstream)
        _wait(f"http://127.0.0.1:{upstream_port}/health", upstream)
        command = ["gateway", "--listen", f"127.0.0.1:{gateway_port}", "--upstream",
                   f"http://127.0.0.1:{upstream_port}", "--model", "bench-model", "--insecure-no-auth",
                   "--batch-worker-token-file", str(token)]  # fmt: skip
        processes.append(_byoc(command, log))
        gateway = f"http://127.0.0.1:{gateway_port}"
        _wait(gateway + "/ready", processes[-1])
        root = folder / "batch-e2e"
        started = time.perf_counter()
        batch_id = _write_batch(root, _batch_lines(lines, "bench-model", 8))
        processes.append(_worker(gateway, root, token, log, 32))
        while _state(root, batch_id).get("status") not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.1)
        wall = time.perf_counter() - started
        state = _state(root, batch_id)
        return {
            "lines": lines,
            "status": state.get("status"),
            "request_counts": state.get("request_counts"),
            "wall_s": round(wall, 2),
            "lines_per_s": round(lines / wall, 1),
            "worker_concurrency": 32,
        }
    finally:
        _stop(processes)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime.serve.bench_batch", description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="Each measured window [20].")
    parser.add_argument("--online-rate", type=float, default=2.0, help="Online arrivals per second [2].")
    parser.add_argument("--tokens", type=int, default=16, help="Tokens each request generates [16].")
    parser.add_argument("--headroom", type=int, default=2, help="The gateway's --batch-headroom [2].")
    parser.add_argument("--max-batch-size", type=int, default=8, help="The engine's --max-batch-size [8].")
    parser.add_argument("--lines", type=int, default=10_000, help="Lines of the end-to-end batch [10000].")
    parser.add_argument("--preempt", action="store_true", help="The gateway's --batch-preempt.")
    parser.add_argument(
        "--ttft-ratio", type=float, default=None, help="The gateway's --batch-ttft-ratio (0: the fixed headroom only)."
    )
    parser.add_argument(
        "--peer",
        action="store_true",
        help="Then the reference with no admission control: the worker sends straight to the engine.",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="The engine on a CPU of its own, the gateway, the worker and the client on the others (as on a cluster).",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="byoc-bench-batch-") as folder:
        result = benchmark(
            args.seconds,
            args.online_rate,
            args.tokens,
            args.headroom,
            args.max_batch_size,
            args.lines,
            Path(folder),
            args.preempt,
            args.pin,
            args.peer,
            args.ttft_ratio,
        )
    result["command"] = "python -m runtime.serve.bench_batch " + " ".join(sys.argv[1:])
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
