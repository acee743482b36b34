"""The serving pod's artifact fetch against a real S3 API (moto on 127.0.0.1): parallel ranged reads, a part
corrupted on the way caught by the manifest, a fetch cut short resumed, and the benchmark's JSON."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from runtime.model_build import bench_fetch
from tests.model_build.conftest import byoc, files_under
from tests.model_build.test_s3_store import BUCKET, moto, s3  # noqa: F401  (fixtures)

MIB = 1024 * 1024
PREFIX = "artifacts/tiny/k1"


class RecordingProxy(ThreadingHTTPServer):
    """Forwards to moto and records every GET (path, Range). `flip` corrupts one byte of ranged responses to keys
    ending with it; `deny` answers 403 to GETs of keys ending with it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.gets: list[tuple[str, str | None]] = []
        self.flip: str | None = None
        self.deny: str | None = None
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: RecordingProxy

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        ranged = self.headers.get("Range")
        if self.command == "GET":
            with self.server.lock:
                self.server.gets.append((path, ranged))
            if self.server.deny and path.endswith(self.server.deny):
                # late, as a network that fails mid-fetch: the other files have arrived by then (a transfer that
                # fails cancels the ones still running, and what a cut-short fetch keeps would depend on timing)
                time.sleep(2)
                self._reply(403, {}, b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>")
                return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        response = requests.request(
            self.command, self.server.upstream + self.path, headers=headers, data=body, timeout=30
        )
        content = response.content
        flip = self.server.flip
        later_part = ranged is not None and not ranged.startswith("bytes=0-") and len(content) > 10
        if self.command == "GET" and flip and path.endswith(flip) and later_part:
            content = content[:10] + bytes([content[10] ^ 0x01]) + content[11:]
        self._reply(response.status_code, dict(response.headers), content)

    def _reply(self, status: int, headers: dict[str, str], content: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(key, value)
        # a HEAD's Content-Length is the object's size (s3transfer cuts its ranges from it), not its empty body's
        length = headers.get("Content-Length", "0") if self.command == "HEAD" else str(len(content))
        self.send_header("Content-Length", length)
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


@pytest.fixture()
def proxy(moto: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingProxy]:  # noqa: F811
    server = RecordingProxy(moto)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def artifact(s3: Any) -> dict[str, bytes]:  # noqa: F811
    """An artifact of two 5 MiB shards and a small config, with its manifest, in the moto bucket."""
    files = {
        "model/model-00001-of-00002.safetensors": bytes(range(256)) * (5 * MIB // 256),
        "model/model-00002-of-00002.safetensors": bytes(reversed(range(256))) * (5 * MIB // 256) + b"tail",
        "model/config.json": b'{"architectures": ["LlamaForCausalLM"]}',
    }
    manifest = {
        "format": "byoc-artifact/1",
        "cache_key": "k1",
        "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()},
    }
    for name, data in files.items():
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{name}", Body=data)
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/manifest.json", Body=json.dumps(manifest).encode())
    return files


def fetch(target: Path, *extra: str) -> Any:
    return byoc(
        "artifacts", "fetch", "--from", f"s3://{BUCKET}/{PREFIX}", "--to", str(target), "--verify",
        "--part-mib", "1", "--concurrency", "8", *extra,
    )  # fmt: skip


def test_the_fetch_reads_ranges_in_parallel_and_places_a_verified_copy(
    artifact: dict[str, bytes], proxy: RecordingProxy, tmp_path: Path
) -> None:
    run = fetch(tmp_path / "models", "--output", "json")
    assert run.exit_code == 0, run.stderr
    for name, data in artifact.items():
        assert (tmp_path / "models" / name).read_bytes() == data
    assert run.result["concurrency"] == 8 and run.result["part_bytes"] == MIB
    shard = f"/{BUCKET}/{PREFIX}/model/model-00001-of-00002.safetensors"
    ranges = sorted(r for path, r in proxy.gets if path == shard and r)
    # five 1 MiB ranges, one per part, none of them the whole object
    assert len(ranges) == 5
    assert ranges[0] == "bytes=0-1048575" and ranges[-1] == "bytes=4194304-"  # the last runs to the end
    # nothing but the placed artifact is left in the target: the staging folder is gone
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["manifest.json", "model"]
    assert byoc("artifacts", "verify", str(tmp_path / "models")).exit_code == 0


def test_a_part_corrupted_on_the_way_is_caught_and_nothing_is_placed(
    artifact: dict[str, bytes], proxy: RecordingProxy, tmp_path: Path
) -> None:
    proxy.flip = "model-00002-of-00002.safetensors"
    run = fetch(tmp_path / "models")
    assert run.exit_code == 1
    assert "model/model-00002-of-00002.safetensors does not match the manifest" in run.stderr
    assert files_under(tmp_path / "models") == []  # a bad artifact is a clean failure: no staging kept


def test_a_fetch_cut_short_resumes_with_the_files_it_has(
    artifact: dict[str, bytes], proxy: RecordingProxy, tmp_path: Path
) -> None:
    proxy.deny = "model-00002-of-00002.safetensors"
    first = fetch(tmp_path / "models")
    assert first.exit_code == 1
    assert "access denied" in first.stderr
    assert not (tmp_path / "models" / "model").exists()  # nothing placed
    staged = [p.name for p in files_under(tmp_path / "models")]
    assert "model-00001-of-00002.safetensors" in staged  # kept for the next try
    proxy.deny = None
    proxy.gets.clear()
    second = fetch(tmp_path / "models", "--output", "json")
    assert second.exit_code == 0, second.stderr
    assert second.result["resumed_bytes"] == len(artifact["model/model-00001-of-00002.safetensors"]) + len(
        artifact["model/config.json"]
    )
    fetched = {path.rsplit("/", 1)[-1] for path, _ in proxy.gets}
    assert "model-00001-of-00002.safetensors" not in fetched  # not read again
    assert "model-00002-of-00002.safetensors" in fetched
    for name, data in artifact.items():
        assert (tmp_path / "models" / name).read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["manifest.json", "model"]


def test_the_benchmark_prints_both_ways_in_one_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--mib", "8", "--files", "2", "--part-mib", "1", "--concurrency", "4", "--repeat", "1"]
    assert bench_fetch.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["parts"] == 8 and result["concurrency"] == 4
    assert result["sequential"]["mb_per_s"] > 0 and result["parallel_ranged"]["mb_per_s"] > 0
    ratio = result["sequential"]["seconds"] / result["parallel_ranged"]["seconds"]
    assert result["speedup"] == pytest.approx(ratio, 0.05)
