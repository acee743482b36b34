"""The usage ledger a bill can be built on: per key, model and addon, in the store the gateway replicas share
(Debian's redis-server here), summed across replicas and gateway restarts, nothing lost while the store is away,
cached prompt tokens included, and not a word of any prompt or answer in the store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

from tests.conftest import ROOT
from tests.runtime.conftest import MODEL, Server, free_port, long_stream, metric, start_gateway, wait_for

KEYS = {"alice": "sk-alice-6b1f0e9d4c2a8e7f3b5d", "bob": "sk-bob-2c7e4a9f1d8b3e6c0a5f"}
COUNTED = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens")


class RedisServer:
    """Debian's redis-server on 127.0.0.1: no snapshots of its own, no append-only file; `outage` shuts it down
    (saving what it holds, as a managed store keeps its data across a failover) and `resume` starts it again on the
    same port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.resume()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    def resume(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.folder), "--dbfilename", "ledger-test.rdb"]
        with (self.folder / "redis.log").open("ab") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        wait_for(self._answers, timeout=10, what="redis-server")

    def _answers(self) -> bool:
        with contextlib.suppress(redis.RedisError):
            return bool(self.client().ping())
        return False

    def outage(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self.client().shutdown(save=True)
        assert self.process is not None
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ledger_keys(runtime_dir: Path) -> Path:
    from runtime.serve.keys import hash_key_entry

    entries = "".join(hash_key_entry(name, key) for name, key in KEYS.items())
    path = runtime_dir / "ledger-keys.yaml"
    path.write_text("keys:\n" + "".join("  " + line + "\n" for line in entries.splitlines()))
    return path


def client(gateway: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEYS[key], max_retries=0, timeout=60)


def byoc_usage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "byoc", "usage", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def access_lines(gateways: list[Server]) -> list[str]:
    return [line for g in gateways for line in g.log.read_text().splitlines() if " byoc.gateway.access " in line]


def usage_of_access_lines(lines: list[str]) -> dict[str, Counter[str]]:
    """What the gateways' access lines say each key used: their own record of every request."""
    found: dict[str, Counter[str]] = {}
    for line in lines:
        fields = dict(re.findall(r"(\w+)=(\S+)", line))
        counts = found.setdefault(fields["key"], Counter())
        counts["requests"] += 1
        counts["prompt_tokens"] += int(fields["prompt_tokens"])
        counts["cached_tokens"] += int(fields["cached_tokens"])
        counts["completion_tokens"] += int(fields["output_tokens"])
    return found


def ledger_by_key(store: RedisServer) -> dict[str, dict[str, Any]]:
    answer = byoc_usage("--store", store.url, "--since", "2h", "--by", "key", "-o", "json")
    assert answer.returncode == 0, answer.stderr
    return {row["key"]: row for row in json.loads(answer.stdout)["usage"]}


def _every_kind_of_request(first: Server, second: Server, prompt: str) -> int:
    """Both keys, chat and completions, JSON and streamed (usage asked, running usage, none asked), a repeated
    prompt, a cancelled stream: seven requests over two gateways. The cached tokens of alice's repeated prompt."""
    messages = [{"role": "user", "content": prompt}]
    # alice, not streamed, the same prompt twice: the second's prompt comes from the engine's prefix cache
    answers = [
        client(first, "alice").chat.completions.create(model=MODEL, messages=messages, max_tokens=4)  # type: ignore[arg-type]
        for _ in range(2)
    ]
    cold, warm = (a.usage for a in answers)
    assert cold is not None and warm is not None and warm.prompt_tokens_details is not None
    # the first time, at most the chat template's opening tokens another test's prompt left in the engine's cache
    # (the engine is shared by the session): the prompt itself is new
    assert cold.prompt_tokens_details is not None and cold.prompt_tokens_details.cached_tokens < 8
    # all of the prompt but its last token: the blocks the first stored, the last one partly reused
    assert warm.prompt_tokens_details.cached_tokens == warm.prompt_tokens - 1 > 32

    # bob, streamed completions with usage asked, twice: the usage chunk carries the cached tokens too
    cached = []
    for _ in range(2):
        chunks = list(
            client(second, "bob").completions.create(
                model=MODEL, prompt=prompt, max_tokens=3, stream=True, stream_options={"include_usage": True}
            )
        )
        usage = chunks[-1].usage
        assert usage is not None and usage.prompt_tokens_details is not None
        cached.append(usage.prompt_tokens_details.cached_tokens)
    assert cached[1] == usage.prompt_tokens - 1 and cached[1] > cached[0]
    # bob, streamed chat with the running usage on every chunk
    chunks = list(
        client(second, "bob").chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=3,
            stream=True,
            extra_body={"stream_options": {"include_usage": True, "continuous_usage_stats": True}},
        )
    )
    assert all(c.usage is not None and c.usage.prompt_tokens_details is not None for c in chunks)
    # bob, a stream without usage asked: metered all the same
    list(client(first, "bob").chat.completions.create(model=MODEL, messages=messages, max_tokens=3, stream=True))  # type: ignore[arg-type]
    # alice leaves a long stream half-way: metered to the engine's last running usage
    stream = long_stream(client(second, "alice"))
    for received, _ in enumerate(stream):
        if received == 8:
            break
    stream.close()

    return warm.prompt_tokens_details.cached_tokens


