"""What the usage ledger costs a request: the gateway with and without `--store` (Debian's redis-server on loopback),
in the same run, alternated, over the fixed fake upstream of runtime/serve/bench.py.

    python scripts/bench_ledger.py [--seconds 5] [--repeat 3]

Prints JSON: per configuration, the medians over the repeats of p50 and p99 at one connection and requests/s at
32 connections (non-streamed answers), and the ledger's own counters after the runs (records written, dropped).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.serve.bench import CHAT_BODY, KEY, MODEL, _free_port, _wait  # noqa: E402


def _load(url: str, connections: int, seconds: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "runtime.serve.bench", "--role", "load", "--url", url]
    command += ["--body", json.dumps(CHAT_BODY), "--connections", str(connections), "--seconds", str(seconds)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return dict(json.loads(out))


def _gateway(folder: Path, upstream: int, keys: Path, store: str | None) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    command = [sys.executable, "-m", "byoc", "serve", "gateway", "--listen", f"127.0.0.1:{port}"]
    command += ["--upstream", f"http://127.0.0.1:{upstream}", "--api-keys", str(keys), "--model", MODEL]
    command += ["--rate-limit-rpm", "10000000", "--max-concurrency", "1024", "--max-queue", "1024"]
    if store is not None:
        command += ["--store", store]
    log = (folder / f"gateway-{port}.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    _wait(f"http://127.0.0.1:{port}/ready")
    return process, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from runtime.serve.keys import hash_key_entry

    folder = Path(tempfile.mkdtemp(prefix="byoc-bench-ledger-"))
    keys = folder / "keys.yaml"
    keys.write_text("keys:\n  " + hash_key_entry("bench", KEY, rpm=10_000_000, max_concurrency=10_000))
    upstream_port, redis_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "runtime.serve.bench", "--role", "upstream", "--port", str(upstream_port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        ),
    ]
    results: dict[str, dict[str, list[float]]] = {"without_store": {}, "with_store": {}}
    ledger: dict[str, float] = {}
    try:
        _wait(f"http://127.0.0.1:{upstream_port}/v1/models")
        time.sleep(0.5)
        gateways = {
            "without_store": _gateway(folder, upstream_port, keys, None),
            "with_store": _gateway(folder, upstream_port, keys, f"redis://127.0.0.1:{redis_port}"),
        }
        processes += [g[0] for g in gateways.values()]
        for _ in range(args.repeat):
            for name, (_, url) in gateways.items():
                one = _load(url + "/v1/chat/completions", 1, args.seconds)
                many = _load(url + "/v1/chat/completions", 32, args.seconds)
                for metric, value in (("p50_ms", one["p50_ms"]), ("p99_ms", one["p99_ms"])):
                    results[name].setdefault(metric, []).append(value)
                results[name].setdefault("rps_32", []).append(many["requests_per_second"])
        time.sleep(2)  # the last records written
        text = urllib.request.urlopen(gateways["with_store"][1] + "/metrics").read().decode()
        for line in text.splitlines():
            if line.startswith("byoc_gateway_usage_"):
                name, value = line.rsplit(" ", 1)
                ledger[name] = float(value)
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=15)
    summary = {
        name: {metric: round(statistics.median(values), 3) for metric, values in measured.items()}
        for name, measured in results.items()
    }
    print(json.dumps({"seconds": args.seconds, "repeat": args.repeat, **summary, "ledger": ledger}, indent=2))


if __name__ == "__main__":
    main()
