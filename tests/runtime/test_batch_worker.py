"""The batch worker (runtime/serve/batch/worker.py) as a subprocess, against the real gateway and CPU engine, over a
file:// batch root and a moto S3 (+ KMS) one: OpenAI-shaped results, exactly one result per custom_id through kill -9
at random points, cancel, per-line errors, the gateway's batch admission class, a gateway killed mid-batch, expiry and
the sweep. Inputs and batch records are written the way runtime/serve/batch/layout.py says (the Files/Batches API is
another branch's)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.model_build.stores import ObjectMissing, Store, open_store
from runtime.serve.batch import layout, owner_index
from tests.conftest import ROOT
from tests.runtime.conftest import (
    KEYS,
    LOG_FILES,
    MODEL,
    Server,
    free_port,
    http,
    long_stream,
    metric,
    start_gateway,
    wait_for,
)

WORKER_TOKEN = "wk-batch-9c1e7a3f5b2d4e6f8a0c"
CANARY = "zdr-batch-canary-3e8f1a"  # in every prompt and custom_id: it must reach no log line
ENDPOINT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("batch-token") / "token"
    path.write_text(WORKER_TOKEN + "\n")
    return path


def batch_gateway(
    folder: Path, engine: Server, keys_file: Path, token_file: Path, *extra: str, port: int = 0
) -> Server:
    args = ["--batch-worker-token-file", str(token_file), "--health-interval", "0.5", *extra]
    if port:
        server = Server("gateway", _gateway_args(engine, keys_file, port, args), folder, port)
        server.wait("/ready")
        return server
    return start_gateway(folder, [engine.url], *args, keys=keys_file)


def _gateway_args(engine: Server, keys_file: Path, port: int, extra: list[str]) -> list[str]:
    return [
        "gateway",
        "--listen",
        f"127.0.0.1:{port}",
        "--model",
        MODEL,
        "--max-context",
        "2048",
        "--upstream",
        engine.url,
        "--api-keys",
        str(keys_file),
        *extra,
    ]


@pytest.fixture(scope="module")
def gateway(engine: Server, keys_file: Path, token_file: Path, runtime_dir: Path) -> Iterator[Server]:
    server = batch_gateway(runtime_dir, engine, keys_file, token_file)
    yield server
    server.stop()


class Worker:
    """`python -m runtime.serve.batch.worker` with its output in a file (kept for the retention check)."""

    def __init__(
        self, folder: Path, gateway: str, root: str, token_file: Path, *extra: str, env: dict[str, str] | None = None
    ) -> None:
        self.log = folder / f"worker-{time.monotonic_ns()}.log"
        LOG_FILES.append(self.log)
        args = [
            "--gateway",
            gateway,
            "--batch-store",
            root,
            "--worker-token-file",
            str(token_file),
            "--poll-seconds",
            "0.2",
            "--lease-seconds",
            "2",
            "--commit-lines",
            "5",
            "--commit-seconds",
            "0.3",
            "--concurrency",
            "4",
            *extra,
        ]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "runtime.serve.batch.worker", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def chat_line(custom_id: str, content: str, max_tokens: int = 4, model: str = MODEL) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}


def write_batch(store: Store, lines: list[dict[str, Any]] | bytes, owner: str = "ci", **record: Any) -> str:
    """An input file and a batch record, as the gateway's Files/Batches API writes them (layout.py), less their
    owner-index entries (runtime/serve/batch/owner_index.py), which the worker's sweep writes."""
    file_id, batch_id = layout.new_file_id(), layout.new_batch_id()
    content = lines if isinstance(lines, bytes) else b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    now = int(time.time())
    store.write_bytes(layout.file_content(file_id), content)
    store.write_bytes(
        layout.file_object(file_id),
        json.dumps(
            {"id": file_id, "object": "file", "bytes": len(content), "created_at": now, "filename": "in.jsonl",
             "purpose": "batch", "owner": owner, "expires_at": now + 3600}
        ).encode(),
    )  # fmt: skip
    batch = {"id": batch_id, "owner": owner, "input_file_id": file_id, "endpoint": ENDPOINT, "metadata": None,
             "completion_window": "24h", "created_at": now, "expires_at": now + 24 * 3600}  # fmt: skip
    store.write_bytes(layout.batch_record(batch_id), json.dumps({**batch, **record}).encode())
    return batch_id


def state_of(store: Store, batch_id: str) -> dict[str, Any]:
    try:
        value: dict[str, Any] = json.loads(store.read_bytes(layout.batch_state(batch_id)))
    except ObjectMissing:
        return {}
    return value


def wait_status(store: Store, batch_id: str, statuses: set[str], timeout: float = 120.0) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(
        lambda: (s := state_of(store, batch_id)).get("status") in statuses and s, timeout, f"batch in {statuses}"
    )
    return found


def file_lines(store: Store, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in store.read_bytes(layout.file_content(file_id)).splitlines()]


def assert_exactly_one_result_each(store: Store, state: dict[str, Any], custom_ids: list[str]) -> None:
    results = file_lines(store, state.get("output_file_id")) + file_lines(store, state.get("error_file_id"))
    seen = [r["custom_id"] for r in results]
    assert sorted(seen) == sorted(custom_ids), "each custom_id has exactly one result, none missing"
    assert state["request_counts"]["total"] == len(custom_ids)
    assert state["request_counts"]["completed"] + state["request_counts"]["failed"] == len(custom_ids)


