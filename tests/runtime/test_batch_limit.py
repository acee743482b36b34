"""The TTFT-guarded batch limit (runtime/serve/batch/limit.py) over the real gateway, the real batch worker and a
stand-in engine whose online time to first token grows with the batch lines it runs (tests/runtime/standin.py):
batch fills the slots while no online request comes, shrinks when online TTFT rises, and grows back when it falls,
and online requests stay fast while the batch still progresses."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.model_build.stores import open_store
from tests.conftest import ROOT
from tests.runtime.conftest import MODEL, Server, free_port, http, metric, start_gateway, wait_for
from tests.runtime.standin import ANSWER, StandInEngine
from tests.runtime.test_batch_worker import WORKER_TOKEN, Worker, chat_line, state_of, write_batch

CONTENTION = 0.08  # seconds an online first token waits per batch line in flight, while the engine is "slow"


@pytest.fixture()
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(WORKER_TOKEN + "\n")
    return path


class OnlineTraffic:
    """Streamed online requests, one every `gap` seconds (at most 4 at once), each one's TTFT as the client sees it."""

    def __init__(self, url: str, gap: float = 0.1) -> None:
        import openai

        self.client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
        self.gap = gap
        self.samples: list[tuple[float, float]] = []  # (when it started, TTFT seconds)
        self.failures = 0
        self._stop = threading.Event()
        self._slots = threading.Semaphore(4)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> OnlineTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._slots.acquire(timeout=1):
                threading.Thread(target=self._one, daemon=True).start()
            self._stop.wait(self.gap)

    def _one(self) -> None:
        started = time.perf_counter()
        try:
            stream = self.client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    self.samples.append((started, time.perf_counter() - started))
                    break
            stream.close()
        except Exception:
            self.failures += 1
        finally:
            self._slots.release()

    def ttfts(self, since: float) -> list[float]:
        return [ttft for started, ttft in self.samples if started >= since]


@pytest.fixture()
def engine() -> Iterator[StandInEngine]:
    server = StandInEngine(model=MODEL, batch_seconds=0.3)
    yield server
    server.stop()


def _limit(gateway: Server) -> float:
    value = metric(gateway.metrics(), "byoc_gateway_batch_limit")
    assert value is not None, "the gateway exports byoc_gateway_batch_limit"
    return value


def test_the_batch_limit_shrinks_when_online_ttft_rises_and_grows_back_when_it_falls(
    tmp_path: Path, token: Path, engine: StandInEngine
) -> None:
    gateway = start_gateway(
        tmp_path, [engine.url], "--batch-worker-token-file", str(token), "--max-concurrency", "8",
        "--batch-slots-per-replica", "8", "--batch-headroom", "2", "--batch-ttft-window", "10",
        "--batch-idle-seconds", "1", "--health-interval", "0.5",
    )  # fmt: skip
    root = f"file://{tmp_path / 'batch'}"
    store = open_store(root, "--batch-store")
    lines = [
        {**chat_line(f"b{i:04d}", "x"), "body": {**chat_line("", "x")["body"], "user": "batch"}} for i in range(2000)
    ]
    batch_id = write_batch(store, lines)
    worker = Worker(tmp_path, gateway.url, root, token, "--concurrency", "8")

    def completed() -> int:
        counts = state_of(store, batch_id).get("request_counts") or {}
        return int(counts.get("completed", 0))

    try:
        # no online traffic: batch may use every slot less the headroom (8 - 2)
        wait_for(lambda: engine.batch_in_flight >= 5, 30, "batch lines fill the idle slots")
        assert _limit(gateway) == 6
        with OnlineTraffic(gateway.url) as online:
            # online traffic is back: the slots lent to batch while it was away are taken back at once
            wait_for(lambda: len(online.samples) >= 10, 30, "online requests answered")
            assert _limit(gateway) < 6
            # the engine shares well (online TTFT does not move with batch lines): the limit is learned upwards
            wait_for(lambda: _limit(gateway) >= 3, 40, "the limit grows while online TTFT holds")
            fast_since = time.perf_counter()
            time.sleep(2)
            fast = online.ttfts(fast_since)
            # the engine gets compute-bound: each batch line in flight delays online first tokens
            engine.contention = CONTENTION
            wait_for(lambda: _limit(gateway) <= 1, 20, "the limit shrinks when online TTFT rises")
            time.sleep(1)  # the batch lines admitted above the new limit finish (0.3 s each)
            held_since, done_before = time.perf_counter(), completed()
            time.sleep(5)
            held = online.ttfts(held_since)
            assert completed() > done_before, "the batch still progresses while the limit guards online TTFT"
            # the engine is fast again: the limit grows back
            engine.contention = 0.0
            wait_for(lambda: _limit(gateway) >= 3, 40, "the limit grows back when online TTFT falls")
            assert online.failures == 0
        assert len(fast) >= 5 and len(held) >= 20
        # what an online user notices: with the limit down, most first tokens come as fast as with no batch work
        # (one batch line costs CONTENTION; the limit at its peak would have cost 3-6 x CONTENTION)
        assert statistics.median(held) < statistics.median(fast) + CONTENTION / 2
        assert sorted(held)[int(0.75 * len(held))] < statistics.median(fast) + CONTENTION * 1.5
        scraped = gateway.metrics()
        assert (metric(scraped, "byoc_gateway_batch_ttft_baseline_seconds") or 0) > 0
        assert (metric(scraped, "byoc_gateway_batch_requests_total", decision="yielded") or 0) > 0
    finally:
        worker.stop()
        gateway.stop()


