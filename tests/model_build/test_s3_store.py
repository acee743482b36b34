"""Builds into a real S3 API (moto server on 127.0.0.1): SSE-KMS, cache hits, no partial artifact, fetch + verify."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from runtime.model_build.stores import S3Store
from tests.model_build.conftest import FAST_CALIBRATION, byoc, files_under

BUCKET = "byoc-artifacts"


@pytest.fixture()
def moto(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    requests.post(f"{endpoint}/moto-api/reset", timeout=10)  # moto keeps its state per process, not per server
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture()
def s3(moto: str) -> Any:
    client = boto3.client("s3", endpoint_url=moto)
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    return client


@pytest.fixture()
def kms_key(moto: str) -> str:
    return str(boto3.client("kms", endpoint_url=moto).create_key(Description="byoc artifacts")["KeyMetadata"]["Arn"])


def objects(s3: Any, prefix: str = "") -> dict[str, tuple[str, Any]]:
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listing}


class DenyingProxy(ThreadingHTTPServer):
    """Forwards to moto, but answers 403 AccessDenied to any PUT of a key that ends with `deny`."""

    def __init__(self, upstream: str, deny: str) -> None:
        self.upstream = upstream
        self.deny = deny
        self.denied: list[str] = []
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(BaseHTTPRequestHandler):
    server: DenyingProxy

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.command == "PUT" and self.path.split("?")[0].endswith(self.server.deny):
            self.server.denied.append(self.path)
            payload = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        response = requests.request(
            self.command, self.server.upstream + self.path, headers=headers, data=body, timeout=30
        )
        self.send_response(response.status_code)
        for key, value in response.headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(response.content)))
        self.end_headers()
        self.wfile.write(response.content)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


def test_build_uploads_with_sse_kms_and_hits_the_cache(tiny: Path, s3: Any, kms_key: str) -> None:
    args = ["build", "--source", f"file://{tiny}", "--shape", "h100x1-fp8", "--dest", f"s3://{BUCKET}"]
    args += ["--output", "json", *FAST_CALIBRATION]
    run = byoc(*args, "--kms-key-id", kms_key)
    assert run.exit_code == 0, run.stderr
    prefix = f"artifacts/tiny-llama/{run.result['cache_key']}/"
    assert run.result["artifact"] == f"s3://{BUCKET}/{prefix.rstrip('/')}"
    stored = objects(s3, prefix)
    assert f"{prefix}manifest.json" in stored
    assert f"{prefix}model/model.safetensors" in stored
    assert len(stored) == run.result["uploaded"] == run.result["files"] + 1
    for key in stored:
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert kms_key.endswith(head["SSEKMSKeyId"].split("/")[-1])
    # the cluster passes the key through the environment; the second identical build uploads nothing
    again = byoc(*args, env={"BYOC_ARTIFACT_KMS_KEY": kms_key})
    assert again.exit_code == 0, again.stderr
    assert again.result["cache_hit"] is True
    assert again.result["uploaded"] == 0
    assert objects(s3, prefix) == stored  # same ETags and LastModified: no PutObject happened


def test_a_failed_upload_leaves_no_partial_artifact(tiny: Path, s3: Any, moto: str, kms_key: str) -> None:
    proxy = DenyingProxy(moto, deny="/manifest.json")
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        run = byoc(
            "build", "--source", f"file://{tiny}", "--shape", "h100x1-bf16", "--dest", f"s3://{BUCKET}/store",
            "--kms-key-id", kms_key, "--output", "json",
            env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.server_address[1]}"},
        )  # fmt: skip
    finally:
        proxy.shutdown()
        thread.join()
    assert proxy.denied, "the manifest upload was never attempted"
    assert run.exit_code == 1
    error = run.result["error"]
    assert "access denied" in error["message"]
    assert "no partial artifact is left" in error["message"]
    removed = re.search(r"removed the (\d+) file", error["message"])
    assert removed and int(removed.group(1)) >= 6  # model files, adapters, options, plan went up first
    assert objects(s3) == {}  # every file went up before the manifest, and every one was removed


def test_build_from_an_s3_source(tiny: Path, s3: Any, tmp_path: Path) -> None:
    for path in files_under(tiny):
        s3.upload_file(str(path), BUCKET, f"models/tiny/{path.relative_to(tiny).as_posix()}")
    run = byoc(
        "build", "--source", f"s3://{BUCKET}/models/tiny", "--shape", "l40sx1-fp8", "--dest", f"file://{tmp_path}",
        "--output", "json", *FAST_CALIBRATION,
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    assert any(e.get("step") == "fetch source" for e in run.events if e["event"] == "progress")
    artifact = Path(run.result["artifact"].removeprefix("file://"))
    assert (artifact / "model" / "hf_quant_config.json").is_file()
    assert run.result["model_id"] == "tiny"


def test_fetch_verifies_and_names_a_corrupted_file(tiny: Path, lora: Path, s3: Any, tmp_path: Path) -> None:
    run = byoc(
        "build", "--source", f"file://{tiny}", "--shape", "h100x1-bf16", "--addon", f"support=file://{lora}",
        "--dest", f"s3://{BUCKET}", "--output", "json",
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    artifact = run.result["artifact"]
    good = tmp_path / "good"
    fetched = byoc("artifacts", "fetch", "--from", artifact, "--to", str(good), "--verify", "--output", "json")
    assert fetched.exit_code == 0, fetched.stderr
    assert (good / "model" / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()
    assert (good / "adapters" / "support" / "adapter_model.safetensors").is_file()
    assert (good / "manifest.json").is_file() and (good / "options.yaml").is_file()
    assert byoc("artifacts", "verify", str(good)).exit_code == 0
    # one flipped byte in the store: the fetch names the file and places nothing
    key = artifact.removeprefix(f"s3://{BUCKET}/") + "/adapters/support/adapter_model.safetensors"
    data = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    bad = tmp_path / "bad"
    failed = byoc("artifacts", "fetch", "--from", artifact, "--to", str(bad), "--verify")
    assert failed.exit_code == 1
    assert "adapters/support/adapter_model.safetensors does not match the manifest" in failed.stderr
    assert files_under(bad) == []
    # a fetch over an earlier good copy leaves that copy untouched
    before = {p: p.read_bytes() for p in files_under(good)}
    assert byoc("artifacts", "fetch", "--from", artifact, "--to", str(good), "--verify").exit_code == 1
    assert {p: p.read_bytes() for p in files_under(good)} == before


def test_large_files_go_up_in_parts(s3: Any, tmp_path: Path, kms_key: str) -> None:
    big = tmp_path / "shard.safetensors"
    big.write_bytes(b"\x01" * (11 * 1024 * 1024))
    store = S3Store(f"s3://{BUCKET}/parts", "--dest", kms_key)
    store.transfer.multipart_threshold = store.transfer.multipart_chunksize = 5 * 1024 * 1024
    store.upload(big, "shard.safetensors")
    head = s3.head_object(Bucket=BUCKET, Key="parts/shard.safetensors")
    assert head["ETag"].strip('"').endswith("-3")  # three parts of 5, 5 and 1 MiB
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["ContentLength"] == big.stat().st_size


def test_missing_bucket_is_refused_before_building(tiny: Path, moto: str) -> None:
    run = byoc("build", "--source", f"file://{tiny}", "--shape", "h100x1-bf16", "--dest", "s3://no-such-bucket")
    assert run.exit_code == 2
    assert "the bucket does not exist" in run.stderr


def test_fetch_of_an_unfinished_artifact(s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key="artifacts/m/k/model/config.json", Body=b"{}")
    run = byoc("artifacts", "fetch", "--from", f"s3://{BUCKET}/artifacts/m/k", "--to", str(tmp_path / "x"))
    assert run.exit_code == 1
    assert "no manifest.json" in run.stderr


def test_a_store_that_cannot_be_reached_is_one_line(aws_env: dict[str, str], tmp_path: Path) -> None:
    """No S3 endpoint answering (a wrong AWS_ENDPOINT_URL, no network path): each command that reads the store says
    so in one line naming its flag, exit 1, in a real subprocess, and leaves nothing."""
    import os
    import socket

    from tests.conftest import run_byoc

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {**os.environ, **aws_env, "AWS_ENDPOINT_URL": nowhere, "AWS_MAX_ATTEMPTS": "1"}
    cases = {
        "--from": ["artifacts", "fetch", "--from", f"s3://{BUCKET}/artifacts/m/k", "--to", str(tmp_path / "x")],
        "--source": ["build", "--source", f"s3://{BUCKET}/models/m", "--shape", "h100x1-bf16", "--plan-only"],
    }
    for flag, args in cases.items():
        result = run_byoc(*args, "--output", "json", env=env, timeout=120)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr and result.stderr.startswith(f"error: {flag}: "), result.stderr
        assert len(result.stderr.splitlines()) == 1 and "EndpointConnectionError" in result.stderr
        assert result.stdout.splitlines()[-1].startswith('{"error": ')
    assert not (tmp_path / "x").exists()
