"""Object stores the builder reads sources from and writes artifacts to: file://, s3://, gs://.

One small interface (`Store`) over a root URI; keys are '/'-separated paths under that root. Cloud SDKs are imported
when a store of their scheme is opened, so reading a local directory never imports boto3.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from byoc.errors import ByocError, ByocFailure

Progress = Callable[[int], None]
SCHEMES = ("file", "s3", "gs")
# boto3's TransferConfig: files above the threshold go up in parts (S3 wants parts of 5 MiB to 5 GiB; 64 MiB keeps a
# 16 GB safetensors shard at 250 parts, far below the 10,000-part limit).
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 64 * 1024 * 1024


class ObjectMissing(Exception):
    """The key does not exist in the store."""


@dataclass(frozen=True)
class StoredObject:
    key: str  # relative to the store's root
    size: int


class Store(Protocol):
    root: str

    def uri(self, key: str = "") -> str: ...
    def list_objects(self, prefix: str = "") -> list[StoredObject]: ...
    def exists(self, key: str) -> bool: ...
    def read_bytes(self, key: str) -> bytes: ...
    def download(self, key: str, path: Path, progress: Progress | None = None) -> None: ...
    def upload(self, path: Path, key: str, progress: Progress | None = None) -> None: ...
    def write_bytes(self, key: str, data: bytes) -> None: ...
    def delete(self, keys: list[str]) -> None: ...
    def purge(self, keys: list[str]) -> None: ...
    def check_writable(self) -> None: ...


def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def _noop(_: int) -> None:
    return None


class FileStore:
    """A local (or mounted) directory. Each file lands whole: written beside its place, then renamed."""

    def __init__(self, root: str, field: str) -> None:
        self.root = root.rstrip("/")
        self.path = Path(unquote(urlparse(root).path)) if root.startswith("file://") else Path(root)
        self.field = field
        if not str(self.path).startswith("/"):
            raise ByocError(field, f"{root} is not an absolute file:// URI", "write file:///absolute/path")

    def uri(self, key: str = "") -> str:
        return f"file://{self.path / key}" if key else f"file://{self.path}"

    def list_objects(self, prefix: str = "") -> list[StoredObject]:
        base = self.path / prefix if prefix else self.path
        if not base.is_dir():
            return []
        found = []
        for item in sorted(base.rglob("*")):
            if item.is_file():
                found.append(StoredObject(item.relative_to(self.path).as_posix(), item.stat().st_size))
        return found

    def exists(self, key: str) -> bool:
        return (self.path / key).is_file()

    def read_bytes(self, key: str) -> bytes:
        try:
            return (self.path / key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectMissing(key) from None

    def download(self, key: str, path: Path, progress: Progress | None = None) -> None:
        source = self.path / key
        if not source.is_file():
            raise ObjectMissing(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        (progress or _noop)(source.stat().st_size)

    def upload(self, path: Path, key: str, progress: Progress | None = None) -> None:
        target = self.path / key
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            os.close(handle)
            try:
                shutil.copyfile(path, temporary)
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise ByocFailure(self.field, f"cannot write {target}: {exc.strerror or exc}", "check the path") from None
        (progress or _noop)(path.stat().st_size)

    def write_bytes(self, key: str, data: bytes) -> None:
        """Writes `data` at `key` whole or not at all (a temporary file renamed over the target)."""
        target = self.path / key
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(data)
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise ByocFailure(self.field, f"cannot write {target}: {exc.strerror or exc}", "check the path") from None

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            (self.path / key).unlink(missing_ok=True)
        # drop the folders the upload made, so that a failed build leaves no empty artifact prefix behind
        parents = {p for key in keys for p in (self.path / key).parents if self.path in p.parents}
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            try:
                parent.rmdir()
            except OSError:
                continue

    def purge(self, keys: list[str]) -> None:
        """As `delete`: a directory keeps no earlier versions."""
        self.delete(keys)

    def check_writable(self) -> None:
        existing = next((p for p in [self.path, *self.path.parents] if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
            raise ByocError(self.field, f"{self.path} cannot be written", "choose a writable directory")


def _s3_error(exc: Exception, field: str, what: str) -> ByocError:
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    name = type(exc).__name__
    if code in ("NoSuchBucket", "404") and "bucket" in what:
        return ByocError(
            field, f"{what}: the bucket does not exist", "create it, or pass the artifact bucket byoc made"
        )
    if code in ("AccessDenied", "403", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return ByocFailure(field, f"{what}: access denied ({code})", "check the IAM role or credentials in use")
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return ByocError(field, f"{what}: no AWS credentials", "set AWS_PROFILE or run where an IAM role is attached")
    if code.startswith("KMS") or "KMS" in code:
        return ByocFailure(field, f"{what}: KMS refused the key ({code})", "check the key id and its key policy")
    return ByocFailure(field, f"{what}: {code or name}: {exc}", "check the store and the network path to it")


class S3Store:
    """An S3 prefix through boto3. Honours AWS_ENDPOINT_URL(_S3); writes with SSE-KMS when given a key."""

    def __init__(self, root: str, field: str, kms_key: str | None = None, timeout_s: float | None = None) -> None:
        """`timeout_s`: the most one call may wait on a connect or a read (botocore's default is 60 s each, with up
        to 5 attempts: minutes on a store that hangs); None keeps botocore's defaults (the builder's long transfers).
        """
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        parsed = urlparse(root)
        if not parsed.netloc:
            raise ByocError(field, f"{root} names no bucket", "write s3://bucket[/prefix]")
        self.root = root.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.field = field
        self.kms_key = kms_key
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        config = None
        if timeout_s is not None:
            config = Config(
                connect_timeout=timeout_s, read_timeout=timeout_s, retries={"total_max_attempts": 2, "mode": "standard"}
            )
        self.client: Any = boto3.client("s3", endpoint_url=endpoint, config=config)
        self.transfer: Any = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK
        )

    def _key(self, key: str) -> str:
        return join(self.prefix, key)

    def uri(self, key: str = "") -> str:
        return f"s3://{join(self.bucket, self.prefix, key)}"

    def key(self, key: str) -> str:
        """The full object name of `key` under the store's root (for runtime/model_build/fetch.py)."""
        return self._key(key)

    def call(self, what: str, function: Callable[[], Any]) -> Any:
        """`function()`, its SDK errors turned into byoc's (for runtime/model_build/fetch.py)."""
        return self._call(what, function)

    def _call(self, what: str, function: Callable[[], Any]) -> Any:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return function()
        except S3UploadFailedError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, ClientError) else exc
            raise _s3_error(cause, self.field, what) from None
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, self.field, what) from None

    def list_objects(self, prefix: str = "") -> list[StoredObject]:
        full = self._key(prefix)
        full = f"{full}/" if full else ""
        paginator = self.client.get_paginator("list_objects_v2")

        def pages() -> list[StoredObject]:
            found = []
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    key = str(item["Key"])
                    relative = key[len(self.prefix) :].lstrip("/") if self.prefix else key
                    if not key.endswith("/"):
                        found.append(StoredObject(relative, int(item["Size"])))
            return found

        result: list[StoredObject] = self._call(f"listing {self.uri(prefix)}", pages)
        return result

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise _s3_error(exc, self.field, f"reading {self.uri(key)}") from None
        except BotoCoreError as exc:  # no endpoint, no credentials, a timeout: as every other call says them
            raise _s3_error(exc, self.field, f"reading {self.uri(key)}") from None

    def read_bytes(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            data: bytes = response["Body"].read()
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                raise ObjectMissing(key) from None
            raise _s3_error(exc, self.field, f"reading {self.uri(key)}") from None
        except BotoCoreError as exc:
            raise _s3_error(exc, self.field, f"reading {self.uri(key)}") from None
        return data

    def download(self, key: str, path: Path, progress: Progress | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._call(
            f"downloading {self.uri(key)}",
            lambda: self.client.download_file(
                self.bucket, self._key(key), str(path), Callback=progress, Config=self.transfer
            ),
        )

    def upload(self, path: Path, key: str, progress: Progress | None = None) -> None:
        extra: dict[str, str] = {}
        if self.kms_key:
            extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key}
        self._call(
            f"uploading {self.uri(key)}",
            lambda: self.client.upload_file(
                str(path), self.bucket, self._key(key), ExtraArgs=extra, Callback=progress, Config=self.transfer
            ),
        )

    def write_bytes(self, key: str, data: bytes) -> None:
        """One PutObject (atomic: readers see the old object or the new one), SSE-KMS with the store's key."""
        extra: dict[str, str] = {}
        if self.kms_key:
            extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key}
        self._call(
            f"writing {self.uri(key)}",
            lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra),
        )

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            delete = functools.partial(
                self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            self._call(f"deleting under {self.uri()}", delete)

    def purge(self, keys: list[str]) -> None:
        """Deletes every version of each key, delete markers included, so nothing of it stays readable by
        VersionId in a versioned bucket (`delete` leaves the data as a noncurrent version until the lifecycle rule
        expires it). Versions are listed once per folder (ListObjectVersions, Prefix=the folder) and matched by the
        exact key, so `a/content` never takes `a/content2`; DeleteObjects then takes up to 1,000 (Key, VersionId)
        pairs a call. Needs s3:ListBucketVersions and s3:DeleteObjectVersion. Raises ByocFailure naming the first
        version S3 refused to delete."""
        wanted = {self._key(k) for k in keys}
        folders = sorted({key.rsplit("/", 1)[0] + "/" if "/" in key else key for key in wanted})
        versions: list[dict[str, str]] = []
        paginator = self.client.get_paginator("list_object_versions")
        for folder in folders:

            def listing(folder: str = folder) -> list[dict[str, str]]:
                found = []
                for page in paginator.paginate(Bucket=self.bucket, Prefix=folder):
                    for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                        if item["Key"] in wanted:
                            found.append({"Key": str(item["Key"]), "VersionId": str(item["VersionId"])})
                return found

            versions += self._call(f"listing versions under {self.uri()}", listing)
        for start in range(0, len(versions), 1000):  # DeleteObjects takes at most 1,000 keys
            batch = versions[start : start + 1000]
            delete = functools.partial(
                self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            response = self._call(f"deleting versions under {self.uri()}", delete)
            errors = (response.get("Errors") or []) if isinstance(response, dict) else []
            if errors:  # Quiet mode answers only the failures; one left behind is still readable
                first = errors[0]
                raise ByocFailure(
                    self.field,
                    f"deleting {self.uri()}: S3 kept a version ({first.get('Code')}: {first.get('Message')})",
                    "check that the role may s3:DeleteObjectVersion under this prefix",
                )

    def check_writable(self) -> None:
        self._call(f"bucket {self.bucket}", lambda: self.client.head_bucket(Bucket=self.bucket))


class GcsStore:
    """A Cloud Storage prefix through google-cloud-storage; writes with the CMEK key when given one."""

    def __init__(self, root: str, field: str, kms_key: str | None = None) -> None:
        try:
            storage: Any = importlib.import_module("google.cloud.storage")
        except ImportError:
            raise ByocError(
                field,
                f"{root}: gs:// needs the google-cloud-storage package, which is not installed",
                "pip install google-cloud-storage (the byoc runtime image has it)",
            ) from None
        parsed = urlparse(root)
        if not parsed.netloc:
            raise ByocError(field, f"{root} names no bucket", "write gs://bucket[/prefix]")
        self.root = root.rstrip("/")
        self.prefix = parsed.path.strip("/")
        self.field = field
        self.kms_key = kms_key
        self.bucket: Any = storage.Client().bucket(parsed.netloc)
        self.bucket_name = parsed.netloc

    def uri(self, key: str = "") -> str:
        return f"gs://{join(self.bucket_name, self.prefix, key)}"

    def _key(self, key: str) -> str:
        return join(self.prefix, key)

    def key(self, key: str) -> str:
        """The full object name of `key` under the store's root (for runtime/model_build/fetch.py)."""
        return self._key(key)

    def call(self, what: str, function: Callable[[], Any]) -> Any:
        """`function()`, its SDK errors turned into byoc's (for runtime/model_build/fetch.py)."""
        return self._call(what, function)

    def _call(self, what: str, function: Callable[[], Any]) -> Any:
        try:
            return function()
        except Exception as exc:  # google.api_core raises many types; each becomes one message
            code = getattr(exc, "code", None)
            if code == 404:
                raise ObjectMissing(what) from None
            if code == 403:
                raise ByocFailure(self.field, f"{what}: permission denied", "check the service account") from None
            raise ByocFailure(self.field, f"{what}: {type(exc).__name__}: {exc}", "check the bucket") from None

    def list_objects(self, prefix: str = "") -> list[StoredObject]:
        full = self._key(prefix)
        blobs = self._call(f"listing {self.uri(prefix)}", lambda: list(self.bucket.list_blobs(prefix=f"{full}/")))
        cut = len(self.prefix) + 1 if self.prefix else 0
        return [StoredObject(str(b.name)[cut:], int(b.size or 0)) for b in blobs if not str(b.name).endswith("/")]

    def exists(self, key: str) -> bool:
        return bool(self._call(f"reading {self.uri(key)}", lambda: self.bucket.blob(self._key(key)).exists()))

    def read_bytes(self, key: str) -> bytes:
        data: bytes = self._call(f"{key}", lambda: self.bucket.blob(self._key(key)).download_as_bytes())
        return data

    def download(self, key: str, path: Path, progress: Progress | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._call(key, lambda: self.bucket.blob(self._key(key)).download_to_filename(str(path)))
        (progress or _noop)(path.stat().st_size)

    def upload(self, path: Path, key: str, progress: Progress | None = None) -> None:
        # a chunk size makes the client use resumable (multi-request) uploads for large files
        blob = self.bucket.blob(self._key(key), chunk_size=MULTIPART_CHUNK, kms_key_name=self.kms_key)
        self._call(f"uploading {self.uri(key)}", lambda: blob.upload_from_filename(str(path)))
        (progress or _noop)(path.stat().st_size)

    def write_bytes(self, key: str, data: bytes) -> None:
        """One upload (atomic per object in GCS), CMEK with the store's key."""
        blob = self.bucket.blob(self._key(key), kms_key_name=self.kms_key)
        self._call(f"writing {self.uri(key)}", lambda: blob.upload_from_string(data))

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            blob = self.bucket.blob(self._key(key))
            with contextlib.suppress(ObjectMissing):  # never written (the upload that failed)
                self._call(f"deleting {self.uri(key)}", blob.delete)

    def purge(self, keys: list[str]) -> None:
        """Deletes every generation of each key (live and noncurrent: list_blobs(versions=True), exact name
        match), so none stays readable by generation in a versioned bucket. A bucket with soft delete keeps what
        is deleted restorable for its retention (stacks/gcp/artifacts.py SOFT_DELETE_SECONDS)."""
        wanted = {self._key(k) for k in keys}
        folders = sorted({key.rsplit("/", 1)[0] + "/" if "/" in key else key for key in wanted})
        for folder in folders:

            def listing(folder: str = folder) -> list[Any]:
                return list(self.bucket.list_blobs(prefix=folder, versions=True))

            blobs: list[Any] = self._call(f"listing versions under {self.uri()}", listing)
            for blob in blobs:
                if str(blob.name) not in wanted:
                    continue
                with contextlib.suppress(ObjectMissing):  # deleted meanwhile (by the sweep, or a second DELETE)
                    self._call(
                        f"deleting {self.uri()}",
                        functools.partial(self.bucket.delete_blob, blob.name, generation=blob.generation),
                    )

    def check_writable(self) -> None:
        self._call(f"bucket {self.bucket_name}", self.bucket.reload)


def open_store(uri: str, field: str, kms_key: str | None = None, timeout_s: float | None = None) -> Store:
    """The store for a file://, s3:// or gs:// URI (a bare absolute path counts as file://). `timeout_s` bounds each
    S3 call's connect and read waits (a serving path that must answer while the store hangs); None: the SDK's."""
    if uri.startswith("/"):
        return FileStore(f"file://{uri}", field)
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return FileStore(uri, field)
    if scheme == "s3":
        return S3Store(uri, field, kms_key, timeout_s)
    if scheme == "gs":
        return GcsStore(uri, field, kms_key)
    raise ByocError(
        field, f"{uri!r} is not a store URI byoc can use", "use file:///path, s3://bucket/prefix or gs://..."
    )