@pytest.fixture()
def file_root(tmp_path: Path) -> tuple[str, Store]:
    root = f"file://{tmp_path / 'batch'}"
    return root, open_store(root, "--batch-store")


@pytest.fixture()
def s3_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Store]]:
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    requests.post(f"{endpoint}/moto-api/reset", timeout=10)
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-2",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    boto3.client("s3").create_bucket(
        Bucket="byoc-artifacts", CreateBucketConfiguration={"LocationConstraint": "eu-west-2"}
    )
    key = boto3.client("kms").create_key(Description="byoc batch")["KeyMetadata"]["Arn"]
    root = "s3://byoc-artifacts/batch"
    monkeypatch.setenv("BYOC_TEST_KMS_KEY", key)
    try:
        yield root, open_store(root, "--batch-store", key)
    finally:
        server.stop()


def test_a_batch_completes_with_openai_shaped_output_and_per_line_errors(
    gateway: Server, file_root: tuple[str, Store], token_file: Path, runtime_dir: Path, engine: Server
) -> None:
    root, store = file_root
    good = [chat_line(f"{CANARY}-ok-{i}", f"{CANARY} say {i}") for i in range(6)]
    unknown_model = chat_line(f"{CANARY}-unknown", "hello", model="no-such-model")
    too_long = chat_line(f"{CANARY}-too-long", f"{CANARY} " * 200, max_tokens=1000)  # the engine's 400
    wrong_method = {**chat_line(f"{CANARY}-get", "hello"), "method": "GET"}
    streamed = chat_line(f"{CANARY}-stream", "hello")
    streamed["body"]["stream"] = True
    lines = [*good, unknown_model, too_long, wrong_method, streamed]
    batch_id = write_batch(store, lines)
    before = metric(gateway.metrics(), "byoc_gateway_batch_requests_total", decision="admitted") or 0.0
    worker = Worker(runtime_dir, gateway.url, root, token_file)
    try:
        state = wait_status(store, batch_id, layout.TERMINAL)
    finally:
        worker.stop()
    assert state["status"] == "completed"
    assert state["request_counts"] == {"total": 10, "completed": 6, "failed": 4}
    assert state["usage"]["output_tokens"] >= 6 and state["usage"]["total_tokens"] > state["usage"]["output_tokens"]
    assert {"in_progress_at", "finalizing_at", "completed_at"} <= set(state)
    assert_exactly_one_result_each(store, state, [line["custom_id"] for line in lines])

    output = file_lines(store, state["output_file_id"])
    for result in output:
        assert set(result) == {"id", "custom_id", "response", "error"} and result["error"] is None
        assert result["id"].startswith("batch_req_")
        assert result["response"]["status_code"] == 200 and result["response"]["request_id"]
        assert result["response"]["body"]["object"] == "chat.completion"
        assert result["response"]["body"]["model"] == MODEL
    errors = {r["custom_id"]: r for r in file_lines(store, state["error_file_id"])}
    assert errors[f"{CANARY}-unknown"]["response"]["status_code"] == 404
    assert errors[f"{CANARY}-unknown"]["response"]["body"]["error"]["code"] == "model_not_found"
    assert errors[f"{CANARY}-too-long"]["response"]["status_code"] == 400
    assert errors[f"{CANARY}-get"]["response"] is None
    assert errors[f"{CANARY}-get"]["error"]["code"] == "invalid_request"
    assert "stream" in errors[f"{CANARY}-stream"]["error"]["message"]

    record = json.loads(store.read_bytes(layout.file_object(state["output_file_id"])))
    assert record["purpose"] == "batch_output" and record["owner"] == "ci" and record["object"] == "file"
    assert record["expires_at"] == record["created_at"] + 24 * 3600
    assert record["bytes"] == len(store.read_bytes(layout.file_content(state["output_file_id"])))
    assert store.list_objects(layout.batch_parts(batch_id)) == []  # the parts are gone once the output is written
    assert not store.exists(layout.batch_lease(batch_id))
    after = metric(gateway.metrics(), "byoc_gateway_batch_requests_total", decision="admitted") or 0.0
    assert after - before >= 7  # each sendable line went through the gateway's batch class
    # zero data retention: no prompt, completion or custom_id in the worker's, the gateway's or the engine's log
    for path in (worker.log, gateway.log, engine.log):
        assert CANARY not in path.read_text(), path.name
    completion = output[0]["response"]["body"]["choices"][0]["message"]["content"]
    if len(completion) > 8:
        assert completion not in worker.log.read_text()


