"""OpenAI's Files and Batches API on the real gateway, files in S3 with SSE-KMS (a moto server on 127.0.0.1), driven
by the official `openai` client: create, retrieve, list, content, delete, cancel; ownership between keys; each
refusal of an input file at create; a bucket that is gone; nothing of a request in the gateway's log."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import unquote

import boto3
import openai
import pytest
import requests
from moto.server import ThreadedMotoServer

from runtime.serve.batch.api import open_batch_store
from runtime.serve.batch.worker import BatchWorker, WorkerSettings
from tests.model_build.test_s3_store import DenyingProxy, _ProxyHandler
from tests.runtime.conftest import KEYS, MODEL, Server, free_port, http, start_gateway
from tests.runtime.standin import StandInEngine
from tests.runtime.test_cli import byoc

BUCKET = "byoc-artifacts"
ROOT = "batch/"
CANARY = "zdr-batch-canary-4b7e1d9a"
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "eu-west-2",
    "AWS_REGION": "eu-west-2",
}


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    requests.post(f"{endpoint}/moto-api/reset", timeout=10)  # moto keeps its state per process, not per server
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3(moto: str) -> Any:
    with mock.patch.dict(os.environ, AWS):
        client = boto3.client("s3", endpoint_url=moto)
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    # versioned, as stacks/aws/artifacts.py makes the artifact bucket: a delete must not leave earlier versions
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return client


@pytest.fixture(scope="module")
def kms_key(moto: str) -> str:
    with mock.patch.dict(os.environ, AWS):
        kms = boto3.client("kms", endpoint_url=moto)
    return str(kms.create_key(Description="byoc batch")["KeyMetadata"]["Arn"])


@pytest.fixture(scope="module")
def standin() -> Iterator[StandInEngine]:
    engine = StandInEngine()
    yield engine
    engine.stop()


def batch_gateway(folder: Path, engine: StandInEngine, keys: Path, moto: str, store: str, *extra: str) -> Server:
    # the gateway reaches S3 as a pod does: credentials and the endpoint in its environment
    with mock.patch.dict(os.environ, {**AWS, "AWS_ENDPOINT_URL": moto}):
        return start_gateway(
            folder,
            [engine.url],
            "--addon",
            "sql=hf://byoc-examples/sql-lora",
            "--health-interval",
            "0.5",
            "--batch-store",
            store,
            *extra,
            keys=keys,
        )


def sweep(endpoint: str, root: str, kms_key: str) -> None:
    """One sweep of the batch worker over s3://BUCKET/root, as the worker runs it (first thing at its start, then
    every --sweep-seconds): it deletes what expired and keeps the owner index whole (owner_index.py)."""
    with mock.patch.dict(os.environ, {**AWS, "AWS_ENDPOINT_URL": endpoint}):
        store = open_batch_store(f"s3://{BUCKET}/{root}", kms_key)
    settings = WorkerSettings(gateway="http://127.0.0.1:9", batch_store=store.uri(), worker_token="-")
    BatchWorker(settings, store).sweep()


@pytest.fixture(scope="module")
def gateway(
    runtime_dir: Path, standin: StandInEngine, keys_file: Path, moto: str, s3: Any, kms_key: str
) -> Iterator[Server]:
    sweep(moto, ROOT, kms_key)  # a new deployment's worker: its first sweep finds an empty root, the index complete
    server = batch_gateway(runtime_dir, standin, keys_file, moto, f"s3://{BUCKET}/{ROOT}", "--batch-kms-key", kms_key)
    yield server
    server.stop()


def client(server: Server, key: str = "ci") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEYS[key], max_retries=0, timeout=60)


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def request_line(custom_id: str, model: str = MODEL, **body: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"{CANARY} say hello"}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": messages, "max_tokens": 8, **body},
    }


def upload(api: openai.OpenAI, lines: list[Any], name: str = "requests.jsonl") -> Any:
    return api.files.create(file=(name, io.BytesIO(jsonl(lines))), purpose="batch")


def keys_under(s3: Any, prefix: str) -> list[str]:
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(str(o["Key"]) for o in listing)


def put_json(s3: Any, key: str, value: dict[str, Any], kms_key: str) -> None:
    """Writes an object as the gateway and the worker do: one PUT, SSE-KMS with the deployment's key."""
    body = json.dumps(value).encode()
    s3.put_object(Bucket=BUCKET, Key=key, Body=body, ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_key)


