"""The Batch API and the batch worker over a Cloud Storage root (gs://), against gcp-storage-emulator on 127.0.0.1:
the official `openai` client's files/batches calls on the real gateway, the worker (a subprocess) running the batch
to completed, kill -9 mid-batch and a restart leaving exactly one result per custom_id, two workers never running one
batch at once, a lost conditional write being a Conflict, and DELETE /v1/files/{id} taking the objects out of the
bucket (listed with google-cloud-storage itself).

google-cloud-storage reaches the emulator through STORAGE_EMULATOR_HOST with anonymous credentials
(google/cloud/storage/client.py: `_get_storage_emulator_override`), in this process, the gateway and the worker.

What the emulator (gcp-storage-emulator 2026.7) departs from, read in its handlers/objects.py: it ignores
`ifGenerationMatch`, where Cloud Storage answers 412 Precondition Failed when the object's live generation is not the
one named, 0 meaning "no live object" (JSON API objects.insert, "ifGenerationMatch"; error reason `conditionNotMet`).
byoc's lease and result parts rest on that precondition (runtime/serve/batch/conditional.py), so the fixture wraps
the emulator's one-request upload (what google-cloud-storage sends for these small objects) with that published rule,
in the emulator's own single-threaded request loop, where the check and the write cannot interleave. It wraps the
download (objects.get, `alt=media`) the same way: `ifGenerationMatch` answers 412 unless the live generation is the
one named, and a `generation` that is not the live one is 404, as for a generation a bucket does not keep (JSON API
objects.get: `generation` selects a revision, `ifGenerationMatch` conditions the read on the current generation).
A test may have the wrapper write a new generation just before a download (`REPLACE_BEFORE_DOWNLOAD`): the replace
another writer lands between a reader's metadata read and its download, which the emulator gives no other way to
time. It also ignores
`kmsKeyName` (no CMEK: not checked here), keeps one generation per name (`versions=True` lists the live objects only:
the purge of noncurrent generations is not exercised) and sends no `x-goog-generation` header on a download.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterator
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any
from unittest import mock

import openai
import pytest

from runtime.model_build.stores import Store, open_store
from runtime.serve.batch import conditional, layout
from tests.runtime.conftest import KEYS, MODEL, Server, free_port, metric, start_gateway, wait_for
from tests.runtime.standin import StandInEngine
from tests.runtime.test_batch_worker import (
    WORKER_TOKEN,
    Worker,
    assert_exactly_one_result_each,
    chat_line,
    state_of,
)

BUCKET = "byoc-artifacts"
ROOT = f"gs://{BUCKET}/batch/"
# a Cloud KMS key name as stacks/gcp/artifacts.py gives the artifact bucket's CMEK; the emulator ignores it
KMS_KEY = "projects/byoc-test/locations/europe-west4/keyRings/byoc/cryptoKeys/batch"


# object name -> what the download wrapper writes as the object's next generation just before that object's next
# download, once (None: deletes it instead); and the names of the downloads it answered 412
REPLACE_BEFORE_DOWNLOAD: dict[str, bytes | None] = {}
DOWNLOADS_REFUSED: list[str] = []


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    """gcp-storage-emulator in this process (its own thread), in memory; STORAGE_EMULATOR_HOST points every client
    at it, the gateway's and the worker's too (they inherit this environment)."""
    from gcp_storage_emulator import server as emulator_server
    from gcp_storage_emulator.handlers import objects
    from gcp_storage_emulator.server import create_server

    # it logs each 404 at ERROR, and a 404 is the ordinary answer for an object not written yet
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
    upload, download = objects._multipart_upload, objects.download
    checked = partial(_download_if_generation_matches, download)
    # the route table holds the download handler itself (the /download/storage/v1 route); objects.get calls it by name
    routes = tuple(
        (pattern, {method: checked if handler is download else handler for method, handler in table.items()})
        for pattern, table in emulator_server.HANDLERS
    )
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    endpoint = f"http://127.0.0.1:{port}"
    with (
        mock.patch.object(objects, "_multipart_upload", partial(_upload_if_generation_matches, upload)),
        mock.patch.object(objects, "download", checked),
        mock.patch.object(emulator_server, "HANDLERS", routes),
    ):
        server.start()
        try:
            with mock.patch.dict(os.environ, {"STORAGE_EMULATOR_HOST": endpoint, "GOOGLE_CLOUD_PROJECT": "byoc-test"}):
                yield endpoint
        finally:
            server.stop()


def _upload_if_generation_matches(upload: Any, request: Any, response: Any, storage: Any) -> None:
    """Cloud Storage's `ifGenerationMatch` on objects.insert: 412 `conditionNotMet` unless the live generation is the
    one named (0: no live object), then the emulator's own upload."""
    from gcp_storage_emulator.exceptions import NotFound

    wanted = request.query.get("ifGenerationMatch")
    if wanted:
        name = request.query["name"][0] if "name" in request.query else request.data["meta"].get("name")
        try:
            live = str(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
        except NotFound:
            live = "0"
        if live != wanted[0]:
            message = "At least one of the pre-conditions you specified did not hold."
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json({"error": {"code": 412, "message": message, "errors": [{"reason": "conditionNotMet"}]}})
            return
    upload(request, response, storage)


def _download_if_generation_matches(download: Any, request: Any, response: Any, storage: Any) -> None:
    """Cloud Storage's objects.get with `alt=media`: `ifGenerationMatch` is 412 `conditionNotMet` unless the live
    generation is the one named (0: no live object); a `generation` other than the live one is 404 (the emulator
    keeps no other); then the emulator's own download. A replacement queued in REPLACE_BEFORE_DOWNLOAD lands first."""
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    bucket, name = request.params["bucket_name"], request.params["object_id"]
    if name in REPLACE_BEFORE_DOWNLOAD:
        replacement = REPLACE_BEFORE_DOWNLOAD.pop(name)
        if replacement is None:
            storage.delete_file(bucket, name)
        else:
            resource = objects._make_object_resource(
                request.base_url, bucket, name, "application/octet-stream", str(len(replacement))
            )
            storage.create_file(bucket, name, replacement, objects._checksums(replacement, resource))
    try:
        live = str(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        live = "0"
    wanted, pinned = request.query.get("ifGenerationMatch"), request.query.get("generation")
    if wanted and live != wanted[0]:
        DOWNLOADS_REFUSED.append(name)
        message = "At least one of the pre-conditions you specified did not hold."
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": message, "errors": [{"reason": "conditionNotMet"}]}})
        return
    if pinned and live != pinned[0]:
        response.status = HTTPStatus.NOT_FOUND
        response.json({"error": {"code": 404, "message": "No such object.", "errors": [{"reason": "notFound"}]}})
        return
    download(request, response, storage)


@pytest.fixture(scope="module")
def bucket(emulator: str) -> Any:
    from google.cloud import storage

    return storage.Client().create_bucket(BUCKET)


@pytest.fixture(scope="module")
def store(bucket: Any) -> Store:
    return open_store(ROOT, "--batch-store", KMS_KEY)


@pytest.fixture(scope="module")
def standin() -> Iterator[StandInEngine]:
    # each answer takes 0.2 s: a batch of 60 lines at the worker's concurrency 4 runs about 3 s, long enough to be
    # killed in after its first parts
    engine = StandInEngine(model=MODEL, delay=0.2)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gcs-batch-token") / "token"
    path.write_text(WORKER_TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
def gateway(
    runtime_dir: Path, standin: StandInEngine, keys_file: Path, token_file: Path, bucket: Any
) -> Iterator[Server]:
    server = start_gateway(
        runtime_dir,
        [standin.url],
        "--health-interval",
        "0.5",
        "--batch-store",
        ROOT,
        "--batch-kms-key",
        KMS_KEY,
        "--batch-worker-token-file",
        str(token_file),
        keys=keys_file,
    )
    yield server
    server.stop()


def names_under(bucket: Any, prefix: str) -> list[str]:
    return sorted(str(blob.name) for blob in bucket.list_blobs(prefix=prefix))


def api_for(server: Server, key: str = "ci") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEYS[key], max_retries=0, timeout=60)


def upload(api: openai.OpenAI, lines: list[dict[str, Any]]) -> Any:
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    return api.files.create(file=("requests.jsonl", io.BytesIO(body)), purpose="batch")


def _run_to_end(api: Any, batch_id: str, gateway: Any, token_file: Path, runtime_dir: Path) -> Any:
    """A worker over the gs:// root until the batch ends; the batch, which must have completed."""
    worker = Worker(runtime_dir, gateway.url, ROOT, token_file, "--batch-kms-key", KMS_KEY)
    try:
        done = wait_for(
            lambda: (b := api.batches.retrieve(batch_id)).status in layout.TERMINAL and b, 60, "the batch to end"
        )
    finally:
        worker.stop()
    assert done.status == "completed", worker.log.read_text()
    return done


def test_the_official_client_runs_a_batch_over_gs_and_delete_empties_the_bucket(
    gateway: Server, bucket: Any, token_file: Path, runtime_dir: Path
) -> None:
    api = api_for(gateway)
    lines = [chat_line(f"gcs-{i}", f"say {i}") for i in range(6)]
    source = upload(api, lines)
    assert source.status == "processed" and source.bytes > 0
    assert names_under(bucket, f"batch/files/{source.id}/") == [
        f"batch/files/{source.id}/content",
        f"batch/files/{source.id}/object.json",
    ]
    batch = api.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "validating" and batch.input_file_id == source.id
    done = _run_to_end(api, batch.id, gateway, token_file, runtime_dir)
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (6, 6, 0)
    assert done.output_file_id and done.error_file_id is None

    results = [json.loads(line) for line in api.files.content(done.output_file_id).text.splitlines()]
    assert sorted(r["custom_id"] for r in results) == sorted(line["custom_id"] for line in lines)
    for result in results:
        assert set(result) == {"id", "custom_id", "response", "error"} and result["error"] is None
        assert result["id"].startswith("batch_req_")
        assert result["response"]["status_code"] == 200 and result["response"]["request_id"]
        assert result["response"]["body"]["object"] == "chat.completion"
    assert names_under(bucket, f"batch/batches/{batch.id}/parts/") == []  # merged into the output, then removed
    with pytest.raises(openai.NotFoundError):  # another key sees nothing of it
        api_for(gateway, "slow").files.content(done.output_file_id)
    # the worker's first sweep completed the owner index; lists read it (objects.list from startOffset), and the
    # worker indexed its output file with the batch's owner
    assert names_under(bucket, "batch/index/_complete") == ["batch/index/_complete"]
    assert sorted(f.id for f in api.files.list(limit=1)) == sorted([source.id, done.output_file_id])
    assert [f.id for f in api.files.list(purpose="batch_output")] == [done.output_file_id]
    assert [b.id for b in api.batches.list(limit=1)] == [batch.id]
    assert list(api_for(gateway, "slow").files.list()) == []

    for file_id in (source.id, done.output_file_id):
        deleted = api.files.delete(file_id)
        assert (deleted.id, deleted.deleted) == (file_id, True)
        assert names_under(bucket, f"batch/files/{file_id}/") == []  # gone from the bucket at once
        with pytest.raises(openai.NotFoundError):
            api.files.content(file_id)
    assert names_under(bucket, "batch/index/ci/files/") == []  # and from the index
    assert list(api.files.list()) == []


def test_kill_9_mid_batch_and_a_restart_leave_exactly_one_result_per_custom_id(
    gateway: Server, bucket: Any, store: Store, token_file: Path, runtime_dir: Path
) -> None:
    """The worker killed once some parts are committed and lines are in flight, then restarted: the batch completes,
    each custom_id has exactly one result and none is missing."""
    api = api_for(gateway)
    lines = [chat_line(f"kill-{i:03d}", f"say {i}", max_tokens=3) for i in range(240)]
    batch = api.batches.create(
        input_file_id=upload(api, lines).id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    parts = layout.batch_parts(batch.id)
    worker = Worker(runtime_dir, gateway.url, ROOT, token_file, "--batch-kms-key", KMS_KEY)
    try:
        wait_for(lambda: len(store.list_objects(parts)) >= 2, 30, "two committed parts")
        assert state_of(store, batch.id).get("status") == "in_progress", "the kill must land mid-batch"
    finally:
        worker.kill()
    committed = sum(len(store.read_bytes(part.key).splitlines()) for part in store.list_objects(parts))
    assert 0 < committed < len(lines)  # killed with some results committed and some lines still to send

    time.sleep(2.5)  # the dead worker's lease (--lease-seconds 2) runs out: the next worker takes the batch over
    done = _run_to_end(api, batch.id, gateway, token_file, runtime_dir)
    assert_exactly_one_result_each(store, state_of(store, batch.id), [line["custom_id"] for line in lines])
    results = [json.loads(line) for line in api.files.content(done.output_file_id or "").text.splitlines()]
    assert all(r["response"]["status_code"] == 200 for r in results) and len(results) == len(lines)
    assert names_under(bucket, f"batch/batches/{batch.id}/parts/") == []
    assert names_under(bucket, f"batch/batches/{batch.id}/lease") == []


def test_a_lost_create_or_replace_race_is_a_conflict(store: Store) -> None:
    """The 412 of a precondition that did not hold is byoc's Conflict (the lease and the parts rest on it)."""
    key = "batches/race/lease.json"
    first = conditional.create(store, key, b"first")
    with pytest.raises(conditional.Conflict):
        conditional.create(store, key, b"second")  # ifGenerationMatch=0 on a live object
    assert conditional.read_versioned(store, key) == (b"first", first)
    second = conditional.replace(store, key, b"second", first)
    with pytest.raises(conditional.Conflict):
        conditional.replace(store, key, b"third", first)  # the generation moved on
    assert conditional.read_versioned(store, key) == (b"second", second)
    store.purge([key])


def test_an_object_replaced_between_its_metadata_read_and_its_download_is_read_again(store: Store) -> None:
    """conditional.read_versioned on gs:// reads the metadata, then the bytes pinned to that generation: a new
    generation landing in between makes the download 412, and the object is read again, so the bytes and the
    version it answers are the new generation's (a replace conditioned on that version succeeds); an object deleted
    in between reads as absent."""
    key = "batches/reread/lease.json"
    name = f"batch/{key}"
    conditional.create(store, key, b"first")
    refused = len(DOWNLOADS_REFUSED)
    REPLACE_BEFORE_DOWNLOAD[name] = b"second"
    found = conditional.read_versioned(store, key)
    assert name not in REPLACE_BEFORE_DOWNLOAD, "the replace landed between the two reads"
    assert DOWNLOADS_REFUSED[refused:] == [name], "the download pinned to the first generation was refused"
    assert found is not None and found[0] == b"second"
    third = conditional.replace(store, key, b"third", found[1])  # the version read is the live generation
    assert conditional.read_versioned(store, key) == (b"third", third)

    REPLACE_BEFORE_DOWNLOAD[name] = None  # deleted between the two reads
    assert conditional.read_versioned(store, key) is None
    assert name not in REPLACE_BEFORE_DOWNLOAD


def test_a_lease_taken_between_the_metadata_read_and_the_download_is_left_to_its_holder(
    gateway: Server, store: Store, token_file: Path, runtime_dir: Path
) -> None:
    """A batch whose lease had run out (its worker crashed): the worker reads the lease's metadata (free), another
    worker takes the lease before the download (a new generation), the pinned download is 412, the worker reads the
    lease again and counts it as the other's: it starts the batch only once that lease has run out, and the batch
    ends with one result per custom_id, every line sent once."""
    api = api_for(gateway)
    lines = [chat_line(f"race-{i:02d}", f"say {i}", max_tokens=3) for i in range(8)]
    batch = api.batches.create(
        input_file_id=upload(api, lines).id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    lease = layout.batch_lease(batch.id)
    store.write_bytes(lease, json.dumps({"holder": "crashed-worker", "expires_at": time.time() - 60}).encode())
    other_until = time.time() + 4
    taken = {"holder": "other-worker", "expires_at": other_until}
    REPLACE_BEFORE_DOWNLOAD[f"batch/{lease}"] = json.dumps(taken).encode()
    refused = len(DOWNLOADS_REFUSED)
    before = metric(gateway.metrics(), "byoc_gateway_batch_requests_total", decision="admitted") or 0.0
    worker = Worker(runtime_dir, gateway.url, ROOT, token_file, "--batch-kms-key", KMS_KEY)
    try:
        done = wait_for(
            lambda: (b := api.batches.retrieve(batch.id)).status in layout.TERMINAL and b, 60, "the batch to end"
        )
    finally:
        worker.stop()
    assert f"batch/{lease}" not in REPLACE_BEFORE_DOWNLOAD and f"batch/{lease}" in DOWNLOADS_REFUSED[refused:]
    assert done.status == "completed", worker.log.read_text()
    assert done.in_progress_at is not None and done.in_progress_at >= int(other_until)  # not before the other's ran out
    admitted = (metric(gateway.metrics(), "byoc_gateway_batch_requests_total", decision="admitted") or 0.0) - before
    assert admitted == len(lines), "every line sent once"
    assert_exactly_one_result_each(store, state_of(store, batch.id), [line["custom_id"] for line in lines])


def test_two_workers_over_gs_never_run_one_batch_at_once(
    gateway: Server, store: Store, token_file: Path, runtime_dir: Path
) -> None:
    """Two workers over one gs:// root and two batches: the lease gives each batch to one worker, no line is sent
    twice, each custom_id has exactly one result."""
    api = api_for(gateway)
    batches = {}
    for prefix in ("first", "second"):
        lines = [chat_line(f"{prefix}-{i:02d}", f"say {i}", max_tokens=3) for i in range(20)]
        created = api.batches.create(
            input_file_id=upload(api, lines).id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batches[created.id] = prefix
    before = metric(gateway.metrics(), "byoc_gateway_batch_requests_total", decision="admitted") or 0.0
    workers = [Worker(runtime_dir, gateway.url, ROOT, token_file, "--lease-seconds", "5") for _ in range(2)]
    try:
        ended = {
            batch_id: wait_for(
                lambda batch_id=batch_id: (b := api.batches.retrieve(batch_id)).status in layout.TERMINAL and b,
                60,
                "the batch to end",
            )
            for batch_id in batches
        }
    finally:
        for worker in workers:
            worker.stop()
    admitted = (metric(gateway.metrics(), "byoc_gateway_batch_requests_total", decision="admitted") or 0.0) - before
    assert admitted == 40, "no line was sent twice: no batch ran in two workers at once"
    for batch_id, prefix in batches.items():
        assert ended[batch_id].status == "completed"
        assert_exactly_one_result_each(store, state_of(store, batch_id), [f"{prefix}-{i:02d}" for i in range(20)])
        runners = [w for w in workers if f"batch {batch_id}: in_progress" in w.log.read_text()]
        assert len(runners) == 1, "one worker ran the batch"
