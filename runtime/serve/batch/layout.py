"""Where batch files and batches live under the batch root, and the names the gateway and the worker share.

The batch root is a prefix of the deployment's artifact bucket (`s3://<bucket>/batch/` on AWS, `gs://<bucket>/batch/`
on GCP, encrypted with the deployment's customer-managed key; a `file://` directory in tests), opened with
runtime/model_build/stores.py's `open_store`. Under it:

    files/{file_id}/object.json       the OpenAI FileObject plus `owner` and `expires_at` (whoever creates the file)
    files/{file_id}/content           the file's bytes
    batches/{batch_id}/batch.json     the batch as created (gateway, once): owner, input_file_id, endpoint,
                                      completion_window, metadata, created_at, expires_at
    batches/{batch_id}/cancel         the gateway's cancel request (`{"cancelling_at": <unix s>}`)
    batches/{batch_id}/state.json     status, request_counts, the *_at times, output_file_id, error_file_id, errors
                                      (the worker, and only the worker, writes it)
    batches/{batch_id}/parts/{seq:08d}.jsonl   result lines the worker has committed, in OpenAI's output-line shape

One writer per object: the gateway writes batch.json and cancel, the worker writes state.json, the parts and the
output and error files, so no read-modify-write races between them.

Limits and shapes are OpenAI's (https://platform.openai.com/docs/api-reference/batch, /files; FACTS.md): an input
file of at most 200 MB and 50,000 requests, `completion_window` "24h", endpoints /v1/chat/completions and
/v1/completions here (the gateway serves no embeddings).
"""

from __future__ import annotations

import secrets

MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_REQUESTS_PER_BATCH = 50_000
COMPLETION_WINDOWS = ("24h",)
COMPLETION_WINDOW_SECONDS = {"24h": 24 * 3600}
ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
# Seconds an S3 connect or read may wait in the gateway and the worker: a store that hangs (no answer, no refusal)
# costs a call at most about twice this (two attempts), then the gateway answers 503 and frees the store thread.
STORE_TIMEOUT_S = 10.0

# OpenAI's batch statuses (openai-python src/openai/types/batch.py)
VALIDATING = "validating"
FAILED = "failed"
IN_PROGRESS = "in_progress"
FINALIZING = "finalizing"
COMPLETED = "completed"
EXPIRED = "expired"
CANCELLING = "cancelling"
CANCELLED = "cancelled"
TERMINAL = frozenset({FAILED, COMPLETED, EXPIRED, CANCELLED})

# How the worker's requests reach the gateway: authenticated with the worker's own token (a Kubernetes Secret both
# mount), on behalf of the key that created the batch (its name in OWNER_HEADER: limits and metering are that key's),
# and admitted only into capacity online traffic leaves idle.
OWNER_HEADER = "X-Byoc-Batch-Owner"
BATCH_ID_HEADER = "X-Byoc-Batch-Id"
# on a 429 batch_yield, why (gateway -> worker): `full` (no room for more batch lines: the worker's send window
# halves) or `hold` (an online request is waiting for a slot or its first token: a moment's wait, not a smaller window)
YIELD_HEADER = "X-Byoc-Batch-Yield"


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"


def file_object(file_id: str) -> str:
    return f"files/{file_id}/object.json"


def file_content(file_id: str) -> str:
    return f"files/{file_id}/content"


def batch_record(batch_id: str) -> str:
    return f"batches/{batch_id}/batch.json"


def batch_cancel(batch_id: str) -> str:
    return f"batches/{batch_id}/cancel"


def batch_state(batch_id: str) -> str:
    return f"batches/{batch_id}/state.json"


def batch_part(batch_id: str, seq: int) -> str:
    return f"batches/{batch_id}/parts/{seq:08d}.jsonl"


# -- what the objects hold (fields the gateway and the worker both read) ----------------------------------------------
# object.json: OpenAI's FileObject (openai-python src/openai/types/file_object.py: id, object "file", bytes,
# created_at, expires_at, filename, purpose, status) plus `owner`, the API key's name. The worker writes its output and
# error files the same way, with purpose "batch_output" and the batch's owner, so that key alone sees them.
FILE_PURPOSE = "batch"
OUTPUT_PURPOSE = "batch_output"
# batch.json: id, owner, input_file_id, endpoint, completion_window, metadata, created_at, expires_at, and (added by
# the gateway at create) `model` (OpenAI: one model per input file), `request_total` (lines in the input file) and
# `output_expires_seconds` (the output and error files' expires_at = their created_at + this, never above retention).
# state.json (the worker): {status, request_counts: {total, completed, failed}, in_progress_at, finalizing_at,
# completed_at, failed_at, expired_at, cancelling_at, cancelled_at, output_file_id, error_file_id, errors, usage}
# (`errors` as batch.py's Errors, `usage` as batch_usage.py's BatchUsage); any field may be absent, and reads as null.
STATE_TIMES = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
# OpenAI's metadata limits (openai-python src/openai/types/batch_create_params.py, `metadata`): 16 pairs, keys of at
# most 64 characters, values of at most 512
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512
# OpenAI's `expires_after.seconds` floor (file_create_params.py, batch_create_params.py: 3600 to 2592000); the ceiling
# here is the deployment's retention (--batch-retention-hours, spec batch.retention_hours 1..720)
EXPIRES_MIN_SECONDS = 3600


# -- added by the batch worker (runtime/serve/batch/worker.py) --------------------------------------------------------
# batches/{batch_id}/lease.json: which worker runs the batch, and until when (`{"holder", "expires_at"}`), written
# with conditional writes (runtime/serve/batch/conditional.py) so that two workers never run one batch at once.


def batch_lease(batch_id: str) -> str:
    return f"batches/{batch_id}/lease.json"


def batch_parts(batch_id: str) -> str:
    """The folder of a batch's parts (a prefix for `Store.list_objects`)."""
    return f"batches/{batch_id}/parts"


def batch_folder(batch_id: str) -> str:
    return f"batches/{batch_id}"


# -- the owner index (runtime/serve/batch/owner_index.py): what a list reads instead of every record ----------------
# index/{owner}/files/{rank}.{file_id}.{purpose}.{expires_at}/e     one empty object per file of the key `owner`
# index/{owner}/batches/{rank}.{batch_id}.{input_file_id}/e        one empty object per batch of the key
# index/_complete                                                  every record has its entry (the worker's sweep)
# rank = INDEX_RANK_TOP - the creation time in ns, 20 digits: the names sort oldest last, as OpenAI lists (newest
# first). One folder per entry (`/e`), so that Store.purge, which lists versions per folder, lists only that entry's.
INDEX = "index"
INDEX_COMPLETE = "index/_complete"  # `_` starts no key name (runtime/serve/keys.py KEY_NAME): no owner's folder
INDEX_RANK_TOP = 10**20 - 1
INDEX_LEAF = "e"


def owner_files_index(owner: str) -> str:
    return f"{INDEX}/{owner}/files"


def owner_batches_index(owner: str) -> str:
    return f"{INDEX}/{owner}/batches"