def test_bad_batch_limit_flags_exit_2_with_one_message(tmp_path: Path, token: Path) -> None:
    for flag, value in (("--batch-ttft-ratio", "0.5"), ("--batch-ttft-window", "2")):
        result = subprocess.run(
            [sys.executable, "-m", "byoc", "serve", "gateway", "--listen", f"127.0.0.1:{free_port()}", "--model",
             MODEL, "--upstream", "http://127.0.0.1:9", "--insecure-no-auth", "--batch-worker-token-file", str(token),
             flag, value],
            check=False, capture_output=True, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
        assert result.returncode == 2 and flag in result.stderr and "Traceback" not in result.stderr


def test_no_batch_line_enters_while_an_online_request_waits_for_its_first_token(tmp_path: Path, token: Path) -> None:
    """trtllm-serve has no per-request priority (1.3.0rc19), so the gateway keeps batch prompts out of the engine
    iterations an online first token waits for: a batch line sent then is told to yield (429 batch_yield, with
    Retry-After); once the online request has its first token, batch lines are let in while it still streams."""
    import openai

    from runtime.serve.batch import layout

    engine = StandInEngine(model=MODEL, chunk_gap=0.4)  # after its first token an answer streams for 1.6 s
    gateway = start_gateway(
        tmp_path, [engine.url], "--batch-worker-token-file", str(token), "--max-concurrency", "8",
        "--batch-slots-per-replica", "8", "--batch-headroom", "2", "--batch-ttft-ratio", "0",
        "--health-interval", "0.5",
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {WORKER_TOKEN}", layout.OWNER_HEADER: "ci", "Content-Type": "application/json"}
    line = json.dumps(chat_line("b", "hi")["body"]).encode()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    first_token, words = threading.Event(), []

    def online() -> None:
        # held 1.5 s in the engine before its first token, as a long prompt's prefill would be
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True, user="hold:1.5"
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                words.append(chunk.choices[0].delta.content)
                first_token.set()

    user = threading.Thread(target=online)
    try:
        assert http("POST", gateway.url + "/v1/chat/completions", line, headers).status == 200
        user.start()
        wait_for(lambda: metric(gateway.metrics(), "byoc_gateway_in_flight_requests") == 1, 10, "the online request")
        refused = http("POST", gateway.url + "/v1/chat/completions", line, headers)
        assert not first_token.is_set(), "the batch line was sent while the online request waited for its first token"
        assert refused.status == 429 and json.loads(refused.body)["error"]["code"] == "batch_yield"
        assert int(refused.headers["retry-after"]) >= 1
        # a hold, not a lack of room: the worker waits without shrinking its send window
        assert refused.headers[layout.YIELD_HEADER.lower()] == "hold"
        assert first_token.wait(10)
        admitted = http("POST", gateway.url + "/v1/chat/completions", line, headers)
        assert admitted.status == 200, "after the online first token, batch lines are let in again"
        assert len(words) < 5, "the online answer was still streaming when the batch line was let in"
        user.join(timeout=20)
        assert "".join(words) == "".join(ANSWER), "the online answer came whole"
    finally:
        gateway.stop()
        engine.stop()


def test_a_request_asking_for_a_priority_is_refused_naming_the_field(tmp_path: Path, token: Path) -> None:
    """vLLM's and SGLang's `priority` field: trtllm-serve 1.3.0rc19 refuses it (400, extra fields forbidden), so the
    gateway refuses it itself with a message that says what to do instead; nothing reaches the engine."""
    import openai

    engine = StandInEngine(model=MODEL)
    gateway = start_gateway(tmp_path, [engine.url], "--batch-worker-token-file", str(token))
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    try:
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, extra_body={"priority": 0}
            )
        error = refused.value.body
        assert isinstance(error, dict) and error.get("param") == "priority"
        assert "trtllm-serve" in str(error.get("message")) and "/v1/batches" in str(error.get("message"))
        assert engine.requests == []
    finally:
        gateway.stop()
        engine.stop()


def test_gateway_replicas_share_the_engines_slots_for_batch_not_each_take_them_all(
    tmp_path: Path, token: Path, engine: StandInEngine
) -> None:
    """Two gateway replicas (one limits store: they count each other by heartbeat) in front of one engine of 8
    slots, headroom 2, and a batch worker sending through each: batch lines in the engine stay within the 6 slots
    the headroom leaves, 3 a gateway, where each gateway on its own would let 6 in (12 in all, 4 past what the
    engine runs at once: online requests would queue behind them). When one gateway goes, the other takes its
    share once its heartbeat lapses."""
    from tests.runtime.test_shared_limits import RedisServer

    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis")
    flags = ("--batch-worker-token-file", str(token), "--max-concurrency", "8", "--batch-slots-per-replica", "8",
             "--batch-headroom", "2", "--batch-ttft-ratio", "0", "--health-interval", "0.5",
             "--store", redis.url)  # fmt: skip
    gateways = [start_gateway(tmp_path, [engine.url], *flags) for _ in range(2)]
    workers: list[Worker] = []
    seen: list[int] = []
    try:
        wait_for(
            lambda: all(metric(g.metrics(), "byoc_gateway_limits_store_replicas") == 2 for g in gateways),
            what="two gateway replicas counted",
        )
        assert [metric(g.metrics(), "byoc_gateway_batch_capacity") for g in gateways] == [3, 3]
        for n, gateway in enumerate(gateways):
            root = f"file://{tmp_path / f'batch-{n}'}"
            lines = [{**chat_line(f"g{n}-{i:04d}", "x"), "body": {**chat_line("", "x")["body"], "user": "batch"}}
                     for i in range(400)]  # fmt: skip
            write_batch(open_store(root, "--batch-store"), lines)
            workers.append(Worker(tmp_path, gateway.url, root, token, "--concurrency", "8"))
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            seen.append(engine.batch_in_flight)
            time.sleep(0.02)
        assert max(seen) == 6, f"batch lines in the engine at once: {sorted(set(seen))}"
        gateways.pop().stop()
        wait_for(lambda: metric(gateways[0].metrics(), "byoc_gateway_batch_capacity") == 6, 20, "the share back")
    finally:
        for worker in workers:
            worker.stop()
        for gateway in gateways:
            gateway.stop()
        redis.stop()


def test_with_no_engine_ready_the_gateways_batch_capacity_is_0_not_less(tmp_path: Path, token: Path) -> None:
    """Engines not ready yet (scaled to zero, or starting): the gateway's share of their slots is 0, and its
    byoc_gateway_batch_capacity gauge (requests it may have in flight before batch lines stop being admitted) says 0,
    not 0 slots less --batch-headroom (-2): a dashboard or alert on it must not read a negative count of requests."""
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens: the replica never turns ready
    gateway = start_gateway(
        tmp_path, [nobody], "--batch-worker-token-file", str(token), "--max-concurrency", "8",
        "--batch-slots-per-replica", "8", "--batch-headroom", "2", "--health-interval", "0.5", wait=False,
    )  # fmt: skip
    try:
        gateway.wait("/health")
        assert metric(gateway.metrics(), "byoc_gateway_upstreams_ready") == 0
        assert metric(gateway.metrics(), "byoc_gateway_batch_capacity") == 0
    finally:
        gateway.stop()