def _stored_values(db: Any, name: str) -> list[tuple[Any, Any]]:
    """Everything one key of the store holds, as (field, value) pairs: hashes and strings (usage, limits), a set and
    sorted sets (the shared limiter's key names, gateway replicas and concurrency slots: runtime/serve/store.py)."""
    kind = db.type(name)
    assert kind in ("hash", "string", "set", "zset"), (name, kind)
    if kind == "hash":
        return list(db.hgetall(name).items())
    if kind == "string":
        return [(db.get(name), "")]
    members = db.smembers(name) if kind == "set" else db.zrange(name, 0, -1)
    return [(member, "") for member in members]


def test_usage_sums_across_gateways_restarts_and_a_store_outage(
    engine: Server, runtime_dir: Path, ledger_keys: Path, store: RedisServer
) -> None:
    marker = f"ledger{uuid.uuid4().hex[:12]}"  # in every prompt: it must never reach the store
    prompt = f"{marker} " + " ".join(f"word{i}" for i in range(60))
    flags = ("--store", store.url, "--health-interval", "0.5")
    first = start_gateway(runtime_dir, [engine.url], *flags, keys=ledger_keys)
    second = start_gateway(runtime_dir, [engine.url], *flags, keys=ledger_keys)
    gateways = [first, second]
    try:
        warm_cached = _every_kind_of_request(first, second, prompt)

        # a gateway restarts (SIGTERM: its last usage is written on the way out), and serves again
        first.stop()
        assert first.process.returncode == 0
        first = start_gateway(runtime_dir, [engine.url], *flags, keys=ledger_keys)
        gateways.append(first)
        client(first, "alice").completions.create(model=MODEL, prompt=prompt, max_tokens=2)

        # the store goes away: requests are served, their usage is held; it comes back: the usage is written
        wait_for(lambda: len(access_lines(gateways)) == 8, timeout=15, what="eight access lines")
        time.sleep(1.5)  # what was recorded so far is written before the outage (not needed, but then it is tested)
        store.outage()
        for gateway in (first, second):
            for key in KEYS:
                answer = client(gateway, key).completions.create(model=MODEL, prompt=prompt, max_tokens=2)
                assert answer.choices and answer.usage is not None and answer.usage.completion_tokens >= 1
        wait_for(lambda: len(access_lines(gateways)) == 12, timeout=15, what="twelve access lines")
        time.sleep(1.5)  # at least one write has failed by now
        for gateway in (first, second):
            held = metric(gateway.metrics(), "byoc_gateway_usage_pending_buckets")
            assert held is not None and held >= 2, gateway.metrics()
            assert (metric(gateway.metrics(), "byoc_gateway_usage_failed_writes_total") or 0) >= 1
        store.resume()

        expected = usage_of_access_lines(access_lines(gateways))
        assert set(expected) == {"alice", "bob"} and expected["alice"]["requests"] == 6
        assert expected["bob"]["requests"] == 6

        def agrees() -> bool:
            ledger = ledger_by_key(store)
            return set(ledger) == set(expected) and all(
                ledger[key][name] == expected[key][name] for key in expected for name in COUNTED
            )

        wait_for(agrees, timeout=20, what="the ledger to sum every access line")
        ledger = ledger_by_key(store)
        assert ledger["alice"]["cached_tokens"] >= warm_cached
        assert ledger["bob"]["cached_tokens"] > 0
        assert all(row["gpu_seconds"] > 0 for row in ledger.values())
        for gateway in (first, second):
            assert metric(gateway.metrics(), "byoc_gateway_usage_dropped_records_total") == 0
            assert metric(gateway.metrics(), "byoc_gateway_usage_pending_buckets") == 0

        # by model and by addon, as CSV: one base model, no addon
        by_addon = byoc_usage("--store", store.url, "--since", "1h", "--by", "addon", "-o", "csv")
        assert by_addon.returncode == 0 and by_addon.stdout.splitlines()[0].startswith("addon,requests,prompt_tokens")
        assert [line.split(",")[:2] for line in by_addon.stdout.splitlines()[1:]] == [["base", "12"]]
        table = byoc_usage("--store", store.url, "--since", "1h", "--by", "model")
        assert table.returncode == 0 and re.search(rf"^{MODEL}\s+12\s", table.stdout, re.MULTILINE), table.stdout

        # nothing of any prompt or answer in the store: every key and every value
        db = store.client()
        for name in db.scan_iter("*"):
            assert marker not in name and "word1" not in name
            values = _stored_values(db, name)
            for field, value in values:
                assert marker not in f"{field}{value}" and "word" not in f"{field}{value}", (name, field, value)
    finally:
        for gateway in gateways:
            gateway.stop()