def test_files_round_trip_encrypted_with_the_key_and_deleted_from_the_bucket(
    gateway: Server, s3: Any, kms_key: str
) -> None:
    api = client(gateway)
    lines = [request_line("a"), request_line("b")]
    created = upload(api, lines, name=f"{CANARY}.jsonl")
    assert created.object == "file" and created.purpose == "batch" and created.status == "processed"
    assert created.id.startswith("file-") and created.bytes == len(jsonl(lines))
    assert created.filename == f"{CANARY}.jsonl"
    assert created.expires_at == created.created_at + 24 * 3600  # --batch-retention-hours' default
    assert api.files.retrieve(created.id) == created
    assert created.id in [f.id for f in api.files.list(purpose="batch")]
    assert api.files.content(created.id).content == jsonl(lines)

    stored = keys_under(s3, f"{ROOT}files/{created.id}/")
    assert stored == [f"{ROOT}files/{created.id}/content", f"{ROOT}files/{created.id}/object.json"]
    for key in keys_under(s3, ROOT):  # every object the gateway wrote: SSE-KMS with the deployment's key
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms", key
        assert kms_key.endswith(head["SSEKMSKeyId"].split("/")[-1]), key

    deleted = api.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    assert keys_under(s3, f"{ROOT}files/{created.id}/") == []  # gone from the bucket at once
    # every version too: no GetObject with a VersionId reads the prompt back, and no delete marker is left
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix=f"{ROOT}files/{created.id}/")
    assert versions.get("Versions", []) == [] and versions.get("DeleteMarkers", []) == []
    with pytest.raises(openai.NotFoundError):
        api.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        api.files.content(created.id)