def test_kill_9_at_random_points_loses_and_duplicates_nothing(
    gateway: Server, s3_root: tuple[str, Store], token_file: Path, runtime_dir: Path
) -> None:
    """Over S3 with SSE-KMS: the worker killed during sending, right after a commit, and while finalizing, then
    restarted, again and again; at the end each custom_id has exactly one result and none is missing."""
    root, store = s3_root
    lines = [chat_line(f"line-{i:03d}", f"say {i}", max_tokens=3) for i in range(150)]
    batch_id = write_batch(store, lines)
    rng = random.Random(22)
    kms = ["--batch-kms-key", os.environ["BYOC_TEST_KMS_KEY"]]
    kills = {"sending": 0, "committing": 0, "finalizing": 0}
    plan = ["sending", "committing", "sending", "committing", "sending", "finalizing", "finalizing"]
    for moment in plan:
        # every run is held after the output file is written and before state.json says completed (killed there at a
        # finalizing moment): no run of the plan can end the batch on its own, however fast the lines go (CI saw the
        # batch complete during the last sending moment, before any finalizing kill)
        pause = {"BYOC_BATCH_WORKER_PAUSE": "finalize_files_written:30"}
        worker = Worker(runtime_dir, gateway.url, root, token_file, *kms, env=pause)
        parts = len(store.list_objects(layout.batch_parts(batch_id)))
        try:
            _wait_for_moment(store, batch_id, moment, parts, worker, rng)
        finally:
            if worker.process.poll() is None and state_of(store, batch_id).get("status") not in layout.TERMINAL:
                kills[moment] += 1
            worker.kill()
        if state_of(store, batch_id).get("status") in layout.TERMINAL:
            break
    print("kills", kills)
    assert kills["sending"] >= 1 and kills["committing"] >= 1 and kills["finalizing"] >= 1, kills
    worker = Worker(runtime_dir, gateway.url, root, token_file, *kms)
    try:
        state = wait_status(store, batch_id, layout.TERMINAL)
    finally:
        worker.stop()
    assert state["status"] == "completed"
    assert_exactly_one_result_each(store, state, [line["custom_id"] for line in lines])
    assert state["request_counts"]["completed"] == 150
    import boto3

    head = boto3.client("s3").head_object(
        Bucket="byoc-artifacts", Key="batch/" + layout.file_content(state["output_file_id"])
    )
    assert head["ServerSideEncryption"] == "aws:kms"
    assert store.list_objects(layout.batch_parts(batch_id)) == []


def _wait_for_moment(store: Store, batch_id: str, moment: str, parts: int, worker: Worker, rng: random.Random) -> None:
    """Returns when the running worker is at `moment` (sending, committing, finalizing) or can get no further."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and worker.process.poll() is None:
        status = state_of(store, batch_id).get("status")
        if status in layout.TERMINAL:
            return
        if moment != "finalizing" and status == "finalizing":
            return  # every line is done: this run is held in finalize; killed there, counted as planned
        if moment == "sending" and status == "in_progress":
            time.sleep(rng.uniform(0.05, 0.6))
            return
        if moment == "committing" and len(store.list_objects(layout.batch_parts(batch_id))) > parts:
            time.sleep(rng.uniform(0.0, 0.05))
            return
        if moment == "finalizing" and status == "finalizing":
            output = _output_file_id(store, batch_id)
            if output and store.exists(layout.file_object(output)):
                return
        time.sleep(0.01)


def _output_file_id(store: Store, batch_id: str) -> str:
    """The id the worker gives a batch's output file (derived from the batch id, so a second finalize reuses it)."""
    from runtime.serve.batch.worker import _derived_id

    return _derived_id("file-", batch_id, "output")


def test_a_store_that_refuses_commits_pauses_the_sending_and_nothing_is_lost(
    gateway: Server, s3_root: tuple[str, Store], token_file: Path, runtime_dir: Path
) -> None:
    """The bucket refuses the worker's result parts for a while (403 AccessDenied through a proxy in front of the S3
    server): the worker sends no new line until a commit succeeds again (each line run meanwhile would be metered,
    then lost with the buffer if the worker stopped, and run again), says so once rather than at every tick, then
    resumes; every custom_id has exactly one result."""
    import threading

    from tests.model_build.test_s3_store import DenyingProxy

    root, store = s3_root
    lines = [chat_line(f"p-{i:03d}", f"count {i}", max_tokens=20) for i in range(400)]
    batch_id = write_batch(store, lines)
    proxy = DenyingProxy(os.environ["AWS_ENDPOINT_URL"], deny="\x00")  # nothing denied yet
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{proxy.server_address[1]}"
    worker = Worker(runtime_dir, gateway.url, root, token_file, env={"AWS_ENDPOINT_URL": endpoint})
    try:
        wait_for(lambda: state_of(store, batch_id).get("request_counts", {}).get("completed", 0) >= 5, 60, "progress")
        proxy.deny = ".jsonl"  # the result parts: batches/{id}/parts/{seq}.jsonl
        wait_for(lambda: proxy.denied, 30, "a commit refused")
        time.sleep(3.0)  # the lines in flight when it began finish
        before = metric(gateway.metrics(), "byoc_gateway_batch_requests_total", decision="admitted")
        time.sleep(2.0)
        assert metric(gateway.metrics(), "byoc_gateway_batch_requests_total", decision="admitted") == before
        assert state_of(store, batch_id)["status"] == "in_progress"
        proxy.deny = "\x00"
        state = wait_status(store, batch_id, layout.TERMINAL, 120)
    finally:
        worker.stop()
        proxy.shutdown()
        proxy.server_close()
    assert state["status"] == "completed" and state["request_counts"]["completed"] == 400
    assert_exactly_one_result_each(store, state, [line["custom_id"] for line in lines])
    log = worker.log.read_text()
    assert log.count("sending paused") == 1 and "sending resumed" in log, log[-2000:]