def test_a_gateway_whose_store_does_not_answer_exits_2_naming_store(runtime_dir: Path, engine: Server) -> None:
    closed = f"redis://127.0.0.1:{free_port()}"
    gateway = start_gateway(runtime_dir, [engine.url], "--store", closed, wait=False)
    assert gateway.process.wait(timeout=60) == 2
    said = gateway.log.read_text()
    assert "error: --store: the store at" in said and "Traceback" not in said
    gateway = start_gateway(runtime_dir, [engine.url], "--store", "redis://:secret@127.0.0.1:6379", wait=False)
    assert gateway.process.wait(timeout=60) == 2
    assert "--store-password-file" in gateway.log.read_text() and "secret" not in gateway.log.read_text()
    for flags, field in (
        (["--store", "http://127.0.0.1:6379"], "--store"),
        (["--store", "redis://127.0.0.1:6379", "--store-ca-file", str(runtime_dir)], "--store-ca-file"),
        (["--store-password-file", str(runtime_dir)], "--store"),
        (["--gpus-per-replica", "0"], "--gpus-per-replica"),
    ):
        gateway = start_gateway(runtime_dir, [engine.url], *flags, wait=False)
        assert gateway.process.wait(timeout=60) == 2
        assert f"error: {field}: " in gateway.log.read_text(), gateway.log.read_text()


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--since", "7x"], "--since"),
        (["--since", "0d"], "--since"),
        (["--since", "2026-13-01"], "--since"),
        (["--by", "tenant"], "--by"),
        (["--store", "http://127.0.0.1:6379"], "--store"),
        (["--store-ca-file", "/nonexistent/ca.pem"], "--store-ca-file"),
    ],
)
def test_byoc_usage_refuses_bad_input_naming_the_field(args: list[str], field: str) -> None:
    given = ["--store", "rediss://127.0.0.1:1", *args] if "--store" not in args else args
    answer = byoc_usage(*given, "-o", "json")
    assert answer.returncode == 2, answer.stderr
    assert json.loads(answer.stdout)["error"]["field"] == field
    assert "Traceback" not in answer.stderr


def test_byoc_usage_reads_hours_from_since(store: RedisServer) -> None:
    from runtime.serve.ledger import UsageLedger, store_client

    async def write() -> None:
        now = time.time()
        for hours_ago, key in ((0, "alice"), (30, "bob")):
            ledger = UsageLedger(store_client(store.url), clock=lambda h=hours_ago: now - h * 3600)
            ledger.record(key, "m", "base", 10, 4, 2, 0.5)
            await ledger.close()
            await ledger.redis.aclose()

    asyncio.run(write())
    assert set(ledger_by_key(store)) == {"alice"}  # 2h: bob's hour is a day before
    answer = byoc_usage("--store", store.url, "--since", "2d", "-o", "json")
    rows = json.loads(answer.stdout)["usage"]
    assert [(r["key"], r["requests"], r["cached_tokens"], r["gpu_seconds"]) for r in rows] == [
        ("alice", 1, 4, 0.5),
        ("bob", 1, 4, 0.5),
    ]


