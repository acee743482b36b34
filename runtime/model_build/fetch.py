"""Parallel ranged reads: how a serving pod pulls an artifact's files out of the bucket onto its node.

A wake from zero waits for the weights (tens of GB) before the engine can load, and one GET stream per file reaches
a fraction of what an instance's network and the object store can carry. So every file is cut into byte ranges of
`part_bytes` and up to `concurrency` ranges are in flight at once, over all the files together:

- S3: s3transfer's TransferManager (the library under boto3's download_file), one manager for all the files, so its
  thread pool schedules ranged GetObject calls across files; each range after the first carries IfMatch with the
  object's ETag, so an object replaced mid-fetch fails instead of mixing two versions (s3transfer 0.17,
  download.py `provide_object_etag`).
- Cloud Storage: google-cloud-storage's `transfer_manager.download_chunks_concurrently` per file (ranged reads of
  `chunk_size` by `max_workers` threads), files in turn.
- file://: whole-file copies in a thread pool (a mounted directory has no ranges to gain from).

Sizes: AWS, "Best practices design patterns: optimizing Amazon S3 performance", byte-range fetches: "typical sizes
for byte-range requests are 8 MB or 16 MB"; 16 requests in flight keep one instance's link busy without S3
throttling a prefix (3,500 GET per second per prefix, same page). Integrity is not this module's job: the caller
checks each file's sha256 against the artifact's manifest (runtime/model_build/artifacts.py).
"""

from __future__ import annotations

import functools
import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.model_build.stores import FileStore, GcsStore, ObjectMissing, S3Store, Store

MIB = 1024 * 1024
PART_BYTES = 16 * MIB
CONCURRENCY = 16


@dataclass(frozen=True)
class FetchTuning:
    """How a fetch reads: ranges of `part_bytes`, at most `concurrency` in flight."""

    concurrency: int = CONCURRENCY
    part_bytes: int = PART_BYTES


class _Counter:
    """Bytes arrived, from many threads at once, handed on to one progress callback."""

    def __init__(self, progress: Callable[[int], None]) -> None:
        self.progress = progress
        self.lock = threading.Lock()

    def __call__(self, count: int) -> None:
        with self.lock:
            self.progress(count)


def parallel_download(
    store: Store,
    items: Sequence[tuple[str, Path]],
    progress: Callable[[int], None],
    tuning: FetchTuning | None = None,
) -> None:
    """Download every (key, path) of `items` from `store` with parallel ranged reads. Raises ObjectMissing for a key
    the store lacks, ByocError/ByocFailure (the store's own messages) for anything else; a path is either whole or
    absent (each library writes beside it and renames)."""
    tuning = tuning or FetchTuning()
    counter = _Counter(progress)
    for _, path in items:
        path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(store, S3Store):
        _s3(store, items, counter, tuning)
    elif isinstance(store, GcsStore):
        _gcs(store, items, counter, tuning)
    else:
        _threads(store, items, counter, tuning)


def _s3(store: S3Store, items: Sequence[tuple[str, Path]], counter: _Counter, tuning: FetchTuning) -> None:
    from s3transfer.manager import TransferConfig, TransferManager
    from s3transfer.subscribers import BaseSubscriber

    class Arrived(BaseSubscriber):
        def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
            counter(bytes_transferred)

    config = TransferConfig(
        multipart_threshold=tuning.part_bytes,
        multipart_chunksize=tuning.part_bytes,
        max_request_concurrency=tuning.concurrency,
    )

    def run() -> None:
        with TransferManager(store.client, config) as manager:
            futures = [
                (key, manager.download(store.bucket, store.key(key), str(path), subscribers=[Arrived()]))
                for key, path in items
            ]
            for key, future in futures:
                try:
                    future.result()
                except Exception as exc:
                    if _s3_missing(exc):
                        raise ObjectMissing(key) from None
                    raise

    store.call(f"downloading from {store.uri()}", run)


def _s3_missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
    return code in ("404", "NoSuchKey", "NotFound")


def _gcs(store: GcsStore, items: Sequence[tuple[str, Path]], counter: _Counter, tuning: FetchTuning) -> None:
    import importlib

    transfer_manager: Any = importlib.import_module("google.cloud.storage.transfer_manager")
    for key, path in items:
        blob = store.bucket.blob(store.key(key))
        store.call(key, blob.reload)  # the size (and generation) the ranges are cut from

        def run(blob: Any = blob, path: Path = path) -> None:
            transfer_manager.download_chunks_concurrently(
                blob,
                str(path),
                chunk_size=tuning.part_bytes,
                max_workers=tuning.concurrency,
                # threads: the default (processes) would re-import the client in every worker
                worker_type=transfer_manager.THREAD,
            )

        store.call(key, run)
        counter(path.stat().st_size)


def _threads(store: Store, items: Sequence[tuple[str, Path]], counter: _Counter, tuning: FetchTuning) -> None:
    with ThreadPoolExecutor(max_workers=tuning.concurrency) as pool:
        for future in [pool.submit(store.download, key, path, counter) for key, path in items]:
            future.result()


def sequential_copy(store: Store, items: Sequence[tuple[str, Path]], progress: Callable[[int], None]) -> None:
    """The plain copy a fetch is measured against: one file after another, each one GET streamed to disk (S3:
    GetObject without a Range; elsewhere the store's own single download)."""
    for key, path in items:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(store, S3Store):
            body = store.call(key, functools.partial(store.client.get_object, Bucket=store.bucket, Key=store.key(key)))
            with path.open("wb") as out:
                shutil.copyfileobj(body["Body"], out, 1 * MIB)
            progress(path.stat().st_size)
        elif isinstance(store, FileStore | GcsStore):
            store.download(key, path, progress)
