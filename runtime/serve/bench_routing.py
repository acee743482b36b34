"""Routing benchmarks: `python -m runtime.serve.bench --scenario shared-prefix` (and `--scenario multi-addon`).

shared-prefix: several CPU-engine replicas (`byoc serve engine`) behind the real gateway (`byoc serve gateway`), all on
127.0.0.1, with a model made here (a Llama with random weights, large enough that a prefill of a few thousand tokens
takes a large part of a second on one CPU core, and a BPE tokenizer trained in code on generated words: nothing is
downloaded). A multi-tenant workload: each tenant has a long system prompt of its own; requests are a tenant's system
prompt and a short question, streamed, arriving at a steady rate for a bounded count. Each routing mode runs back to
back on fresh replicas (cold caches), the same workload. Per mode: TTFT p50/p90, end-to-end p50, throughput
(answered requests per second from the first arrival to the last answer), prefix hit rate (the engines' reused /
(reused + missed) KV blocks) and requests per replica.

`--gateways N` runs N gateway processes in front of the same replicas and sends request i to gateway i mod N, as a
Kubernetes Service spreads clients over the gateway replicas the HPA runs; each gateway keeps its own routing state.

multi-addon: the same replicas with `--max-loras 2` (two adapters resident at once, as trtllm's lora_config.max_loras)
and six LoRA addons; requests pick an addon at random; per mode: latencies and the adapter loads per replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL = "bench-llama"
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "de", "fo", "gi", "ha", "ju", "be", "co"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MODES = ("least_outstanding", "approximate", "precise")


@dataclass(frozen=True)
class Workload:
    replicas: int = 3
    tenants: int = 8
    system_words: int = 900  # ~1,200 tokens of system prompt per tenant (a 6-layer model: ~0.6 s of prefill)
    question_words: int = 12
    output_tokens: int = 8
    requests: int = 240
    rate: float = 1.2  # requests per second, evenly spaced
    kv_cache_tokens: int = 5120  # per replica: the system prompts of about four tenants (half of them)
    seed: int = 16


# -- the model, made here ----------------------------------------------------------------------------------------
def _words(rng: random.Random, count: int) -> list[str]:
    return ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(count)]


def make_model(folder: Path, seed: int = 0) -> Path:
    """A 6-layer Llama (hidden 384) with random weights and a BPE tokenizer trained on generated words."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    corpus = [" ".join(_words(rng, 40)) + "." for _ in range(400)]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=special[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=384,
        intermediate_size=1024,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def make_adapters(base: Path, folder: Path, count: int) -> dict[str, Path]:
    """`count` LoRA adapters (rank 8 on q/v, random weights) for the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapters = {}
    for i in range(count):
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_pretrained(base)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        path = folder / f"tenant-{i}"
        get_peft_model(model, config).save_pretrained(str(path))
        adapters[f"tenant-{i}"] = path
    return adapters


# -- processes ---------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, process: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def _byoc(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "byoc", "serve", *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _sample(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rpartition(" ")[2])
    return total


@dataclass
class Replica:
    url: str
    process: subprocess.Popen[bytes]

    def counters(self) -> dict[str, float]:
        text = _get(self.url + "/prometheus/metrics")
        return {
            "served": _sample(text, "trtllm_request_success_total"),
            "reused": _sample(text, "trtllm_kv_cache_reused_blocks_total"),
            "missed": _sample(text, "trtllm_kv_cache_missed_blocks_total"),
            "adapter_loads": _sample(text, "byoc_engine_lora_adapter_loads_total"),
        }


# -- load --------------------------------------------------------------------------------------------------------
@dataclass
class Request:
    at: float  # seconds after the start
    messages: list[dict[str, str]]
    model: str


@dataclass
class Result:
    ttft: float | None
    e2e: float
    ok: bool


async def _one(session: Any, url: str, request: Request, output_tokens: int, started: float) -> Result:
    import aiohttp

    await asyncio.sleep(max(0.0, started + request.at - time.perf_counter()))
    sent = time.perf_counter()
    body = {
        "model": request.model,
        "messages": request.messages,
        "max_tokens": output_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    first: float | None = None
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                await response.read()
                return Result(None, time.perf_counter() - sent, False)
            async for chunk in response.content.iter_any():
                if first is None and chunk.strip():
                    first = time.perf_counter()
    except (aiohttp.ClientError, TimeoutError):
        return Result(None, time.perf_counter() - sent, False)
    done = time.perf_counter()
    return Result(None if first is None else first - sent, done - sent, first is not None)


async def _drive(urls: list[str], requests: list[Request], output_tokens: int) -> tuple[list[Result], float]:
    """Send the requests at their times, request i to urls[i mod len(urls)]."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(_one(session, urls[i % len(urls)], r, output_tokens, started) for i, r in enumerate(requests))
        )
        return list(results), time.perf_counter() - started


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def run_mode(
    mode: str,
    model_dir: Path,
    folder: Path,
    workload: Workload,
    requests: list[Request],
    engine_extra: list[str],
    gateways: int = 1,
) -> dict[str, Any]:
    """One routing mode on fresh replicas: start them and the gateways, send the workload, read the counters."""
    processes: list[subprocess.Popen[bytes]] = []
    replicas: list[Replica] = []
    try:
        for _ in range(workload.replicas):
            port = _free_port()
            args = ["engine", "--model-dir", str(model_dir), "--listen", f"127.0.0.1:{port}", "--model-name", MODEL]
            args += ["--threads", "1", "--kv-cache-tokens", str(workload.kv_cache_tokens), *engine_extra]
            process = _byoc(args, folder / f"engine-{mode}-{port}.log")
            processes.append(process)
            replicas.append(Replica(f"http://127.0.0.1:{port}", process))
        for replica in replicas:
            _wait(replica.url + "/health", replica.process)
        urls = []
        for g in range(gateways):
            port = _free_port()
            args = ["gateway", "--listen", f"127.0.0.1:{port}", "--model", MODEL, "--insecure-no-auth"]
            args += ["--max-context", "4096", "--routing", mode, "--health-interval", "1"]
            args += ["--max-concurrency", "1024", "--upstream-timeout", "600"]
            if mode == "precise":
                args += ["--routing-tokenizer", str(model_dir)]
            for replica in replicas:
                args += ["--upstream", replica.url]
            gateway = _byoc(args, folder / f"gateway-{mode}-{g}.log")
            processes.append(gateway)
            _wait(f"http://127.0.0.1:{port}/ready", gateway)
            urls.append(f"http://127.0.0.1:{port}/v1/chat/completions")
        # warm each replica's torch kernels with a prompt shorter than one KV block (nothing is cached)
        warm = Request(0.0, [{"role": "user", "content": "ka lo mi"}], requests[0].model)
        for replica in replicas:
            asyncio.run(_drive([replica.url + "/v1/chat/completions"], [warm], 2))
        before = [r.counters() for r in replicas]
        results, elapsed = asyncio.run(_drive(urls, requests, workload.output_tokens))
        after = [r.counters() for r in replicas]
    finally:
        _stop(processes)
    delta = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)]
    ok = [r for r in results if r.ok]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    reused = sum(d["reused"] for d in delta)
    missed = sum(d["missed"] for d in delta)
    return {
        "answered": len(ok),
        "failed": len(results) - len(ok),
        "ttft_ms": {"p50": _ms(_quantile(ttfts, 0.5)), "p90": _ms(_quantile(ttfts, 0.9))},
        "e2e_ms": {"p50": _ms(_quantile([r.e2e for r in ok], 0.5)), "p90": _ms(_quantile([r.e2e for r in ok], 0.9))},
        "throughput_rps": round(len(ok) / elapsed, 3),
        "prefix_hit_rate": round(reused / (reused + missed), 3) if reused + missed else 0.0,
        "requests_per_replica": [int(d["served"]) for d in delta],
        "adapter_loads_per_replica": [int(d["adapter_loads"]) for d in delta],
    }