def test_cancel_stops_new_lines_and_reports_the_rest(
    gateway: Server, file_root: tuple[str, Store], token_file: Path, runtime_dir: Path
) -> None:
    root, store = file_root
    lines = [chat_line(f"c-{i:03d}", f"count {i}", max_tokens=40) for i in range(80)]
    batch_id = write_batch(store, lines)
    worker = Worker(runtime_dir, gateway.url, root, token_file, "--concurrency", "2")
    try:
        wait_for(lambda: state_of(store, batch_id).get("request_counts", {}).get("completed", 0) >= 4, 60, "progress")
        asked = int(time.time()) - 5  # the time the gateway's cancel answer gave the client: the state keeps it
        store.write_bytes(layout.batch_cancel(batch_id), json.dumps({"cancelling_at": asked}).encode())
        state = wait_status(store, batch_id, layout.TERMINAL, 60)
        admitted = metric(gateway.metrics(), "byoc_gateway_batch_requests_total", decision="admitted")
        time.sleep(1.0)
        assert metric(gateway.metrics(), "byoc_gateway_batch_requests_total", decision="admitted") == admitted
    finally:
        worker.stop()
    assert state["status"] == "cancelled" and state["cancelling_at"] == asked <= state["cancelled_at"]
    assert_exactly_one_result_each(store, state, [line["custom_id"] for line in lines])
    errors = file_lines(store, state["error_file_id"])
    assert 0 < state["request_counts"]["completed"] < 80
    assert errors and all(e["error"]["code"] == "batch_cancelled" and e["response"] is None for e in errors)


def test_the_gateway_yields_batch_work_to_online_traffic_and_admits_it_after(
    engine: Server, keys_file: Path, token_file: Path, runtime_dir: Path
) -> None:
    import openai

    server = batch_gateway(
        runtime_dir,
        engine,
        keys_file,
        token_file,
        "--max-concurrency",
        "1",
        "--batch-headroom",
        "0",
        "--batch-ttft-ratio",
        "0",  # the fixed admission class alone (tests/runtime/test_batch_limit.py: the limit)
    )
    headers = {"Authorization": f"Bearer {WORKER_TOKEN}", layout.OWNER_HEADER: "ci", "Content-Type": "application/json"}
    body = json.dumps(chat_line("x", "hello")["body"]).encode()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEYS["ci"], max_retries=0, timeout=60)
    try:
        assert http("POST", server.url + ENDPOINT, body, headers).status == 200  # idle: admitted
        unknown = http("POST", server.url + ENDPOINT, body, {**headers, layout.OWNER_HEADER: "nobody"})
        assert unknown.status == 403 and unknown.json()["error"]["code"] == "batch_owner_unknown"
        online = long_stream(client, tokens=400)
        next(iter(online))  # an online request holds the one slot
        refused = http("POST", server.url + ENDPOINT, body, headers)
        assert refused.status == 429 and refused.json()["error"]["code"] == "batch_yield"
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers[layout.YIELD_HEADER.lower()] == "full"  # no room: the worker's window shrinks
        online.close()
        wait_for(lambda: metric(server.metrics(), "byoc_gateway_in_flight_requests") == 0, 20, "the slot freed")
        assert http("POST", server.url + ENDPOINT, body, headers).status == 200  # idle again: admitted again
        scraped = server.metrics()
        assert metric(scraped, "byoc_gateway_batch_requests_total", decision="yielded") == 1
        assert metric(scraped, "byoc_gateway_batch_requests_total", decision="admitted") == 2
        wrong = http("POST", server.url + ENDPOINT, body, {**headers, "Authorization": "Bearer wk-not-the-token-000"})
        assert wrong.status == 401
    finally:
        server.stop()
    access = server.log.read_text()
    assert "key=ci" in access and "reason=batch_yield class=batch" in access


def test_a_gateway_killed_mid_batch_is_waited_for_and_the_batch_resumes(
    engine: Server, keys_file: Path, token_file: Path, runtime_dir: Path, file_root: tuple[str, Store]
) -> None:
    root, store = file_root
    port = free_port()
    server = batch_gateway(runtime_dir, engine, keys_file, token_file, port=port)
    # enough lines that the batch is still running when the gateway goes (the engine batches its decode steps: 40
    # lines took under a second)
    lines = [chat_line(f"g-{i:03d}", f"say {i}", max_tokens=8) for i in range(400)]
    batch_id = write_batch(store, lines)
    worker = Worker(runtime_dir, server.url, root, token_file)
    try:
        wait_for(lambda: state_of(store, batch_id).get("request_counts", {}).get("completed", 0) >= 5, 60, "progress")
        server.kill()
        time.sleep(2.0)
        assert state_of(store, batch_id)["status"] == "in_progress" and worker.process.poll() is None
        server = batch_gateway(runtime_dir, engine, keys_file, token_file, port=port)
        state = wait_status(store, batch_id, layout.TERMINAL)
    finally:
        worker.stop()
        server.stop()
    assert state["status"] == "completed" and state["request_counts"]["completed"] == 400
    assert_exactly_one_result_each(store, state, [line["custom_id"] for line in lines])


