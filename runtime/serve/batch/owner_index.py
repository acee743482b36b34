"""The owner index: each key's files and batches, listed newest first, so that `GET /v1/files` and `GET /v1/batches`
read one page of the caller's index and the records of that page, not every record in the bucket.

Keys (runtime/serve/batch/layout.py):

    index/{owner}/files/{rank}.{file_id}.{purpose}.{expires_at}/e
    index/{owner}/batches/{rank}.{batch_id}.{input_file_id}/e
    index/_complete

`rank` is layout.INDEX_RANK_TOP less the creation time in nanoseconds (`created_ns`, the gateway's; `created_at` x
1e9 for the worker's output and error files), 20 digits, so that names sort newest first, the order OpenAI lists in
(openai-python 3.63 src/openai/types/file_list_params.py: `order` by `created_at`, `desc` by default, `after` an
object id, `limit` 1..10,000, `purpose`; batch_list_params.py: `after`, `limit` 1..100, default 20). S3's
ListObjectsV2 returns keys in UTF-8 binary order from `StartAfter`, up to `MaxKeys` (S3 API reference,
ListObjectsV2); Cloud Storage's objects.list in name order from `startOffset` (inclusive), up to `maxResults` (JSON API
reference, objects.list). So a page is one list request from the entry of the `after` object, plus one GET per
object it returns. The purpose and the expiry are in the name: a list skips other purposes and expired files without
reading them. An entry is an empty object (SSE-KMS / CMEK as every object): its name holds ids and times, no data.

Order of writes, and what a crash leaves:
- create: the record (object.json, batch.json) first, then its entry. A crash in between leaves a record no list
  shows: the caller got no id (no answer came back); the worker's sweep writes the missing entry (below), and deletes
  the record at its expiry. So no entry ever names a record that was never written.
- delete (DELETE /v1/files/{id}, the sweep's expiry): the entry first, then the record. A crash in between leaves a
  record no list shows, which a second DELETE (the record is still there) or the expiry removes.
- An entry whose record is gone anyway (a DELETE racing the sweep's backfill): a list reads the record, finds none
  and skips it; the next sweep deletes the entry (it lists the index before the records, so an entry it sees was
  written after its record, and a record missing from the later listing is gone).

Migration: a bucket written before the index has records without entries. Until `index/_complete` exists, the
gateway lists as it did before (every record of the folder, then the caller's), and the worker's sweep writes every
missing entry, then `index/_complete`; from then on every list reads the index. A worker starts with a sweep, so that
takes one sweep after the first worker of this version starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.model_build.stores import FileStore, GcsStore, S3Store, Store
from runtime.serve.batch import layout
from runtime.serve.keys import KEY_NAME

# ids as layout.new_file_id, new_batch_id and the worker's derived ids make them: letters, digits, '-' and '_'
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
# S3 ListObjectsV2 returns at most 1,000 keys a request (S3 API reference, ListObjectsV2 `MaxKeys`)
LIST_CHUNK = 1000


@dataclass(frozen=True)
class FileEntry:
    key: str  # the entry object's key under the batch root
    file_id: str
    purpose: str
    expires_at: int


@dataclass(frozen=True)
class BatchEntry:
    key: str
    batch_id: str
    input_file_id: str


def _token(value: Any) -> str | None:
    text = str(value) if isinstance(value, str) else None
    return text if text and set(text) <= _ID_CHARS else None


def _rank(record: dict[str, Any]) -> str | None:
    """20 digits that sort newest first; None for a record with no creation time."""
    created_ns, created_at = record.get("created_ns"), record.get("created_at")
    if isinstance(created_ns, int) and not isinstance(created_ns, bool):
        ns = created_ns
    elif isinstance(created_at, int | float) and not isinstance(created_at, bool):
        ns = int(created_at) * 1_000_000_000
    else:
        return None
    if not 0 <= ns <= layout.INDEX_RANK_TOP:
        return None
    return f"{layout.INDEX_RANK_TOP - ns:020d}"


def _owner(record: dict[str, Any]) -> str | None:
    owner = record.get("owner")
    return owner if isinstance(owner, str) and KEY_NAME.match(owner) else None


def file_entry_key(record: dict[str, Any]) -> str | None:
    """The index entry of a file record (object.json); None for a record that no key could list (no owner, id,
    purpose, creation or expiry time)."""
    owner, rank = _owner(record), _rank(record)
    file_id, purpose, expires = _token(record.get("id")), _token(record.get("purpose")), record.get("expires_at")
    if owner is None or rank is None or file_id is None or purpose is None or "." in purpose:
        return None
    if not isinstance(expires, int) or isinstance(expires, bool) or expires < 0:
        return None
    return f"{layout.owner_files_index(owner)}/{rank}.{file_id}.{purpose}.{expires}/{layout.INDEX_LEAF}"


def batch_entry_key(record: dict[str, Any]) -> str | None:
    """The index entry of a batch record (batch.json); None for one no key could list."""
    owner, rank = _owner(record), _rank(record)
    batch_id, input_file_id = _token(record.get("id")), _token(record.get("input_file_id"))
    if owner is None or rank is None or batch_id is None or input_file_id is None:
        return None
    return f"{layout.owner_batches_index(owner)}/{rank}.{batch_id}.{input_file_id}/{layout.INDEX_LEAF}"


def _name(key: str, kind: str) -> list[str] | None:
    parts = key.split("/")
    if len(parts) != 5 or parts[0] != layout.INDEX or parts[2] != kind or parts[4] != layout.INDEX_LEAF:
        return None
    return parts[3].split(".")


def parse_file_entry(key: str) -> FileEntry | None:
    fields = _name(key, "files")
    if fields is None or len(fields) != 4 or not fields[3].isdigit():
        return None
    return FileEntry(key, fields[1], fields[2], int(fields[3]))


def parse_batch_entry(key: str) -> BatchEntry | None:
    fields = _name(key, "batches")
    if fields is None or len(fields) != 3:
        return None
    return BatchEntry(key, fields[1], fields[2])


def add(store: Store, key: str) -> None:
    """Writes an entry (an empty object, with the store's key)."""
    store.write_bytes(key, b"")


def remove(store: Store, keys: list[str]) -> None:
    """Deletes entries, every version of each (Store.purge: no delete marker left to slow the index's listing)."""
    if keys:
        store.purge(keys)


def is_complete(store: Store) -> bool:
    return store.exists(layout.INDEX_COMPLETE)


def list_after(store: Store, folder: str, start_after: str | None, count: int) -> list[str]:
    """Up to `count` keys under `folder`/ that sort after the key `start_after` (None: from the first), in name
    order: one request (S3 ListObjectsV2 with Prefix, StartAfter and MaxKeys; Cloud Storage objects.list with prefix,
    startOffset and maxResults). Keys are relative to the batch root. Raises ByocError as the store's calls do."""
    count = max(1, min(count, LIST_CHUNK))
    if isinstance(store, S3Store):
        s3: S3Store = store
        arguments: dict[str, Any] = {"Bucket": s3.bucket, "Prefix": f"{s3.key(folder)}/", "MaxKeys": count}
        if start_after is not None:
            arguments["StartAfter"] = s3.key(start_after)
        response = s3.call(f"listing {s3.uri(folder)}", lambda: s3.client.list_objects_v2(**arguments))
        names = [str(item["Key"]) for item in response.get("Contents", [])]
        return [_relative(s3.prefix, name) for name in names]
    if isinstance(store, GcsStore):
        gcs: GcsStore = store
        start = gcs.key(start_after) if start_after is not None else None

        def page() -> list[str]:
            found: list[str] = []
            blobs = gcs.bucket.list_blobs(prefix=f"{gcs.key(folder)}/", start_offset=start, page_size=count + 1)
            for blob in blobs:
                name = str(blob.name)
                if start is not None and name <= start:  # startOffset is inclusive (and an emulator may ignore it)
                    continue
                found.append(_relative(gcs.prefix, name))
                if len(found) >= count:
                    break
            return found

        result: list[str] = gcs.call(f"listing {gcs.uri(folder)}", page)
        return result
    assert isinstance(store, FileStore)
    keys = sorted(o.key for o in store.list_objects(folder))  # str order, as S3's and Cloud Storage's
    return [k for k in keys if start_after is None or k > start_after][:count]


def list_all(store: Store, folder: str) -> list[str]:
    """Every key under `folder`/, in name order (ListObjectsV2 pages of 1,000 keys)."""
    return sorted(o.key for o in store.list_objects(folder))


def _relative(prefix: str, name: str) -> str:
    return name[len(prefix) :].lstrip("/") if prefix else name


@dataclass
class IndexListing:
    """The whole index as the sweep lists it (keys only): entries by file and batch id, the file entries whose name
    says they expired, and whether `index/_complete` exists."""

    keys: set[str]
    files: dict[str, list[str]]
    batches: dict[str, list[str]]
    expired: set[str]
    complete: bool


def list_index(store: Store, now: float) -> IndexListing:
    keys = {o.key for o in store.list_objects(layout.INDEX)}
    listing = IndexListing(keys, {}, {}, set(), layout.INDEX_COMPLETE in keys)
    for key in keys:
        if (entry := parse_file_entry(key)) is not None:
            listing.files.setdefault(entry.file_id, []).append(key)
            if entry.expires_at <= now:
                listing.expired.add(key)
        elif (batch := parse_batch_entry(key)) is not None:
            listing.batches.setdefault(batch.batch_id, []).append(key)
    return listing


def settle(store: Store, listing: IndexListing, stale: set[str], missing: list[str]) -> None:
    """The sweep's last step: deletes the `stale` entries, writes the `missing` ones, then `index/_complete` if it
    was not there (every record the sweep saw has its entry now)."""
    remove(store, sorted(stale))
    for key in missing:
        add(store, key)
    if not listing.complete:
        store.write_bytes(layout.INDEX_COMPLETE, b"")