def shared_prefix_workload(workload: Workload) -> list[Request]:
    rng = random.Random(workload.seed)
    systems = [" ".join(_words(rng, workload.system_words)) for _ in range(workload.tenants)]
    requests = []
    for i in range(workload.requests):
        tenant = rng.randrange(workload.tenants)
        question = " ".join(_words(rng, workload.question_words)) + "?"
        messages = [{"role": "system", "content": systems[tenant]}, {"role": "user", "content": question}]
        requests.append(Request(i / workload.rate, messages, MODEL))
    return requests


def multi_addon_workload(workload: Workload, addons: list[str]) -> list[Request]:
    rng = random.Random(workload.seed + 1)
    requests = []
    for i in range(workload.requests):
        question = " ".join(_words(rng, 40)) + "?"
        requests.append(Request(i / workload.rate, [{"role": "user", "content": question}], rng.choice(addons)))
    return requests


def _machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "load_average_1m_at_start": round(load[0], 2)}


def benchmark(scenario: str, workload: Workload, modes: tuple[str, ...] = MODES, gateways: int = 1) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="byoc-bench-routing-"))
    machine = _machine()
    try:
        model_dir = make_model(folder / "model")
        if scenario == "shared-prefix":
            requests = shared_prefix_workload(workload)
            engine_extra: list[str] = []
        else:
            adapters = make_adapters(model_dir, folder / "adapters", 6)
            requests = multi_addon_workload(workload, list(adapters))
            engine_extra = ["--max-loras", "2"]
            for name, path in adapters.items():
                engine_extra += ["--addon", f"{name}={path}"]
        per_mode = {
            mode: run_mode(mode, model_dir, folder, workload, requests, engine_extra, gateways) for mode in modes
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result: dict[str, Any] = {
        "command": f"python -m runtime.serve.bench --scenario {scenario} --gateways {gateways}",
        "gateways": gateways,
        "machine": {**machine, "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
        "workload": workload.__dict__,
        "modes": per_mode,
    }
    base, best = per_mode.get("least_outstanding"), per_mode.get("precise")
    if scenario == "shared-prefix" and base and best and best["ttft_ms"]["p90"]:
        result["precise_vs_least_outstanding"] = {
            "ttft_p90_lower_by": round(base["ttft_ms"]["p90"] / best["ttft_ms"]["p90"], 2),
            "throughput_ratio": round(best["throughput_rps"] / base["throughput_rps"], 3),
            "target_met": base["ttft_ms"]["p90"] >= 2 * best["ttft_ms"]["p90"]
            and best["throughput_rps"] >= base["throughput_rps"],
        }
    return result


def main(
    scenario: str, requests: int | None, rate: float | None, gateways: int = 1, modes: tuple[str, ...] = MODES
) -> None:
    workload = Workload()
    if requests is not None:
        workload = Workload(**{**workload.__dict__, "requests": requests})
    if rate is not None:
        workload = Workload(**{**workload.__dict__, "rate": rate})
    print(json.dumps(benchmark(scenario, workload, modes, gateways), indent=2))
