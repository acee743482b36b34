"""The gateway's API over TLS: the official client through HTTPS with the deployment's certificate."""

from __future__ import annotations

import contextlib
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from tests.conftest import ROOT
from tests.runtime.conftest import KEYS, MODEL, Server, start_gateway


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def wait_https(server: Server, trust: Path, timeout: float = 60.0) -> str:
    url = f"https://127.0.0.1:{server.port}"
    context = ssl.create_default_context(cafile=str(trust))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.log.read_text()
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/ready", context=context, timeout=2) as answer:
            if answer.status == 200:
                return url
        time.sleep(0.2)
    raise AssertionError(server.log.read_text())


def test_the_api_is_served_over_tls(
    engine: Server, keys_file: Path, runtime_dir: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    server = start_gateway(
        runtime_dir, [engine.url], "--tls-cert", str(cert), "--tls-key", str(key), keys=keys_file, wait=False
    )
    try:
        url = wait_https(server, cert)
        client = openai.OpenAI(
            base_url=url + "/v1",
            api_key=KEYS["ci"],
            max_retries=0,
            timeout=60,
            http_client=openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(cert))),
        )
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0
        )
        assert reply.choices[0].message.content
        # a client that does not trust the deployment's certificate refuses the connection
        untrusting = openai.OpenAI(base_url=url + "/v1", api_key=KEYS["ci"], max_retries=0, timeout=10)
        with pytest.raises(openai.APIConnectionError):
            untrusting.models.list()
        # and plain HTTP to the TLS port gets no answer
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=5)
    finally:
        server.stop()


def refused(keys_file: Path, *tls: str) -> str:
    """Start the gateway with these TLS flags; it must refuse at once (exit 2, one message, no traceback)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "byoc",
            "serve",
            "gateway",
            "--upstream",
            "http://127.0.0.1:9",
            "--api-keys",
            str(keys_file),
            *tls,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    return result.stderr


def test_tls_flags_come_together(keys_file: Path, certificate: tuple[Path, Path]) -> None:
    cert, _ = certificate
    assert "--tls-key" in refused(keys_file, "--tls-cert", str(cert))


def test_a_bad_certificate_is_an_input_error(keys_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    assert "--tls-cert" in refused(keys_file, "--tls-cert", str(bad), "--tls-key", str(bad))
