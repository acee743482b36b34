"""The artifact fetch, measured: parallel ranged reads against a plain sequential copy of the same artifact, from a
moto S3 server on 127.0.0.1, in the same run (docs/performance.md, "Artifact fetch").

    python -m runtime.model_build.bench_fetch --mib 1024 --files 4 --concurrency 16 --part-mib 16 --repeat 3

Prints one JSON object: MB/s of each way (the median of --repeat runs), the speedup, the parts and concurrency.
Both ways write the same files; each copy is checked against the artifact's manifest (sha256) so a fast wrong copy
cannot win. moto is a Python server sharing this machine's cores with the client, so the figures bound what the
code does, not what S3 in region does (docs/performance.md lists what a real account must measure).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runtime.model_build.fetch import MIB, FetchTuning, parallel_download, sequential_copy
from runtime.model_build.manifest import check_file
from runtime.model_build.stores import S3Store

BUCKET = "byoc-bench"


def _artifact(store: S3Store, files: int, mib: int, work: Path) -> dict[str, dict[str, Any]]:
    """`files` shards of random bytes, `mib` MiB in all, uploaded; their manifest entries."""
    from runtime.model_build.manifest import sha256_file

    entries = {}
    size = mib * MIB // files
    for index in range(files):
        path = work / f"model-{index:05d}-of-{files:05d}.safetensors"
        with path.open("wb") as out:
            for _ in range(size // MIB):
                out.write(os.urandom(MIB))
            out.write(os.urandom(size % MIB))
        name = f"model/{path.name}"
        entries[name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
        store.upload(path, name)
        path.unlink()
    return entries


def _timed(run: Any, files: dict[str, dict[str, Any]], into: Path) -> float:
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    items = [(name, into / name) for name in files]
    started = time.perf_counter()
    run(items)
    seconds = time.perf_counter() - started
    for name, entry in files.items():
        problem = check_file(into / name, entry, name)
        if problem is not None:
            raise SystemExit(f"bench: the copy is wrong: {problem}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.model_build.bench_fetch", description=__doc__)
    parser.add_argument("--mib", type=int, default=1024, help="artifact size in MiB (default 1024)")
    parser.add_argument("--files", type=int, default=4, help="files it is split into (default 4)")
    parser.add_argument("--concurrency", type=int, default=FetchTuning().concurrency)
    parser.add_argument("--part-mib", type=int, default=FetchTuning().part_bytes // MIB)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each way; the median is reported")
    parser.add_argument(
        "--per-connection-mbps",
        type=float,
        default=0.0,
        help="cap each connection's download rate (MB/s) as S3 does per request, 85-90 in AWS's guidelines; 0: none",
    )
    args = parser.parse_args(argv)

    import boto3

    for name, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    # moto in its own process: in this one it would share the client's GIL and slow both ways unequally
    port = _free_port()
    proxy: Any = None
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(port)
        endpoint = port
        if args.per_connection_mbps > 0:
            endpoint = _free_port()
            proxy = multiprocessing.get_context("spawn").Process(
                target=_throttle, args=(endpoint, port, args.per_connection_mbps * 1e6), daemon=True
            )
            proxy.start()
            _wait_for(endpoint)
        os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{endpoint}"
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        store = S3Store(f"s3://{BUCKET}/artifact", "--from")
        tuning = FetchTuning(concurrency=args.concurrency, part_bytes=args.part_mib * MIB)
        with tempfile.TemporaryDirectory(prefix="byoc-bench-fetch-") as folder:
            work = Path(folder)
            files = _artifact(store, args.files, args.mib, work)
            total = sum(int(e["size"]) for e in files.values())
            sequential, parallel = [], []
            for _ in range(args.repeat):  # interleaved, so a busy spell on the machine hits both ways
                sequential.append(_timed(lambda i: sequential_copy(store, i, _ignore), files, work / "sequential"))
                parallel.append(_timed(lambda i: parallel_download(store, i, _ignore, tuning), files, work / "ranged"))
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.join(timeout=30)
        server.terminate()
        server.wait(timeout=30)
    seq_s, par_s = statistics.median(sequential), statistics.median(parallel)
    parts = sum(-(-int(e["size"]) // tuning.part_bytes) for e in files.values())
    result = {
        "artifact_mib": round(total / MIB, 1),
        "files": len(files),
        "parts": parts,
        "part_mib": args.part_mib,
        "concurrency": tuning.concurrency,
        "repeat": args.repeat,
        "per_connection_mb_per_s": args.per_connection_mbps or None,
        "sequential": {"seconds": round(seq_s, 3), "mb_per_s": round(total / 1e6 / seq_s, 1)},
        "parallel_ranged": {"seconds": round(par_s, 3), "mb_per_s": round(total / 1e6 / par_s, 1)},
        "speedup": round(seq_s / par_s, 2),
        "runs_seconds": {"sequential": [round(s, 3) for s in sequential], "parallel": [round(s, 3) for s in parallel]},
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join(["python -m runtime.model_build.bench_fetch", *(argv or sys.argv[1:])]),
    }
    print(json.dumps(result, indent=2))
    return 0


def _throttle(listen: int, upstream: int, bytes_per_s: float) -> None:
    """A TCP proxy on 127.0.0.1:`listen` to moto that sends each connection's responses at most `bytes_per_s`: the
    per-request rate a single S3 GET reaches (AWS, "Performance guidelines for Amazon S3": "make one concurrent
    request for each 85-90 MB/s of desired network throughput"). Requests pass unthrottled."""
    import asyncio

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limited: bool) -> None:
        started, sent = time.monotonic(), 0
        try:
            while chunk := await reader.read(256 * 1024):
                writer.write(chunk)
                await writer.drain()
                if limited:
                    sent += len(chunk)
                    ahead = sent / bytes_per_s - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def connect(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", upstream)
        await asyncio.gather(pipe(client_reader, server_writer, False), pipe(server_reader, client_writer, True))

    async def serve() -> None:
        server = await asyncio.start_server(connect, "127.0.0.1", listen)
        await server.serve_forever()

    asyncio.run(serve())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(port: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise SystemExit(f"bench: moto did not listen on 127.0.0.1:{port} within {seconds:.0f} s")


def _ignore(_: int) -> None:
    return None


if __name__ == "__main__":
    raise SystemExit(main())