def test_expiry_validation_and_the_sweep(
    gateway: Server, file_root: tuple[str, Store], token_file: Path, runtime_dir: Path
) -> None:
    root, store = file_root
    now = int(time.time())
    expired = write_batch(store, [chat_line(f"e-{i}", "hi") for i in range(3)], expires_at=now - 1)
    duplicate = write_batch(store, [chat_line("same", "hi"), chat_line("same", "again")])
    not_json = write_batch(store, b'{"custom_id": "a", "method": "POST"\n')
    # an output file past its expiry, and a batch that ended longer ago than the retention
    old_file = layout.new_file_id()
    store.write_bytes(layout.file_content(old_file), b"{}\n")
    store.write_bytes(layout.file_object(old_file), json.dumps({"id": old_file, "expires_at": now - 5}).encode())
    old_batch = write_batch(store, [chat_line("o", "hi")])
    store.write_bytes(
        layout.batch_state(old_batch), json.dumps({"status": "completed", "completed_at": now - 2 * 3600}).encode()
    )
    store.write_bytes(layout.batch_part(old_batch, 0), b"{}\n")  # what a crash after the state left
    worker = Worker(runtime_dir, gateway.url, root, token_file, "--retention-hours", "1", "--sweep-seconds", "0.2")
    try:
        state = wait_status(store, expired, layout.TERMINAL)
        failed = wait_status(store, duplicate, layout.TERMINAL)
        broken = wait_status(store, not_json, layout.TERMINAL)
        wait_for(lambda: not store.exists(layout.file_object(old_file)), 20, "the expired file swept")
        wait_for(lambda: not store.list_objects(layout.batch_folder(old_batch)), 20, "the old batch swept")
    finally:
        worker.stop()
    assert state["status"] == "expired" and state["request_counts"] == {"total": 3, "completed": 0, "failed": 3}
    assert {e["error"]["code"] for e in file_lines(store, state["error_file_id"])} == {"batch_expired"}
    assert state["output_file_id"] is None
    assert failed["status"] == "failed"
    assert failed["errors"]["data"][0]["code"] == "duplicate_custom_id" and failed["errors"]["data"][0]["line"] == 2
    assert broken["status"] == "failed" and broken["errors"]["data"][0]["line"] == 1
    assert not store.exists(layout.file_content(old_file))
    # the owner index: complete, nothing left of what the sweep deleted, the ended batches and the worker's error
    # file listed for their owner
    index = [o.key for o in store.list_objects(layout.INDEX)]
    assert layout.INDEX_COMPLETE in index
    assert not [k for k in index if old_batch in k or old_file in k]
    batches = {e.batch_id for e in map(owner_index.parse_batch_entry, index) if e is not None}
    assert {expired, duplicate, not_json} <= batches
    files = {e.file_id: e.purpose for e in map(owner_index.parse_file_entry, index) if e is not None}
    assert files.get(state["error_file_id"]) == "batch_output"
    assert all(k.startswith(layout.owner_files_index("ci")) or k.startswith(layout.owner_batches_index("ci"))
               for k in index if k != layout.INDEX_COMPLETE)  # fmt: skip


def test_the_sweep_leaves_no_version_of_what_it_deletes_in_a_versioned_bucket(
    gateway: Server, s3_root: tuple[str, Store], token_file: Path, runtime_dir: Path
) -> None:
    """The artifact bucket is versioned (stacks/aws/artifacts.py): an expired file and an ended batch are gone
    with every version, not left readable by VersionId until the lifecycle rule's day has passed."""
    import boto3

    root, store = s3_root
    s3 = boto3.client("s3")
    s3.put_bucket_versioning(Bucket="byoc-artifacts", VersioningConfiguration={"Status": "Enabled"})
    now = int(time.time())
    old_file = layout.new_file_id()
    for body in (b"first\n", b"second\n"):  # two versions of the content
        store.write_bytes(layout.file_content(old_file), body)
    store.write_bytes(layout.file_object(old_file), json.dumps({"id": old_file, "expires_at": now - 5}).encode())
    old_batch = write_batch(store, [chat_line("o", "hi")])
    for status in ("in_progress", "completed"):  # state.json rewritten, as a run does
        state = {"status": status, f"{status}_at": now - 2 * 3600}
        store.write_bytes(layout.batch_state(old_batch), json.dumps(state).encode())
    store.write_bytes(layout.batch_part(old_batch, 0), b"{}\n")
    flags = ["--batch-kms-key", os.environ["BYOC_TEST_KMS_KEY"], "--retention-hours", "1", "--sweep-seconds", "0.2"]
    worker = Worker(runtime_dir, gateway.url, root, token_file, *flags)
    try:
        wait_for(lambda: not store.exists(layout.file_object(old_file)), 20, "the expired file swept")
        wait_for(lambda: not store.list_objects(layout.batch_folder(old_batch)), 20, "the old batch swept")
    finally:
        worker.stop()
    for prefix in (f"batch/{layout.file_content(old_file)}", f"batch/{layout.batch_folder(old_batch)}"):
        listing = s3.list_object_versions(Bucket="byoc-artifacts", Prefix=prefix)
        assert listing.get("Versions", []) == [] and listing.get("DeleteMarkers", []) == [], prefix


