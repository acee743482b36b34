"""Conditional writes on the batch root: create an object only if it is absent, replace it only if it is still the
version read. The batch worker's lease and its result parts rest on them (runtime/serve/batch/worker.py).

- S3: `PutObject` with `If-None-Match: *` and `If-Match: <ETag>` (S3 conditional writes, GA 2024-08 and 2024-11;
  a lost race answers 412 PreconditionFailed, or 409 ConditionalRequestConflict while another such write is in
  flight). moto 5.2 honours both headers (moto/s3/responses.py `_key_response_put`).
- Cloud Storage: `ifGenerationMatch=0` (create only) and `ifGenerationMatch=<generation>` (412 when it moved on).
  Tested against gcp-storage-emulator (tests/runtime/test_batch_gcs.py), which ignores `ifGenerationMatch`: the
  test wraps its upload (objects.insert) and its download (objects.get) with the JSON API's published rule, so the
  412 there is the contract's.
- file://: `os.link` of a written temporary file (fails when the name exists) for a create, and `fcntl.flock` on the
  object itself, re-checked against the path's inode after locking, for a replace.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from byoc.errors import ByocFailure
from runtime.model_build.stores import FileStore, GcsStore, ObjectMissing, S3Store, Store, _s3_error


class Conflict(Exception):
    """The condition did not hold: the object exists (create), or another writer replaced it (replace)."""


def read_versioned(store: Store, key: str) -> tuple[bytes, str] | None:
    """The object's bytes and version (an ETag, a generation, a digest), or None when it does not exist."""
    if isinstance(store, S3Store):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = store.client.get_object(Bucket=store.bucket, Key=store._key(key))
            return response["Body"].read(), str(response["ETag"])
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _s3_error(exc, store.field, f"reading {store.uri(key)}") from None
        except BotoCoreError as exc:
            raise _s3_error(exc, store.field, f"reading {store.uri(key)}") from None
    if isinstance(store, GcsStore):
        return _gcs_read(store, key)
    try:
        data = store.read_bytes(key)
    except ObjectMissing:
        return None
    return data, hashlib.sha256(data).hexdigest()


def _gcs_read(store: GcsStore, key: str, attempts: int = 3) -> tuple[bytes, str] | None:
    """The object's bytes and generation: its metadata, then its bytes pinned to that generation
    (ifGenerationMatch). The generation comes from the metadata read, not blob.generation after the download:
    google-cloud-storage resets that from the download's x-goog-generation header (blob.py
    `_extract_headers_from_download`), which gcp-storage-emulator does not send; the precondition makes the bytes
    exactly this generation's either way. An object replaced between the two reads answers 412 (Cloud Storage JSON
    API reference, objects.get: with `ifGenerationMatch` the read succeeds only while the object's current generation
    is the one named), and one deleted answers 412 or 404 (the pinned generation is gone where the bucket keeps no
    noncurrent ones): read again, the next generation or None; after `attempts` such races, Conflict.
    Tested in tests/runtime/test_batch_gcs.py with a replace landing between the two reads."""
    for _ in range(attempts):
        blob = store._call(f"reading {store.uri(key)}", lambda: store.bucket.get_blob(store._key(key)))
        if blob is None:
            return None
        generation = int(blob.generation)
        try:
            data = blob.download_as_bytes(if_generation_match=generation)
        except Exception as exc:  # google.api_core raises many types; 412 is the race, the rest as the store says
            if getattr(exc, "code", None) in (404, 412):
                continue
            store._call(f"reading {store.uri(key)}", _raising(exc))  # said as every store error is
            raise
        return bytes(data), str(generation)
    raise Conflict(f"{store.uri(key)} kept changing while it was read")


def _raising(exc: Exception) -> Any:
    def again() -> None:
        raise exc

    return again


def create(store: Store, key: str, data: bytes) -> str:
    """Write `data` at `key` only if nothing is there; its version. Raises Conflict if something is."""
    if isinstance(store, S3Store):
        return _s3_put(store, key, data, {"IfNoneMatch": "*"})
    if isinstance(store, GcsStore):
        return _gcs_put(store, key, data, 0)
    assert isinstance(store, FileStore)
    target = store.path / key
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _written(target, data)
    try:
        os.link(temporary, target)  # atomic, and fails if the name exists
    except FileExistsError:
        raise Conflict(key) from None
    finally:
        Path(temporary).unlink(missing_ok=True)
    return hashlib.sha256(data).hexdigest()


def replace(store: Store, key: str, data: bytes, version: str) -> str:
    """Write `data` at `key` only if the object there is still `version`; the new version. Raises Conflict."""
    if isinstance(store, S3Store):
        return _s3_put(store, key, data, {"IfMatch": version})
    if isinstance(store, GcsStore):
        return _gcs_put(store, key, data, int(version))
    assert isinstance(store, FileStore)
    target = store.path / key
    while True:
        try:
            handle = os.open(target, os.O_RDONLY)
        except FileNotFoundError:
            raise Conflict(key) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                current = os.stat(target)
            except FileNotFoundError:
                raise Conflict(key) from None
            if current.st_ino != os.fstat(handle).st_ino:
                continue  # replaced while we waited for the lock: lock the new one
            with open(handle, "rb", closefd=False) as existing:
                if hashlib.sha256(existing.read()).hexdigest() != version:
                    raise Conflict(key)
            os.replace(_written(target, data), target)
            return hashlib.sha256(data).hexdigest()
        finally:
            os.close(handle)


def _written(target: Path, data: bytes) -> str:
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    return temporary


def _s3_put(store: S3Store, key: str, data: bytes, condition: dict[str, str]) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    extra: dict[str, Any] = dict(condition)
    if store.kms_key:
        extra.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=store.kms_key)
    try:
        response = store.client.put_object(Bucket=store.bucket, Key=store._key(key), Body=data, **extra)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code"))
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"):
            raise Conflict(key) from None
        raise _s3_error(exc, store.field, f"writing {store.uri(key)}") from None
    except BotoCoreError as exc:
        raise _s3_error(exc, store.field, f"writing {store.uri(key)}") from None
    return str(response["ETag"])


def _gcs_put(store: GcsStore, key: str, data: bytes, generation: int) -> str:
    blob = store.bucket.blob(store._key(key), kms_key_name=store.kms_key)
    try:
        blob.upload_from_string(data, if_generation_match=generation)
    except Exception as exc:  # google.api_core.exceptions.PreconditionFailed (412) is the lost race
        if getattr(exc, "code", None) == 412:
            raise Conflict(key) from None
        raise ByocFailure(
            store.field, f"writing {store.uri(key)}: {type(exc).__name__}", "check the bucket and its permissions"
        ) from None
    return str(blob.generation)
