"""Shared-limits benchmark: `python -m runtime.serve.bench_limits` (not a timed test; figures in docs/performance.md).

Starts Debian's `redis-server` on 127.0.0.1 (nothing written to disk), the fixed fake upstream of
runtime/serve/bench.py, and gateways with one API key that has every per-key limit on (rpm, tpm, max_concurrency, a
budget) set far above the load, then prints JSON:

- `admission_us`: what the limits add inside the gateway, without HTTP: one admission (every limit on) through the
  store and in memory, p50/p99 in microseconds, and the difference of the p50s;
- `added`: one connection's p50/p99 latency through the gateway with `--store` minus through the same gateway with
  its limits in memory, measured back to back (wrk when on PATH, else bench.py's Python load); and each one's
  requests/s at 32 connections (`keyed_throughput`), with their ratio;
- `accuracy`: a key with `rpm: 600` (and one with `tpm`) hammered round-robin over 1, 2 and 3 gateway replicas for
  `--seconds`, with the store and with memory only: answers let through / what the limit allows in that time (the
  burst plus what refilled). 1.0 is exact; memory-only limits multiply with the replica count.

Cores: each gateway is pinned to the first core, redis, the upstream and the load to the last (bench.py's layout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runtime.serve import loop
from runtime.serve.bench import CHAT_BODY, KEY, MODEL, Load, _cpus, _free_port, _start_pinned, _wait

TOKENS_PER_ANSWER = 13  # the fake upstream's usage: 9 prompt + 4 completion
ACCURACY_KEY = "sk-bench-accuracy-7c2e9f4a1d6b3e8c"
TPM_KEY = "sk-bench-tpm-3a8d1f6c9e2b5a7d0c4f"
ACCURACY_RPM = 600
ACCURACY_TPM = 13_000  # 1,000 answers a minute


def _keys(folder: Path) -> Path:
    from runtime.serve.keys import ApiKey, Budget, digest

    entries = [
        # every limit on, far above the load: the cost of checking them, not of refusing
        ApiKey(
            "bench",
            digest(KEY),
            rpm=100_000_000,
            max_concurrency=100_000,
            tpm=100_000_000_000,
            budget=Budget(10**15, "month"),
        ).entry(),
        ApiKey("accuracy", digest(ACCURACY_KEY), rpm=ACCURACY_RPM).entry(),
        ApiKey("tpm", digest(TPM_KEY), tpm=ACCURACY_TPM).entry(),
    ]
    path = folder / "keys.yaml"
    path.write_text(json.dumps(entries))
    return path


class Processes:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, command: list[str], cpu: int, name: str) -> subprocess.Popen[bytes]:
        with (self.folder / f"{name}.log").open("wb") as log:
            process = _start_pinned(command, cpu, stdout=log, stderr=subprocess.STDOUT)
        self.running.append(process)
        return process

    def gateway(self, upstream: str, keys: Path, cpu: int, store: str | None) -> str:
        port = _free_port()
        command = [sys.executable, "-m", "byoc", "serve", "gateway", "--listen", f"127.0.0.1:{port}"]
        command += ["--upstream", upstream, "--api-keys", str(keys), "--model", MODEL]
        command += ["--max-concurrency", "1024", "--max-queue", "1024"]
        if store:
            command += ["--store", store]
        self.start(command, cpu, f"gateway-{port}")
        url = f"http://127.0.0.1:{port}"
        _wait(url + "/ready")
        return url

    def stop(self, processes: list[subprocess.Popen[bytes]] | None = None) -> None:
        for process in processes if processes is not None else list(self.running):
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
            if process in self.running:
                self.running.remove(process)


async def _limiter_cost(url: str, count: int) -> dict[str, Any]:
    """What the limits add to a request inside the gateway, without HTTP: the admission as the gateway awaits it
    (p50/p99 microseconds), with every limit on, through the store (SharedLimiter: one script, one round trip) and in
    memory (LocalLimiter), one request at a time; each is settled as the gateway does (the store's in the background,
    done before the next request is admitted)."""
    from prometheus_client import CollectorRegistry

    from runtime.serve.limits import KeyLimits, LocalLimiter, Ticket
    from runtime.serve.store import SharedLimiter, Store, StoreSettings

    limits = KeyLimits(100_000_000, 100_000_000_000, 100_000, 10**15, "month")
    store = Store(StoreSettings(url, prefix="bench:"), 10.0, 1, CollectorRegistry())
    await store.start()
    shared, local = SharedLimiter(store), LocalLimiter()
    samples: dict[str, list[float]] = {"store": [], "memory": []}
    for index in range(count):
        for name in ("store", "memory"):
            started = time.perf_counter()
            ticket = await shared.admit("bench", limits, 20) if name == "store" else local.admit("bench", limits, 20)
            elapsed = (time.perf_counter() - started) * 1e6
            assert isinstance(ticket, Ticket)
            (shared if name == "store" else local).settle(ticket, 30)
            while store._batch or store._sending:  # one request at a time: its settlement is done before the next
                await asyncio.sleep(0)
            if index >= 200:  # warmed up (scripts loaded, connection made)
                samples[name].append(elapsed)
    await store.stop()
    result: dict[str, Any] = {}
    for name, values in samples.items():
        values.sort()
        result[name] = {"p50": round(statistics.median(values), 1), "p99": round(values[int(len(values) * 0.99)], 1)}
    result["added_p50"] = round(result["store"]["p50"] - result["memory"]["p50"], 1)
    return result


async def _hammer(urls: list[str], key: str, seconds: float, connections: int) -> dict[str, int]:
    """Requests round-robin over `urls`, `connections` at a time, for `seconds`: counts by status."""
    import aiohttp

    body = json.dumps(CHAT_BODY).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    counts: dict[str, int] = {}
    turn = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal turn
            while time.monotonic() < deadline:
                url = urls[turn % len(urls)]
                turn += 1
                async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as response:
                    await response.read()
                    counts[str(response.status)] = counts.get(str(response.status), 0) + 1

        await asyncio.gather(*(worker() for _ in range(connections)))
    return counts


def benchmark(seconds: float, repeat: int, store_beside_gateway: bool = False) -> dict[str, Any]:
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is not on PATH: apt-get install redis-server")
    cpus = _cpus()
    gateway_cpu, side_cpu = cpus[0], cpus[-1]
    folder = Path(tempfile.mkdtemp(prefix="byoc-bench-limits-"))
    keys = _keys(folder)
    processes = Processes(folder)
    try:
        redis_port, upstream_port = _free_port(), _free_port()
        processes.start(
            [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            gateway_cpu if store_beside_gateway else side_cpu,
            "redis",
        )
        store = f"redis://127.0.0.1:{redis_port}"
        processes.start(
            [sys.executable, "-m", "runtime.serve.bench", "--role", "upstream", "--port", str(upstream_port)],
            side_cpu,
            "upstream",
        )
        upstream = f"http://127.0.0.1:{upstream_port}"
        _wait(upstream + "/health")
        time.sleep(0.5)
        limiter_cost: dict[str, Any] = {}

        async def cost() -> None:
            limiter_cost.update(await _limiter_cost(store, 5000))

        loop.run(cost())  # uvloop when present, as the gateway runs

        # -- added latency and keyed throughput: the same gateway, limits in memory and in the store ---------------
        load = Load(side_cpu, seconds, folder)
        memory = processes.gateway(upstream, keys, gateway_cpu, None)
        shared = processes.gateway(upstream, keys, gateway_cpu, store)
        targets = {"memory": memory, "store": shared}
        for url in targets.values():
            load.run(url + "/v1/chat/completions", CHAT_BODY, 8, 1.0)  # warm up
        single: dict[str, dict[str, list[float]]] = {t: {"p50_ms": [], "p99_ms": []} for t in targets}
        rps: dict[str, list[float]] = {t: [] for t in targets}
        ratios: list[float] = []
        errors = 0
        for _ in range(repeat):
            round_rps = {}
            for target, url in targets.items():
                one = load.run(url + "/v1/chat/completions", CHAT_BODY, 1)
                many = load.run(url + "/v1/chat/completions", CHAT_BODY, 32)
                errors += one["errors"] + many["errors"]
                for name in ("p50_ms", "p99_ms"):
                    single[target][name].append(one[name] or 0.0)
                rps[target].append(many["requests_per_second"])
                round_rps[target] = many["requests_per_second"]
            ratios.append(round_rps["store"] / round_rps["memory"])
        processes.stop(processes.running[2:])

        def median(values: list[float], digits: int = 3) -> float:
            return round(statistics.median(values), digits)

        added = {
            name: median([s - m for s, m in zip(single["store"][name], single["memory"][name], strict=True)])
            for name in ("p50_ms", "p99_ms")
        }

        accuracy = _accuracy(processes, upstream, keys, store, gateway_cpu, seconds)
        return {
            "load_generator": load.name,
            "seconds": seconds,
            "repeat": repeat,
            "cores": len(cpus),
            "store_core": "gateway's" if store_beside_gateway else "load's",
            "admission_us": limiter_cost,
            "single_connection_ms": {t: {k: median(v) for k, v in per.items()} for t, per in single.items()},
            "added": added,
            "keyed_throughput": {
                "requests_per_second_32_connections": {t: median(v, 1) for t, v in rps.items()},
                "store_to_memory": median(ratios),
            },
            "accuracy": accuracy,
            "errors": errors,
        }
    finally:
        processes.stop()


def _accuracy(
    processes: Processes, upstream: str, keys: Path, store: str, gateway_cpu: int, seconds: float
) -> dict[str, dict[str, Any]]:
    """Limit accuracy with 1, 2 and 3 replicas, with the store and with memory only."""
    import redis

    accuracy: dict[str, dict[str, Any]] = {}
    for replicas in (1, 2, 3):
        for where in ("store", "memory"):
            urls = [
                processes.gateway(upstream, keys, gateway_cpu, store if where == "store" else None)
                for _ in range(replicas)
            ]
            redis.Redis.from_url(store).flushall()  # every run starts with full buckets
            time.sleep(1.5)  # the replicas have counted each other (heartbeats)
            started = time.monotonic()
            rpm_counts = asyncio.run(_hammer(urls, ACCURACY_KEY, seconds, 16))
            rpm_seconds = time.monotonic() - started
            started = time.monotonic()
            tpm_counts = asyncio.run(_hammer(urls, TPM_KEY, seconds, 16))
            tpm_seconds = time.monotonic() - started
            processes.stop(processes.running[2:])
            rpm_allowed = ACCURACY_RPM * (1 + rpm_seconds / 60)
            tpm_allowed = ACCURACY_TPM * (1 + tpm_seconds / 60)
            accuracy[f"{replicas}_{where}"] = {
                "rpm_let_through": rpm_counts.get("200", 0),
                "rpm_allowed": round(rpm_allowed, 1),
                "rpm_ratio": round(rpm_counts.get("200", 0) / rpm_allowed, 3),
                "tpm_tokens_let_through": tpm_counts.get("200", 0) * TOKENS_PER_ANSWER,
                "tpm_allowed": round(tpm_allowed, 1),
                "tpm_ratio": round(tpm_counts.get("200", 0) * TOKENS_PER_ANSWER / tpm_allowed, 3),
                "other_statuses": {k: v for k, v in rpm_counts.items() if k not in ("200", "429")},
            }
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0, help="Length of each measured run.")
    parser.add_argument("--repeat", type=int, default=3, help="Latency/throughput rounds (medians reported).")
    parser.add_argument(
        "--store-beside-gateway",
        action="store_true",
        help="Pin redis-server to the gateways' core (it runs while the gateway waits for it) instead of the load's.",
    )
    args = parser.parse_args()
    print(json.dumps(benchmark(args.seconds, args.repeat, args.store_beside_gateway), indent=2))


if __name__ == "__main__":
    main()