def test_held_usage_is_bounded_and_what_is_dropped_is_counted(store: RedisServer) -> None:
    from runtime.serve.ledger import UsageLedger, store_client

    async def run() -> UsageLedger:
        ledger = UsageLedger(store_client(store.url), max_pending_buckets=2)
        store.outage()
        for key in ("a", "b", "c"):
            ledger.record(key, "m", "base", 1, 0, 1, 0.1)
        ledger.record("a", "m", "base", 1, 0, 1, 0.1)  # an existing bucket still takes records
        with pytest.raises(redis.RedisError):
            await ledger.flush()
        store.resume()
        await ledger.flush()  # the same batch, sent again
        await ledger.close()
        await ledger.redis.aclose()
        return ledger

    ledger = asyncio.run(run())
    assert ledger.dropped_records == 1 and ledger.written_records == 3
    rows = {row["key"]: row["requests"] for row in ledger_by_key(store).values()}
    assert rows == {"a": 2, "b": 1}


def test_busy_time_is_split_among_the_requests_in_flight() -> None:
    """Per replica: while n requests are in flight, each is charged 1/n of the time; idle time is nobody's."""
    from runtime.serve.ledger import ReplicaBusyTime

    now = [0.0]
    busy = ReplicaBusyTime(clock=lambda: now[0])
    a = busy.begin("r1")  # t=0: a alone
    now[0] = 2.0
    b = busy.begin("r1")  # t=2: a and b
    other = busy.begin("r2")  # another replica's time is its own
    now[0] = 6.0
    charged_a = busy.end("r1", a)  # 2 alone + 4 shared / 2
    now[0] = 7.0
    charged_b = busy.end("r1", b)  # 4 shared / 2 + 1 alone
    now[0] = 9.0  # idle
    c = busy.begin("r1")
    now[0] = 10.0
    assert (charged_a, charged_b, busy.end("r1", c), busy.end("r2", other)) == (4.0, 3.0, 1.0, 8.0)


class ReplyCutter:
    """A TCP proxy to the store that, once armed, passes the next script call (EVALSHA) on to the store and then
    cuts the connection before the store's reply comes back: the write is applied, and the gateway cannot know it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.armed = False
        self.cuts = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        cut = asyncio.Event()

        async def upstream() -> None:
            while data := await reader.read(65536):
                cutting = self.armed and b"EVALSHA" in data.upper()
                if cutting:
                    self.armed = False
                    self.cuts += 1
                    cut.set()  # the store's reply to this goes nowhere: the connection closes when it comes
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while (data := await up_reader.read(65536)) and not cut.is_set():
                writer.write(data)
                await writer.drain()

        await asyncio.wait(
            [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())],
            return_when=asyncio.FIRST_COMPLETED,
        )
        for side in (writer, up_writer):
            side.close()


def test_a_write_whose_reply_is_lost_is_not_counted_twice(store: RedisServer) -> None:
    from runtime.serve.ledger import UsageLedger, store_client

    async def run() -> int:
        cutter = ReplyCutter(store.port)
        port = await cutter.start()
        ledger = UsageLedger(store_client(f"redis://127.0.0.1:{port}"))
        ledger.record("warmup", "m", "base", 1, 0, 1, 0.1)  # the script is loaded on this first write
        await ledger.flush()
        cutter.armed = True
        ledger.record("alice", "m", "base", 100, 40, 7, 1.0)
        with contextlib.suppress(redis.RedisError):
            await ledger.flush()  # the reply is lost: an error, or the client's own retry of the same write
        await ledger.flush()  # whatever is still held is sent again, under the same write id
        await ledger.close()
        await ledger.redis.aclose()
        cutter.server.close()
        return cutter.cuts

    assert asyncio.run(run()) == 1
    alice = ledger_by_key(store)["alice"]
    assert [alice[name] for name in COUNTED] == [1, 100, 40, 7]