def test_bad_flags_exit_2_with_one_message(tmp_path: Path, keys_file: Path, engine: Server) -> None:
    worker = subprocess.run(
        [sys.executable, "-m", "runtime.serve.batch.worker", "--gateway", "http://127.0.0.1:1",
         "--batch-store", f"file://{tmp_path}", "--worker-token-file", str(tmp_path / "missing")],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert worker.returncode == 2 and "--worker-token-file" in worker.stderr and "Traceback" not in worker.stderr
    short = tmp_path / "short"
    short.write_text("abc")
    gateway = subprocess.run(
        [sys.executable, "-m", "byoc", "serve", *_gateway_args(engine, keys_file, free_port(),
         ["--batch-worker-token-file", str(short)])],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert gateway.returncode == 2 and "--batch-worker-token-file" in gateway.stderr
    assert "Traceback" not in gateway.stderr


def test_a_batch_line_with_no_replica_ready_is_held_and_counted_for_the_autoscaler(
    keys_file: Path, token_file: Path, runtime_dir: Path
) -> None:
    """Scaled to zero: a batch line waits like an online request and shows in byoc_gateway_pending_requests (what the
    KEDA ScaledObject wakes the deployment on), instead of being told to yield."""
    import threading

    nowhere = f"http://127.0.0.1:{free_port()}"  # no engine there yet: the deployment at zero replicas
    server = start_gateway(
        runtime_dir, [nowhere], "--batch-worker-token-file", str(token_file), "--wake-timeout", "60",
        "--health-interval", "0.5", keys=keys_file,
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {WORKER_TOKEN}", layout.OWNER_HEADER: "ci", "Content-Type": "application/json"}
    answers: list[int] = []
    body = json.dumps(chat_line("held", "hello")["body"]).encode()
    sender = threading.Thread(target=lambda: answers.append(http("POST", server.url + ENDPOINT, body, headers).status))
    try:
        sender.start()
        wait_for(lambda: metric(server.metrics(), "byoc_gateway_pending_requests") == 1, 20, "the line held")
        assert metric(server.metrics(), "byoc_gateway_batch_requests_total", decision="yielded") in (None, 0.0)
    finally:
        server.stop()  # the drain answers the held line 503 at once; the worker would send it again
        sender.join(timeout=30)
    assert answers == [503]


def test_two_workers_never_run_one_batch_at_once(
    gateway: Server, file_root: tuple[str, Store], token_file: Path, runtime_dir: Path
) -> None:
    """Two worker replicas over one batch root: the lease gives each batch to one of them; two batches, each run by
    exactly one worker, each with exactly one result per custom_id."""
    root, store = file_root
    batches = {
        write_batch(store, [chat_line(f"{b}-{i:02d}", f"say {i}", max_tokens=3) for i in range(30)]): b
        for b in ("first", "second")
    }
    before = metric(gateway.metrics(), "byoc_gateway_batch_requests_total", decision="admitted") or 0.0
    workers = [Worker(runtime_dir, gateway.url, root, token_file, "--lease-seconds", "5") for _ in range(2)]
    try:
        states = {batch_id: wait_status(store, batch_id, layout.TERMINAL) for batch_id in batches}
    finally:
        for worker in workers:
            worker.stop()
    admitted = (metric(gateway.metrics(), "byoc_gateway_batch_requests_total", decision="admitted") or 0.0) - before
    assert admitted == 60, "no line was sent twice: no batch ran in two workers at once"
    for batch_id, prefix in batches.items():
        assert states[batch_id]["status"] == "completed"
        assert_exactly_one_result_each(store, states[batch_id], [f"{prefix}-{i:02d}" for i in range(30)])
        runners = [w for w in workers if f"batch {batch_id}: in_progress" in w.log.read_text()]
        assert len(runners) == 1, "one worker ran the batch"


def test_with_batch_preempt_an_online_request_ends_the_batch_lines_in_flight(
    engine: Server, keys_file: Path, token_file: Path, runtime_dir: Path
) -> None:
    """--batch-preempt (compute-bound engines): a batch line running when an online request starts is answered 429
    batch_yield at once (the worker sends it again later), and no batch line is admitted while online work runs."""
    import threading

    import openai

    server = batch_gateway(runtime_dir, engine, keys_file, token_file, "--batch-preempt", "--batch-ttft-ratio", "0")
    headers = {"Authorization": f"Bearer {WORKER_TOKEN}", layout.OWNER_HEADER: "ci", "Content-Type": "application/json"}
    long_line = chat_line("long", "count", max_tokens=1500)["body"]
    long_line["ignore_eos"] = True
    answers: list[Any] = []
    sender = threading.Thread(
        target=lambda: answers.append(http("POST", server.url + ENDPOINT, json.dumps(long_line).encode(), headers))
    )
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEYS["ci"], max_retries=0, timeout=60)
    try:
        sender.start()
        wait_for(lambda: metric(server.metrics(), "byoc_gateway_in_flight_requests") == 1, 20, "the batch line runs")
        online = long_stream(client, tokens=200)
        next(iter(online))
        sender.join(timeout=20)
        assert answers and answers[0].status == 429 and answers[0].json()["error"]["code"] == "batch_yield"
        short = json.dumps(chat_line("x", "hello")["body"]).encode()
        assert http("POST", server.url + ENDPOINT, short, headers).status == 429  # online work runs: batch waits
        online.close()
        wait_for(lambda: metric(server.metrics(), "byoc_gateway_in_flight_requests") == 0, 20, "the online end")
        assert http("POST", server.url + ENDPOINT, short, headers).status == 200
        assert metric(server.metrics(), "byoc_gateway_batch_requests_total", decision="preempted") == 1
    finally:
        server.stop()


def test_the_official_client_runs_a_batch_end_to_end(
    engine: Server, keys_file: Path, token_file: Path, runtime_dir: Path, tmp_path: Path
) -> None:
    """openai-python's files.create, batches.create/retrieve and files.content against the gateway's Batch API
    (--batch-store) with this worker behind it: OpenAI-shaped results, the owner's key alone sees them."""
    import io

    import openai

    root = f"file://{tmp_path / 'batch'}"
    server = batch_gateway(runtime_dir, engine, keys_file, token_file, "--batch-store", root)
    worker = Worker(runtime_dir, server.url, root, token_file)
    api = openai.OpenAI(base_url=server.url + "/v1", api_key=KEYS["ci"], max_retries=0, timeout=60)
    lines = [chat_line(f"client-{i}", f"say {i}") for i in range(5)]
    try:
        source = api.files.create(
            file=("requests.jsonl", io.BytesIO(b"".join(json.dumps(x).encode() + b"\n" for x in lines))),
            purpose="batch",
        )
        batch = api.batches.create(input_file_id=source.id, endpoint=ENDPOINT, completion_window="24h")
        done = wait_for(
            lambda: (b := api.batches.retrieve(batch.id)).status in layout.TERMINAL and b, 120, "the batch to end"
        )
        assert done.status == "completed" and done.output_file_id
        assert done.request_counts is not None and done.request_counts.completed == 5
        results = [json.loads(x) for x in api.files.content(done.output_file_id).text.splitlines()]
        assert sorted(r["custom_id"] for r in results) == [f"client-{i}" for i in range(5)]
        assert all(r["response"]["status_code"] == 200 and r["error"] is None for r in results)
        other = openai.OpenAI(base_url=server.url + "/v1", api_key=KEYS["slow"], max_retries=0, timeout=60)
        with pytest.raises(openai.NotFoundError):
            other.files.content(done.output_file_id)
    finally:
        worker.stop()
        server.stop()


def test_the_worker_reaches_a_tls_gateway_with_its_ca(
    engine: Server, keys_file: Path, token_file: Path, runtime_dir: Path, file_root: tuple[str, Store], tmp_path: Path
) -> None:
    """As the stacks render it: https:// to the gateway's Service, the certificate checked against --gateway-ca-file."""
    from tests.runtime.test_tls import wait_https

    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days",
         "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    root, store = file_root
    server = start_gateway(
        runtime_dir, [engine.url], "--tls-cert", str(cert), "--tls-key", str(key), "--batch-worker-token-file",
        str(token_file), keys=keys_file, wait=False,
    )  # fmt: skip
    batch_id = write_batch(store, [chat_line(f"tls-{i}", "hi") for i in range(3)])
    try:
        url = wait_https(server, cert)
        worker = Worker(runtime_dir, url, root, token_file, "--gateway-ca-file", str(cert))
        try:
            state = wait_status(store, batch_id, layout.TERMINAL, 60)
        finally:
            worker.stop()
    finally:
        server.stop()
    assert state["status"] == "completed" and state["request_counts"]["completed"] == 3


def test_a_small_batch_of_another_key_completes_while_a_big_one_runs(
    gateway: Server, file_root: tuple[str, Store], token_file: Path, runtime_dir: Path
) -> None:
    """Batches run several at once, fairly across owners: key `ci`'s long batches do not hold key `single`'s
    2-line batch back, neither from starting (--max-batches 1 is taken by `ci`, and an owner with nothing running
    still gets one started) nor from sending (the lines of both share the worker's send window, owners in turn)."""
    root, store = file_root
    big = [
        write_batch(store, [chat_line(f"big{n}-{i:03d}", f"count {i}", max_tokens=40) for i in range(80)], owner="ci")
        for n in range(3)
    ]
    worker = Worker(runtime_dir, gateway.url, root, token_file, "--max-batches", "1", "--concurrency", "64")
    try:
        wait_for(
            lambda: any(state_of(store, b).get("request_counts", {}).get("completed", 0) >= 2 for b in big),
            60,
            "a big one running",
        )
        small = write_batch(store, [chat_line("s-1", "hi"), chat_line("s-2", "hello")], owner="single")
        state = wait_status(store, small, layout.TERMINAL, 60)
        big_states = [state_of(store, b) for b in big]
        for b in big:
            store.write_bytes(layout.batch_cancel(b), json.dumps({"cancelling_at": int(time.time())}).encode())
        for b in big:
            wait_status(store, b, layout.TERMINAL, 60)
    finally:
        worker.stop()
    assert state["status"] == "completed" and state["request_counts"]["completed"] == 2
    # What the user notices is that the 2 lines did not wait for key `ci`'s 240: when they were done, some of `ci`'s
    # were not. (Which of `ci`'s batches was running at that moment depends on the machine's speed: on a loaded
    # runner the first can finish and the next still be `validating`, so no status is asserted.)
    big_done = sum(b.get("request_counts", {}).get("completed", 0) for b in big_states)
    assert big_done < 3 * 80, f"the small batch ended after all of key ci's lines: {big_done}"
    assert any(b.get("status") not in layout.TERMINAL for b in big_states)


def test_fair_order_takes_turns_between_owners_oldest_first() -> None:
    from runtime.serve.batch.worker import fair_order

    waiting = [(1.0, "a1", "A"), (2.0, "a2", "A"), (3.0, "a3", "A"), (4.0, "b1", "B"), (5.0, "b2", "B")]
    assert [b for b, _ in fair_order(waiting, [])] == ["a1", "b1", "a2", "b2", "a3"]
    # A already runs two: B's batches come first
    assert [b for b, _ in fair_order(waiting, ["A", "A"])] == ["b1", "b2", "a1", "a2", "a3"]


def test_an_input_file_deleted_under_a_batch_fails_it_and_delivers_the_lines_done(
    gateway: Server, file_root: tuple[str, Store], token_file: Path, runtime_dir: Path
) -> None:
    """The worker stopped mid-batch, the input file deleted (by hand, or a sweep), the worker restarted: the batch is
    `failed` naming the cause, and the results committed (and metered) before are in its output and error files."""
    root, store = file_root
    lines = [chat_line(f"d-{i:03d}", f"count {i}", max_tokens=40) for i in range(80)]
    batch_id = write_batch(store, lines)
    worker = Worker(runtime_dir, gateway.url, root, token_file, "--concurrency", "2")
    try:
        wait_for(lambda: len(store.list_objects(layout.batch_parts(batch_id))) >= 1, 60, "a part committed")
    finally:
        worker.kill()
    committed = {
        json.loads(raw)["custom_id"]
        for part in store.list_objects(layout.batch_parts(batch_id))
        for raw in store.read_bytes(part.key).splitlines()
    }
    input_file = json.loads(store.read_bytes(layout.batch_record(batch_id)))["input_file_id"]
    store.delete([layout.file_content(input_file), layout.file_object(input_file)])
    worker = Worker(runtime_dir, gateway.url, root, token_file)
    try:
        state = wait_status(store, batch_id, layout.TERMINAL, 60)
    finally:
        worker.stop()
    assert state["status"] == "failed"
    error = state["errors"]["data"][0]
    assert error["code"] == "input_file_deleted" and error["param"] == "input_file_id"
    assert input_file in error["message"]
    delivered = file_lines(store, state.get("output_file_id")) + file_lines(store, state.get("error_file_id"))
    assert committed and {r["custom_id"] for r in delivered} == committed
    assert len(delivered) == len(committed), "one result per custom_id"
    counts = state["request_counts"]
    assert counts["total"] == 80 and counts["completed"] + counts["failed"] == len(committed)
    assert store.list_objects(layout.batch_parts(batch_id)) == []


def test_a_poll_reads_the_state_of_batches_that_may_run_not_of_every_ended_one(tmp_path: Path) -> None:
    """The worker polls every --poll-seconds; the retention keeps ended batches for a day. Their state cannot change
    (only the sweep deletes them), so after the first poll it reads none of them again: on S3 or Cloud Storage every
    read is a billed GET, and 1,000 ended batches polled every 2 s would be 500 GETs a second for nothing."""
    import asyncio

    from runtime.serve.batch.worker import BatchWorker, WorkerSettings

    class Counted:
        """The real file:// store, with the state reads counted."""

        def __init__(self, store: Store) -> None:
            self.store, self.state_reads = store, 0

        def __getattr__(self, name: str) -> Any:
            return getattr(self.store, name)

        def read_bytes(self, key: str) -> bytes:
            self.state_reads += key.endswith("/state.json")
            return self.store.read_bytes(key)

    root = f"file://{tmp_path / 'batch'}"
    store = Counted(open_store(root, "--batch-store"))
    for _ in range(20):
        ended = write_batch(store.store, [chat_line("a", "x")])
        state = {"status": "completed", "completed_at": int(time.time())}  # within the retention: kept
        store.store.write_bytes(layout.batch_state(ended), json.dumps(state).encode())
    settings = WorkerSettings(gateway="http://127.0.0.1:9", batch_store=root, worker_token="t")
    worker = BatchWorker(settings, store=store)  # type: ignore[arg-type]
    worker._last_sweep = time.monotonic()  # the sweep (every 300 s) reads every state by design: not this poll
    asyncio.run(worker.poll_once())
    assert store.state_reads == 20
    asyncio.run(worker.poll_once())
    assert store.state_reads == 20, "the ended batches' states were read again"
    # a batch created later is still seen (and one swept away is forgotten)
    fresh = write_batch(store.store, [chat_line("b", "x")])
    state = {"status": "cancelled", "cancelled_at": int(time.time())}
    store.store.write_bytes(layout.batch_state(fresh), json.dumps(state).encode())
    asyncio.run(worker.poll_once())
    assert store.state_reads == 21
    assert fresh in worker._ended
