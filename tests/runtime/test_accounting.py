"""What the gateway counts and logs is complete: token usage on every stream, and every access line written before
the process exits on SIGTERM (a rolling update must never drop audit lines)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import openai

from tests.runtime.conftest import ENGINE_MODEL, Server, metric, start_gateway, wait_for


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _access(server: Server) -> list[str]:
    return [line for line in server.log.read_text().splitlines() if " byoc.gateway.access " in line]


def test_a_stream_without_include_usage_is_still_counted(engine: Server, runtime_dir: Path) -> None:
    # the gateway's --model is the engine's own name: the path where the client's bytes go upstream unchanged
    gateway = start_gateway(runtime_dir, [engine.url], "--model", ENGINE_MODEL)
    try:
        chunks = list(
            client(gateway).chat.completions.create(
                model=ENGINE_MODEL,
                messages=[{"role": "user", "content": "Hello"}],
                max_tokens=5,
                stream=True,
                extra_body={"ignore_eos": True},
            )
        )
        assert all(c.usage is None for c in chunks)  # the client did not ask for usage and gets none
        list(
            client(gateway).completions.create(
                model=ENGINE_MODEL,
                prompt="One two",
                max_tokens=5,
                stream=True,
                stream_options={"include_usage": False},
                extra_body={"ignore_eos": True},
            )
        )
        wait_for(lambda: len(_access(gateway)) == 2, timeout=5, what="two access lines")
        for line in _access(gateway):
            assert "stream=1" in line and "output_tokens=5" in line, line
            assert int(re.search(r"prompt_tokens=(\d+)", line).group(1)) > 0, line  # type: ignore[union-attr]
        text = gateway.metrics()
        assert metric(text, "byoc_gateway_output_tokens_total", model=ENGINE_MODEL, addon="base") == 10
        assert (metric(text, "byoc_gateway_prompt_tokens_total", model=ENGINE_MODEL, addon="base") or 0) > 0
    finally:
        gateway.stop()


def test_sigterm_flushes_every_access_line(engine: Server, runtime_dir: Path) -> None:
    for trial in range(3):
        gateway = start_gateway(runtime_dir, [engine.url], "--model", ENGINE_MODEL)
        try:
            for _ in range(trial + 1):
                client(gateway).completions.create(model=ENGINE_MODEL, prompt="One", max_tokens=1)
            gateway.process.send_signal(signal.SIGTERM)  # at once: the last line is still in the batch
            assert gateway.process.wait(timeout=30) == 0
        finally:
            gateway.stop()
        lines = _access(gateway)
        assert len(lines) == trial + 1, f"trial {trial}: {len(lines)} access lines of {trial + 1}"
        assert all("status=200" in line for line in lines)