def test_purpose_expiry_and_size_are_checked(gateway: Server, s3: Any, kms_key: str) -> None:
    api = client(gateway)
    body = jsonl([request_line("a")])
    before = keys_under(s3, ROOT)
    with pytest.raises(openai.BadRequestError) as caught:
        api.files.create(file=("x.jsonl", io.BytesIO(body)), purpose="fine-tune")
    assert caught.value.body["param"] == "purpose"  # type: ignore[index]
    for seconds in (60, 24 * 3600 + 1):  # below OpenAI's floor; above this deployment's retention
        with pytest.raises(openai.BadRequestError) as caught:
            api.files.create(
                file=("x.jsonl", io.BytesIO(body)),
                purpose="batch",
                expires_after={"anchor": "created_at", "seconds": seconds},
            )
        assert caught.value.body["param"] == "expires_after.seconds"  # type: ignore[index]
    assert keys_under(s3, ROOT) == before  # nothing written for a refused upload

    short = api.files.create(
        file=("x.jsonl", io.BytesIO(body)), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert short.expires_at == short.created_at + 3600
    # expired (its time passed, no sweep has run yet): 404 everywhere, as an unknown id
    key = f"{ROOT}files/{short.id}/object.json"
    record = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    put_json(s3, key, {**record, "expires_at": int(time.time()) - 1}, kms_key)
    with pytest.raises(openai.NotFoundError):
        api.files.retrieve(short.id)
    with pytest.raises(openai.NotFoundError):
        api.files.content(short.id)
    assert short.id not in [f.id for f in api.files.list()]

    # one byte over OpenAI's 200 MB: refused while it streams in, nothing written
    big = io.BytesIO(b"x" * (200 * 1024 * 1024 + 1))
    with pytest.raises(openai.APIStatusError) as over:
        api.files.create(file=("big.jsonl", big), purpose="batch")
    assert over.value.status_code == 413
    assert over.value.body["param"] == "file"  # type: ignore[index]
    del big
    assert not [k for k in keys_under(s3, ROOT) if k not in before and short.id not in k]


def test_files_list_pages_and_orders(gateway: Server) -> None:
    api = client(gateway, "single")
    ids = [upload(api, [request_line(str(n))]).id for n in range(3)]
    newest = api.files.list(limit=2)
    assert [f.id for f in newest.data] == ids[:0:-1] and newest.has_more
    assert [f.id for f in api.files.list(limit=2)] == ids[::-1]  # the client follows `after` to the end
    assert [f.id for f in api.files.list(order="asc")] == ids
    for file_id in ids:
        api.files.delete(file_id)


class CountingProxy(DenyingProxy):
    """Forwards every request to moto, as DenyingProxy does (denying none), and records each one: `METHOD /path?query`,
    the S3 requests the gateway makes."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream, deny="\x00")  # no key ends with NUL: nothing denied
        self.RequestHandlerClass = _CountingHandler
        self.seen: list[str] = []


class _CountingHandler(_ProxyHandler):
    server: CountingProxy

    def _count(self) -> None:
        self.server.seen.append(f"{self.command} {unquote(self.path)}")
        self._forward()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _count


@pytest.fixture()
def counted(moto: str) -> Iterator[tuple[str, CountingProxy]]:
    proxy = CountingProxy(moto)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}", proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_list_reads_one_page_of_the_callers_index_however_many_files_others_keep(
    runtime_dir: Path,
    standin: StandInEngine,
    keys_file: Path,
    moto: str,
    s3: Any,
    kms_key: str,
    counted: tuple[str, CountingProxy],
) -> None:
    """The S3 requests of one key's list (the official client auto-paging, 2 a page) are the same with 2 and with 12
    files of another key in the bucket, and none of them names another key's object; the list is exactly the key's
    own files, newest first; a deleted or expired file leaves it, and the sweep deletes the expired one's entry."""
    endpoint, proxy = counted
    root = "crowd/"
    sweep(moto, root, kms_key)
    server = batch_gateway(
        runtime_dir, standin, keys_file, endpoint, f"s3://{BUCKET}/{root}", "--batch-kms-key", kms_key
    )
    try:
        mine, crowd = client(server, "single"), client(server, "ci")
        ids = [upload(mine, [request_line(f"mine-{n}")]).id for n in range(3)]
        source = upload(mine, [request_line("b")])
        ids.append(source.id)
        batches = [
            mine.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h").id
            for _ in range(2)
        ]
        mine.files.list()  # the gateway's first list reads index/_complete (a HEAD), then knows the index is whole
        theirs: list[str] = []
        theirs_batches: list[str] = []
        files_cost, batches_cost = [], []
        for total in (2, 12):
            theirs += [upload(crowd, [request_line(f"theirs-{n}")]).id for n in range(total - len(theirs))]
            theirs_batches += [
                crowd.batches.create(
                    input_file_id=theirs[0], endpoint="/v1/chat/completions", completion_window="24h"
                ).id
                for _ in range(total // 2 - len(theirs_batches))
            ]
            proxy.seen.clear()
            assert [f.id for f in mine.files.list(limit=2)] == ids[::-1]  # the client follows `after`: 2 pages
            files_cost.append(list(proxy.seen))
            proxy.seen.clear()
            assert [b.id for b in mine.batches.list(limit=1)] == batches[::-1]
            batches_cost.append(list(proxy.seen))
        # page 1: one ListObjectsV2 of the key's index, a GET per file; page 2: the `after` file's record (its
        # place in the index), one ListObjectsV2, a GET per file
        assert len(files_cost[0]) == len(files_cost[1]) == 7, files_cost
        assert len([r for r in files_cost[1] if "list-type=2" in r]) == 2
        # a batch: batch.json, state.json and cancel (its status); page 2 adds the `after` batch's record
        assert len(batches_cost[0]) == len(batches_cost[1]) == 9, batches_cost
        for request in files_cost[1] + batches_cost[1]:
            assert not [other for other in theirs + theirs_batches if other in request], request
            assert "/index/ci/" not in request, request

        assert [f.id for f in mine.files.list(order="asc")] == ids
        assert [f.id for f in mine.files.list(order="asc", limit=3)] == ids  # `asc` pages too
        assert [f.id for f in mine.files.list(purpose="batch")] == ids[::-1]
        assert list(mine.files.list(purpose="batch_output")) == []
        assert sorted(f.id for f in crowd.files.list()) == sorted(theirs)

        mine.files.delete(ids[1])
        assert [f.id for f in mine.files.list(limit=1)] == [ids[3], ids[2], ids[0]]
        expired = f"{root}files/{ids[0]}/object.json"
        record = json.loads(s3.get_object(Bucket=BUCKET, Key=expired)["Body"].read())
        put_json(s3, expired, {**record, "expires_at": int(time.time()) - 1}, kms_key)  # no sweep has run yet
        assert [f.id for f in mine.files.list(limit=1)] == [ids[3], ids[2]]
        sweep(moto, root, kms_key)
        entries = keys_under(s3, f"{root}index/single/files/")
        assert [e.split("/")[-2].split(".")[1] for e in entries] == [ids[3], ids[2]]  # newest first
        assert keys_under(s3, f"{root}files/{ids[0]}/") == keys_under(s3, f"{root}files/{ids[1]}/") == []
        versions = s3.list_object_versions(Bucket=BUCKET, Prefix=f"{root}index/single/files/")
        assert len(versions.get("Versions", [])) == 2 and versions.get("DeleteMarkers", []) == []
    finally:
        server.stop()


def test_records_from_before_the_index_are_listed_until_the_sweep_has_indexed_them(
    runtime_dir: Path, standin: StandInEngine, keys_file: Path, moto: str, s3: Any, kms_key: str
) -> None:
    """A bucket written by a gateway before the owner index: its files and batches are listed (every record read,
    as before) until the worker's sweep has written their entries and index/_complete; then the index is what a
    list reads, and a record without its entry (a gateway that died between the two writes) is retrievable, not
    listed, until the next sweep gives it its entry."""
    root = "legacy/"
    now = int(time.time())

    def legacy_file(owner: str, created_at: int) -> str:
        file_id = f"file-legacy{created_at}{owner}"
        s3.put_object(Bucket=BUCKET, Key=f"{root}files/{file_id}/content", Body=jsonl([request_line("a")]))
        record = {"id": file_id, "object": "file", "bytes": 1, "created_at": created_at, "expires_at": now + 3600,
                  "filename": "in.jsonl", "purpose": "batch", "status": "processed", "owner": owner}  # fmt: skip
        put_json(s3, f"{root}files/{file_id}/object.json", record, kms_key)
        return file_id

    older, newer, other = legacy_file("single", now - 20), legacy_file("single", now - 10), legacy_file("ci", now - 5)
    batch_id = f"batch_legacy{now}"
    batch = {"id": batch_id, "owner": "single", "input_file_id": older, "endpoint": "/v1/chat/completions",
             "completion_window": "24h", "created_at": now - 1, "expires_at": now + 3600}  # fmt: skip
    put_json(s3, f"{root}batches/{batch_id}/batch.json", batch, kms_key)
    server = batch_gateway(runtime_dir, standin, keys_file, moto, f"s3://{BUCKET}/{root}", "--batch-kms-key", kms_key)
    try:
        mine = client(server, "single")
        assert [f.id for f in mine.files.list(limit=1)] == [newer, older]
        assert [b.id for b in mine.batches.list()] == [batch_id]
        assert keys_under(s3, f"{root}index/") == []

        sweep(moto, root, kms_key)
        assert f"{root}index/_complete" in keys_under(s3, f"{root}index/")
        assert len(keys_under(s3, f"{root}index/single/files/")) == 2
        assert len(keys_under(s3, f"{root}index/ci/files/")) == 1
        assert len(keys_under(s3, f"{root}index/single/batches/")) == 1
        assert [f.id for f in mine.files.list(limit=1)] == [newer, older]
        assert [b.id for b in mine.batches.list()] == [batch_id]
        assert [f.id for f in client(server, "ci").files.list()] == [other]

        late = legacy_file("single", now)  # the record written, its entry not: the gateway died in between
        assert mine.files.retrieve(late).id == late
        assert [f.id for f in mine.files.list()] == [newer, older]
        sweep(moto, root, kms_key)
        assert [f.id for f in mine.files.list()] == [late, newer, older]
        with pytest.raises(openai.BadRequestError):  # the input of a batch that has not ended
            mine.files.delete(older)
    finally:
        server.stop()


def test_batches_create_retrieve_list_and_cancel(gateway: Server, s3: Any, kms_key: str) -> None:
    api = client(gateway)
    source = upload(api, [request_line("a"), request_line("b"), request_line("c", max_tokens=4)])
    batch = api.batches.create(
        input_file_id=source.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"team": "search", "run": "nightly"},
    )
    assert batch.object == "batch" and batch.id.startswith("batch_")
    assert batch.status == "validating"  # until the worker writes its state
    assert batch.input_file_id == source.id and batch.endpoint == "/v1/chat/completions"
    assert batch.completion_window == "24h" and batch.expires_at == batch.created_at + 24 * 3600
    assert batch.metadata == {"team": "search", "run": "nightly"}
    assert batch.model == MODEL
    assert batch.request_counts is not None and batch.request_counts.total == 3
    assert api.batches.retrieve(batch.id) == batch
    record = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{ROOT}batches/{batch.id}/batch.json")["Body"].read())
    assert record["owner"] == "ci" and record["request_total"] == 3

    # the worker's state, written as layout.py says it does
    started = int(time.time())
    state = {"status": "in_progress", "in_progress_at": started, "request_counts": {"total": 3, "completed": 1}}
    put_json(s3, f"{ROOT}batches/{batch.id}/state.json", state, kms_key)
    running = api.batches.retrieve(batch.id)
    assert running.status == "in_progress" and running.in_progress_at == started
    assert running.request_counts is not None
    assert (running.request_counts.total, running.request_counts.completed, running.request_counts.failed) == (3, 1, 0)

    cancelling = api.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    marker = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{ROOT}batches/{batch.id}/cancel")["Body"].read())
    assert marker == {"cancelling_at": cancelling.cancelling_at}
    assert api.batches.retrieve(batch.id).status == "cancelling"
    done = {**state, "status": "cancelled", "cancelling_at": cancelling.cancelling_at, "cancelled_at": started + 1}
    put_json(s3, f"{ROOT}batches/{batch.id}/state.json", done, kms_key)
    cancelled = api.batches.retrieve(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at == started + 1
    with pytest.raises(openai.BadRequestError) as caught:  # a terminal batch, as OpenAI answers
        api.batches.cancel(batch.id)
    assert caught.value.body["param"] == "batch_id"  # type: ignore[index]

    # list: newest first, in pages the client follows
    more = [
        api.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h").id
        for _ in range(3)
    ]
    page = api.batches.list(limit=2)
    assert [b.id for b in page.data] == more[:0:-1] and page.has_more
    listed = [b.id for b in api.batches.list(limit=2)]
    assert listed[:4] == [*more[::-1], batch.id]
    for key in keys_under(s3, f"{ROOT}batches/"):
        assert s3.head_object(Bucket=BUCKET, Key=key)["ServerSideEncryption"] == "aws:kms", key


def test_a_key_sees_only_its_own_files_and_batches(gateway: Server) -> None:
    mine, theirs = client(gateway, "ci"), client(gateway, "single")
    source = upload(mine, [request_line("a")])
    batch = mine.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    for call in (
        lambda: theirs.files.retrieve(source.id),
        lambda: theirs.files.content(source.id),
        lambda: theirs.files.delete(source.id),
        lambda: theirs.batches.retrieve(batch.id),
        lambda: theirs.batches.cancel(batch.id),
        lambda: theirs.batches.create(
            input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert source.id not in [f.id for f in theirs.files.list()]
    assert batch.id not in [b.id for b in theirs.batches.list()]
    assert mine.files.retrieve(source.id).id == source.id  # untouched by the other key's attempts
    assert mine.batches.retrieve(batch.id).status == "validating"


REFUSALS = {
    "not JSON": ([request_line("a"), b"{" + CANARY.encode()], 2, "line"),
    "not an object": ([request_line("a"), [CANARY]], 2, "line"),
    "no custom_id": ([{**request_line("a"), "custom_id": None}], 1, "custom_id"),
    "duplicate custom_id": ([request_line(CANARY), request_line("b"), request_line(CANARY)], 3, "custom_id"),
    "method": ([request_line("a"), {**request_line("b"), "method": "GET"}], 2, "method"),
    "another endpoint": ([request_line("a"), {**request_line("b"), "url": "/v1/completions"}], 2, "url"),
    "body not an object": ([{**request_line("a"), "body": CANARY}], 1, "body"),
    "no model": ([{**request_line("a"), "body": {"messages": []}}], 1, "body.model"),
    "unknown model": ([request_line("a", model=CANARY)], 1, "body.model"),
    "two models": ([request_line("a"), request_line("b", model="sql")], 2, "body.model"),
    "stream": ([request_line("a"), request_line("b", stream=True)], 2, "body.stream"),
    # not a boolean: the endpoint would refuse each such line later; the file is refused now, as with `true`
    "stream not a boolean": ([request_line("a", stream=False), request_line("b", stream="true")], 2, "body.stream"),
    "stream a number": ([request_line("a", stream=1)], 1, "body.stream"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_each_bad_input_file_is_refused_at_create_naming_line_and_field(gateway: Server, s3: Any, case: str) -> None:
    api = client(gateway)
    lines, line, field = REFUSALS[case]
    source = upload(api, lines)
    before = keys_under(s3, f"{ROOT}batches/")
    with pytest.raises(openai.BadRequestError) as caught:
        api.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == field and error["type"] == "invalid_request_error"
    assert f"line {line}: {field}:" in error["message"]
    assert CANARY not in caught.value.response.text  # never the value (zero data retention)
    assert keys_under(s3, f"{ROOT}batches/") == before  # no batch.json for a refused batch


def test_whole_file_limits_and_batch_fields_are_refused(gateway: Server) -> None:
    api = client(gateway)
    empty = api.files.create(file=("empty.jsonl", io.BytesIO(b"\n")), purpose="batch")
    too_many = api.files.create(
        file=("many.jsonl", io.BytesIO(jsonl([request_line(str(n)) for n in range(50_001)]))), purpose="batch"
    )
    good = upload(api, [request_line("a"), request_line("b", model=MODEL)])
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input_file_id": empty.id}, "input_file_id"),
        ({"input_file_id": too_many.id}, "input_file_id"),
        ({"input_file_id": "file-doesnotexist"}, "input_file_id"),
        ({"input_file_id": good.id, "endpoint": "/v1/embeddings"}, "endpoint"),
        ({"input_file_id": good.id, "completion_window": "48h"}, "completion_window"),
        ({"input_file_id": good.id, "metadata": {f"k{n}": "v" for n in range(17)}}, "metadata"),
        ({"input_file_id": good.id, "metadata": {"k" * 65: "v"}}, "metadata"),
        ({"input_file_id": good.id, "metadata": {"k": "v" * 513}}, "metadata"),
        (
            {"input_file_id": good.id, "output_expires_after": {"anchor": "created_at", "seconds": 10}},
            "output_expires_after.seconds",
        ),
    ]
    for fields, param in cases:
        arguments = {"endpoint": "/v1/chat/completions", "completion_window": "24h", **fields}
        with pytest.raises(openai.APIStatusError) as caught:
            api.batches.create(**arguments)
        assert caught.value.status_code in (400, 404), (param, caught.value.response.text)
        assert caught.value.body["param"] == param, caught.value.response.text  # type: ignore[index]
    # the largest metadata OpenAI takes is taken
    full = {f"{n:02d}" + "k" * 62: "v" * 512 for n in range(16)}
    batch = api.batches.create(
        input_file_id=good.id, endpoint="/v1/chat/completions", completion_window="24h", metadata=full
    )
    assert batch.metadata == full


def test_large_uploads_at_once_are_turned_away_not_held_in_memory(gateway: Server) -> None:
    """Whole files in memory are bounded (api.FILE_BYTES_IN_MEMORY, under the gateway pod's 512 Mi): while a 150 MB
    upload streams in, a second one of that size gets 429 files_busy with Retry-After at once; a small file still
    goes through; once the first upload ends, a large one is taken again. (The field report: four parallel 195 MB
    uploads took the gateway from 85 MB to 828 MB of RSS.)"""
    import socket

    size = 150 * 1024 * 1024
    boundary = "byoc-test-boundary"
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEYS['ci']}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {size}\r\n\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
    ).encode()
    first = socket.create_connection(("127.0.0.1", gateway.port))
    try:
        first.sendall(head + b"x" * 1024 * 1024)  # the upload has begun and holds its share of the budget
        time.sleep(0.5)
        second = requests.post(
            gateway.url + "/v1/files",
            headers={
                "Authorization": f"Bearer {KEYS['ci']}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
            data=iter([head[head.index(b"--") :], b"x" * 1024]),  # a streamed body: its length is not sent
            timeout=30,
        )
        assert second.status_code == 429, second.text
        assert second.json()["error"]["code"] == "files_busy"
        assert int(second.headers["Retry-After"]) > 0
        small = upload(client(gateway), [request_line("small-1")])
        assert small.bytes > 0
    finally:
        first.close()
    deadline = time.monotonic() + 10
    while True:  # the gateway sees the first client leave and frees its share
        again = requests.post(
            gateway.url + "/v1/files",
            headers={"Authorization": f"Bearer {KEYS['ci']}"},
            files={"file": ("again.jsonl", jsonl([request_line("again-1")])), "purpose": (None, "batch")},
            timeout=30,
        )
        if again.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert again.status_code == 200, again.text


def test_nothing_of_a_batch_reaches_the_gateway_log(gateway: Server) -> None:
    api = client(gateway)
    source = upload(api, [request_line(CANARY)], name=f"{CANARY}.jsonl")
    api.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    api.files.content(source.id)
    with pytest.raises(openai.BadRequestError):
        bad = upload(api, [request_line(CANARY), request_line(CANARY)], name=f"{CANARY}.jsonl")
        api.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h")
    time.sleep(0.2)  # the access log is written in batches every 50 ms
    text = gateway.log.read_text()
    assert "key=ci route=POST:/v1/files status=200" in text
    assert "key=ci route=POST:/v1/batches status=400" in text
    assert CANARY not in text
    assert CANARY not in gateway.metrics()


def test_a_filename_past_the_header_line_limit_is_a_400_naming_the_file(gateway: Server) -> None:
    """aiohttp refuses a multipart header line over 8,190 bytes: the client's request is at fault (it was a 500)."""
    api = client(gateway)
    with pytest.raises(openai.BadRequestError) as caught:
        api.files.create(file=("x" * 100_000 + ".jsonl", b"{}\n"), purpose="batch")
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "file"


def test_a_wrong_method_is_405_naming_the_methods_a_path_takes(gateway: Server) -> None:
    answer = http("PUT", gateway.url + "/v1/files", b"{}", {"Authorization": f"Bearer {KEYS['ci']}"})
    assert answer.status == 405
    assert answer.headers["allow"] == "POST, GET, HEAD"
    assert answer.json()["error"]["code"] == "method_not_allowed"
    answer = http("PATCH", gateway.url + "/v1/files/file-abc", b"{}", {"Authorization": f"Bearer {KEYS['ci']}"})
    # the header and the message name the same methods (HEAD: aiohttp answers it wherever GET is routed)
    assert (answer.status, answer.headers["allow"]) == (405, "GET, HEAD, DELETE")
    assert "accepts GET, HEAD, DELETE only" in answer.json()["error"]["message"]


def test_without_batch_store_the_routes_are_unknown(runtime_dir: Path, standin: StandInEngine, keys_file: Path) -> None:
    server = start_gateway(runtime_dir, [standin.url], keys=keys_file)
    try:
        for method, path in (("GET", "/v1/files"), ("POST", "/v1/batches"), ("GET", "/v1/batches/batch_x")):
            answer = http(method, server.url + path, b"{}", {"Authorization": f"Bearer {KEYS['ci']}"})
            assert answer.status == 404, (path, answer.body)
            assert answer.json()["error"]["message"].startswith("no such route")
    finally:
        server.stop()


def test_a_bucket_that_is_gone_answers_clearly_and_chat_goes_on(
    runtime_dir: Path, standin: StandInEngine, keys_file: Path, moto: str, s3: Any, kms_key: str
) -> None:
    bucket = "byoc-gone"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    server = batch_gateway(runtime_dir, standin, keys_file, moto, f"s3://{bucket}/batch/", "--batch-kms-key", kms_key)
    try:
        api = client(server)
        source = upload(api, [request_line("a")])
        for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=bucket)
        for call in (
            lambda: upload(api, [request_line("a")]),
            lambda: api.files.retrieve(source.id),
            api.batches.list,
        ):
            with pytest.raises(openai.InternalServerError) as caught:
                call()
            assert caught.value.status_code == 500
            assert "bucket does not exist" in caught.value.body["message"]  # type: ignore[index]
        answer = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert answer.choices[0].message.content
    finally:
        server.stop()


def test_access_denied_answers_500_and_leaves_nothing_half_written(
    runtime_dir: Path, standin: StandInEngine, keys_file: Path, moto: str, s3: Any, kms_key: str
) -> None:
    # S3 takes the content, then refuses the object.json that would list it (an IAM policy without that prefix)
    proxy = DenyingProxy(moto, deny="/object.json")
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{proxy.server_address[1]}"
    server = batch_gateway(
        runtime_dir, standin, keys_file, endpoint, f"s3://{BUCKET}/denied/", "--batch-kms-key", kms_key
    )
    try:
        api = client(server)
        with pytest.raises(openai.InternalServerError) as caught:
            upload(api, [request_line("a")])
        assert caught.value.status_code == 500
        assert "access denied" in caught.value.body["message"]  # type: ignore[index]
        assert proxy.denied  # the refusal came from the store
        assert keys_under(s3, "denied/") == []  # the content written before the refusal is deleted again
        answer = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert answer.choices[0].message.content
    finally:
        server.stop()
        proxy.shutdown()
        proxy.server_close()


def test_an_unreachable_store_answers_503_and_chat_goes_on(
    runtime_dir: Path, standin: StandInEngine, keys_file: Path, kms_key: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    server = batch_gateway(runtime_dir, standin, keys_file, dead, f"s3://{BUCKET}/batch/", "--batch-kms-key", kms_key)
    try:
        api = client(server)
        with pytest.raises(openai.InternalServerError) as caught:
            upload(api, [request_line("a")])
        assert caught.value.status_code == 503
        assert caught.value.response.headers.get("retry-after")
        answer = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert answer.choices[0].message.content
    finally:
        server.stop()


def test_a_store_that_hangs_answers_503_within_seconds(
    runtime_dir: Path, standin: StandInEngine, keys_file: Path, kms_key: str
) -> None:
    """A store that takes the connection and never answers (the field report: a frozen endpoint held a list for
    90 s and the client gave up, 499): each S3 call waits at most layout.STORE_TIMEOUT_S per attempt, then 503."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # accepts (the kernel does) and never reads or answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        server = batch_gateway(
            runtime_dir, standin, keys_file, url, f"s3://{BUCKET}/batch/", "--batch-kms-key", kms_key
        )
        try:
            started = time.monotonic()
            answer = http("GET", server.url + "/v1/batches", headers={"Authorization": f"Bearer {KEYS['ci']}"})
            waited = time.monotonic() - started
            assert answer.status == 503, answer.body
            assert waited < 28.0, waited  # two attempts of STORE_TIMEOUT_S (10 s), and some slack on a busy machine
            assert answer.headers.get("retry-after")
        finally:
            server.stop()
    finally:
        silent.close()


def test_batch_flags_name_the_flag(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-local-0123456789abcdef\n")
    base = ["serve", "gateway", "--upstream", "http://127.0.0.1:9", "--api-keys", str(keys)]
    cases = {
        "--batch-kms-key": ["--batch-kms-key", "arn:aws:kms:eu-west-2:1:key/x"],
        "--batch-store": ["--batch-store", "ftp://bucket/batch/"],
        "--batch-retention-hours": ["--batch-store", "s3://bucket/batch/", "--batch-retention-hours", "0"],
    }
    for flag, args in cases.items():
        result = byoc(*base, *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"error: {flag}"), result.stderr
        assert "Traceback" not in result.stderr


def test_an_input_file_is_not_deleted_under_a_running_batch(gateway: Server, s3: Any, kms_key: str) -> None:
    api = client(gateway)
    source = upload(api, [request_line("a"), request_line("b")])
    batch = api.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError) as caught:
        api.files.delete(source.id)
    body: Any = caught.value.body
    assert body["param"] == "file_id" and body["code"] == "file_in_use"
    assert batch.id in body["message"] and "cancel the batch first" in body["message"]
    assert api.files.retrieve(source.id).id == source.id  # still there, content too
    assert api.files.content(source.id).content == jsonl([request_line("a"), request_line("b")])
    api.batches.cancel(batch.id)
    with pytest.raises(openai.BadRequestError):  # cancelling is not ended yet: the worker may still read it
        api.files.delete(source.id)
    state = {"status": "cancelled", "cancelled_at": int(time.time()), "request_counts": {"total": 2}}
    put_json(s3, f"{ROOT}batches/{batch.id}/state.json", state, kms_key)
    assert api.files.delete(source.id).deleted


def test_a_batch_past_its_window_with_no_worker_reads_expired(gateway: Server, s3: Any, kms_key: str) -> None:
    api = client(gateway)
    source = upload(api, [request_line("a")])
    batch = api.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    key = f"{ROOT}batches/{batch.id}/batch.json"
    record = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    past = int(time.time()) - 5
    put_json(s3, key, {**record, "expires_at": past}, kms_key)  # the 24 h gone by, no worker having run it
    seen = api.batches.retrieve(batch.id)
    assert (seen.status, seen.expired_at, seen.expires_at) == ("expired", past, past)
    assert next(b for b in api.batches.list() if b.id == batch.id).status == "expired"
    with pytest.raises(openai.BadRequestError):  # ended: nothing to cancel
        api.batches.cancel(batch.id)
    # a worker that ran it to the end late writes the real end state, which shows
    done = {"status": "completed", "completed_at": past + 1, "request_counts": {"total": 1, "completed": 1}}
    put_json(s3, f"{ROOT}batches/{batch.id}/state.json", done, kms_key)
    assert api.batches.retrieve(batch.id).status == "completed"
    api.files.delete(source.id)  # allowed: the batch has ended
