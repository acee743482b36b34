"""`byoc serve gateway|engine|engine-stats|hash-key`: the serving runtime (runtime/serve/).

Only typer is imported here: aiohttp, prometheus_client and (for the engine) torch load inside the command that
runs, so `byoc --help` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from runtime.serve.config import Address


def _run_gateway(config_file: Path | None, flags: dict[str, object], drain_seconds: float = 30.0) -> None:
    from byoc.commands.common import Output, reporting
    from runtime.serve import logs, loop
    from runtime.serve.config import (
        GatewayConfig,
        build_config,
        parse_addon,
        parse_address,
        parse_peer_region,
        parse_upstream,
    )
    from runtime.serve.gateway import serve
    from runtime.serve.keys import load_keys
    from runtime.serve.listen import check_listen

    with reporting(Output.text):
        for name, flag in (("listen", "--listen"), ("metrics_listen", "--metrics-listen")):
            if isinstance(flags[name], str):
                flags[name] = parse_address(str(flags[name]), flag)
        flags["upstreams"] = tuple(parse_upstream(u) for u in flags.pop("upstream") or [])  # type: ignore[attr-defined]
        flags["addons"] = tuple(parse_addon(a) for a in flags.pop("addon") or [])  # type: ignore[attr-defined]
        flags["peer_regions"] = tuple(parse_peer_region(p) for p in flags.pop("peer_region") or [])  # type: ignore[attr-defined]
        if flags.get("store"):
            from byoc.extras import require

            require("store", "--store")
        config = build_config(config_file, flags)
        keys = load_keys(config.api_keys) if config.api_keys is not None else None
        settings = config.store_settings()
        if settings is not None:
            from runtime.serve.store import connect

            connect(settings).close()  # a store that does not answer now is an input error (exit 2 naming the flag)
        # named where the user set it: the flag, or the config file's setting (a default's port: the flag)
        defaults = GatewayConfig()
        named = {
            k: f"--config: {k}"
            if flags[k] is None and getattr(config, k) != getattr(defaults, k)
            else f"--{k.replace('_', '-')}"
            for k in ("listen", "metrics_listen")
        }
        listeners = [(config.listen, named["listen"])]
        if config.metrics_listen is not None:
            listeners.append((config.metrics_listen, named["metrics_listen"]))
        check_listen(listeners)
    logs.configure()
    _run_server(lambda: loop.run(serve(config, keys, drain_seconds)), listeners)


def _run_server(run: Callable[[], None], listeners: list[tuple[Address, str]]) -> None:
    """Run a server until it stops; an address lost after `check_listen` is one line and exit 1, not a traceback."""
    from byoc.commands.common import Output, reporting
    from runtime.serve.listen import bind_failure

    with reporting(Output.text):
        try:
            run()
        except OSError as exc:
            failure = bind_failure(exc, listeners)
            if failure is None:
                raise
            raise failure from None


def _needs_extra(group: str, command: str) -> None:
    """The servers need the runtime extra (their --help does not: click answers it before this runs)."""
    from byoc.commands.common import Output, reporting
    from byoc.extras import require

    with reporting(Output.text):
        require(group, command)


def gateway(
    listen: Annotated[str | None, typer.Option("--listen", help="HOST:PORT for the API [127.0.0.1:8080].")] = None,
    metrics_listen: Annotated[
        str | None, typer.Option("--metrics-listen", help="HOST:PORT serving /metrics too (for Prometheus).")
    ] = None,
    upstream: Annotated[
        list[str] | None,
        typer.Option(
            "--upstream",
            help="http://HOST:PORT of an engine (repeatable); dns+http://NAME:PORT = every address NAME "
            "resolves to (a headless Service).",
        ),
    ] = None,
    api_keys: Annotated[
        Path | None, typer.Option("--api-keys", help="Keys file: one key per line, or YAML from hash-key.")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="The base model id clients send.")] = None,
    addon: Annotated[
        list[str] | None, typer.Option("--addon", help="NAME=SOURCE: a LoRA addon clients select by NAME.")
    ] = None,
    max_context: Annotated[int | None, typer.Option("--max-context", help="Context window in tokens.")] = None,
    ttft_slo: Annotated[float | None, typer.Option("--ttft-slo", help="TTFT p95 objective (seconds).")] = None,
    rate_limit_rpm: Annotated[
        int | None, typer.Option("--rate-limit-rpm", help="Requests/minute per key (0 = unlimited).")
    ] = None,
    max_concurrency: Annotated[
        int | None, typer.Option("--max-concurrency", help="Requests forwarded at once, whole gateway [256].")
    ] = None,
    max_queue: Annotated[
        int | None, typer.Option("--max-queue", help="Requests waiting for a slot; more get 429 [512].")
    ] = None,
    queue_timeout: Annotated[
        float | None, typer.Option("--queue-timeout", help="Longest wait for a slot (seconds) [30].")
    ] = None,
    wake_timeout: Annotated[
        float | None,
        typer.Option("--wake-timeout", help="How long to hold requests while no engine is ready [300]."),
    ] = None,
    health_interval: Annotated[
        float | None, typer.Option("--health-interval", help="Seconds between upstream health checks [5].")
    ] = None,
    upstream_timeout: Annotated[
        float | None, typer.Option("--upstream-timeout", help="Longest silence from an engine (seconds) [600].")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML file of these settings (flags win).")] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option("--insecure-no-auth", help="Run without API keys (development only).")
    ] = False,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="PEM certificate (chain): serve the API over HTTPS.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key of --tls-cert.")] = None,
    routing: Annotated[
        str | None,
        typer.Option(
            "--routing",
            help="least_outstanding, approximate (prefixes sent to each replica) or precise (each replica's KV "
            "cache events) [least_outstanding].",
        ),
    ] = None,
    routing_tokenizer: Annotated[
        Path | None, typer.Option("--routing-tokenizer", help="The model's tokenizer folder (precise routing).")
    ] = None,
    routing_load_factor: Annotated[
        float | None,
        typer.Option(
            "--routing-load-factor", help="A replica takes cached prefixes while under this x mean load [1.25]."
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="redis://HOST:PORT or rediss:// (TLS): the store the gateway replicas share: per-key limits, "
            "budgets and keys, and the usage ledger (byoc usage) [none: limits in this process's memory].",
        ),
    ] = None,
    store_password_file: Annotated[
        Path | None, typer.Option("--store-password-file", help="File holding the store's AUTH token.")
    ] = None,
    store_ca_file: Annotated[
        Path | None, typer.Option("--store-ca-file", help="PEM CA of the store's TLS certificate (Memorystore).")
    ] = None,
    store_prefix: Annotated[
        str | None, typer.Option("--store-prefix", help="Prefix of every key written in the store [byoc:].")
    ] = None,
    store_lease_seconds: Annotated[
        float | None,
        typer.Option(
            "--store-lease-seconds", help="Lease of a concurrency slot: a killed gateway's slots free after it [10]."
        ),
    ] = None,
    replicas_hint: Annotated[
        int | None,
        typer.Option(
            "--replicas-hint",
            help="Gateway replicas to divide limits by if the store is down before any heartbeat was seen [1].",
        ),
    ] = None,
    gpus_per_replica: Annotated[
        int | None,
        typer.Option("--gpus-per-replica", help="GPUs of one model replica: the ledger's GPU-seconds [1]."),
    ] = None,
    # -- batch admission (issue 22) --
    batch_worker_token_file: Annotated[
        Path | None,
        typer.Option(
            "--batch-worker-token-file",
            help="File holding the batch worker's token: its requests are served as the batch's owner key, only "
            "into capacity online traffic leaves idle [no batch worker].",
        ),
    ] = None,
    batch_headroom: Annotated[
        int | None,
        typer.Option("--batch-headroom", help="Request slots batch work leaves free for online arrivals [2]."),
    ] = None,
    batch_slots_per_replica: Annotated[
        int | None,
        typer.Option(
            "--batch-slots-per-replica",
            help="The engine's max_batch_size: batch work fills at most this x ready replicas, less the headroom "
            "[0: --max-concurrency only].",
        ),
    ] = None,
    batch_preempt: Annotated[
        bool,
        typer.Option(
            "--batch-preempt",
            help="An online request ends the batch lines in flight (sent again later), and batch lines run only "
            "while no online request does: for compute-bound engines.",
        ),
    ] = False,
    batch_ttft_ratio: Annotated[
        float | None,
        typer.Option(
            "--batch-ttft-ratio",
            help="Batch lines in flight follow an AIMD limit that keeps online TTFT p90 within this x its value with "
            "no batch work [1.2; 0: off, the fixed --batch-headroom only].",
        ),
    ] = None,
    batch_ttft_window: Annotated[
        int | None,
        typer.Option("--batch-ttft-window", help="Online TTFT samples the batch limit's p90 is taken over [20]."),
    ] = None,
    batch_baseline_seconds: Annotated[
        float | None,
        typer.Option(
            "--batch-baseline-seconds",
            help="Oldest online TTFT sample with no batch work the baseline may use; older: batch pauses to "
            "re-measure it [60].",
        ),
    ] = None,
    batch_idle_seconds: Annotated[
        float | None,
        typer.Option(
            "--batch-idle-seconds",
            help="With no online request for this long, batch may use every slot less --batch-headroom [10].",
        ),
    ] = None,
    batch_store: Annotated[
        str | None,
        typer.Option(
            "--batch-store",
            help="s3://BUCKET/batch/ or gs://BUCKET/batch/: serve /v1/files and /v1/batches, files kept there "
            "[none: no Batch API].",
        ),
    ] = None,
    batch_kms_key: Annotated[
        str | None,
        typer.Option("--batch-kms-key", help="KMS key ARN (S3, SSE-KMS) or Cloud KMS key name (GCS) for batch files."),
    ] = None,
    batch_retention_hours: Annotated[
        int | None,
        typer.Option("--batch-retention-hours", help="Longest a batch file is kept, hours after its creation [24]."),
    ] = None,
    # -- regions and spill-over (issue 23) --
    region: Annotated[
        str | None, typer.Option("--region", help="The region this gateway serves in (e.g. eu-west-2).")
    ] = None,
    residency: Annotated[
        str | None,
        typer.Option(
            "--residency", help="The residency set (GLOBAL, US, EUROPE, APAC): requests never spill outside it."
        ),
    ] = None,
    peer_region: Annotated[
        list[str] | None,
        typer.Option(
            "--peer-region",
            help="REGION=https://HOST:PORT of another region's gateway (repeatable): takes requests this region "
            "cannot serve now.",
        ),
    ] = None,
    peer_ca_file: Annotated[
        Path | None, typer.Option("--peer-ca-file", help="PEM CA of the peer gateways' certificates [system CAs].")
    ] = None,
    spill_hold: Annotated[
        float | None,
        typer.Option(
            "--spill-hold",
            help="With no replica known (scale from zero), seconds to wait here before spilling to a peer [2].",
        ),
    ] = None,
    drain_seconds: Annotated[
        float,
        typer.Option(
            "--drain-seconds",
            min=1.0,
            help="On SIGTERM, how long requests in progress may take before the gateway ends them and exits.",
        ),
    ] = 30.0,
) -> None:
    """The OpenAI-compatible gateway: auth, limits, addon routing, metrics, scale-from-zero buffering."""
    _needs_extra("serve", "byoc serve gateway")
    flags: dict[str, object] = {
        "listen": listen,
        "metrics_listen": metrics_listen,
        "upstream": upstream,
        "api_keys": api_keys,
        "model": model,
        "addon": addon,
        "max_context": max_context,
        "ttft_slo": ttft_slo,
        "rate_limit_rpm": rate_limit_rpm,
        "max_concurrency": max_concurrency,
        "max_queue": max_queue,
        "queue_timeout": queue_timeout,
        "wake_timeout": wake_timeout,
        "health_interval": health_interval,
        "upstream_timeout": upstream_timeout,
        "insecure_no_auth": insecure_no_auth,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "routing": routing,
        "routing_tokenizer": routing_tokenizer,
        "routing_load_factor": routing_load_factor,
        "store": store,
        "store_password_file": store_password_file,
        "store_ca_file": store_ca_file,
        "store_prefix": store_prefix,
        "store_lease_seconds": store_lease_seconds,
        "replicas_hint": replicas_hint,
        "gpus_per_replica": gpus_per_replica,
        "batch_worker_token_file": batch_worker_token_file,
        "batch_headroom": batch_headroom,
        "batch_slots_per_replica": batch_slots_per_replica,
        "batch_preempt": batch_preempt or None,
        "batch_ttft_ratio": batch_ttft_ratio,
        "batch_ttft_window": batch_ttft_window,
        "batch_baseline_seconds": batch_baseline_seconds,
        "batch_idle_seconds": batch_idle_seconds,
        "batch_store": batch_store,
        "batch_kms_key": batch_kms_key,
        "batch_retention_hours": batch_retention_hours,
        "region": region,
        "residency": residency,
        "peer_region": peer_region,
        "peer_ca_file": peer_ca_file,
        "spill_hold": spill_hold,
    }
    _run_gateway(config, flags, drain_seconds)


def engine(
    model_dir: Annotated[Path, typer.Option("--model-dir", help="A Hugging Face model folder.")],
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT.")] = "127.0.0.1:8000",
    addon: Annotated[list[str] | None, typer.Option("--addon", help="NAME=DIR of a PEFT LoRA adapter.")] = None,
    model_name: Annotated[
        str | None, typer.Option("--model-name", help="The id /v1/models shows [the --model-dir path].")
    ] = None,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", min=1, help="Sequences at once.")] = 8,
    max_context: Annotated[
        int | None, typer.Option("--max-context", min=2, help="Context window [the model's].")
    ] = None,
    kv_cache_tokens: Annotated[
        int, typer.Option("--kv-cache-tokens", min=32, help="KV cache budget in tokens (for the stats).")
    ] = 65536,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads.")] = None,
    enable_block_reuse: Annotated[
        bool,
        typer.Option(
            "--enable-block-reuse/--disable-block-reuse",
            help="Keep prompt KV blocks and reuse them for requests that share a prefix (trtllm's enable_block_reuse).",
        ),
    ] = True,
    event_buffer_max_size: Annotated[
        int,
        typer.Option(
            "--event-buffer-max-size", min=1, help="KV cache events kept until POST /kv_cache_events reads them."
        ),
    ] = 4096,
    max_loras: Annotated[
        int | None,
        typer.Option("--max-loras", min=1, help="LoRA adapters resident at once (trtllm's max_loras) [all]."),
    ] = None,
    max_lora_rank: Annotated[
        int, typer.Option("--max-lora-rank", min=1, help="Highest adapter rank accepted (trtllm's max_lora_rank).")
    ] = 64,
) -> None:
    """A CPU engine speaking trtllm-serve's API with a real model (for development and tests)."""
    _needs_extra("runtime", "byoc serve engine")
    import asyncio

    from byoc.commands.common import Output, reporting
    from byoc.errors import ByocError
    from runtime.serve import logs
    from runtime.serve.config import parse_address, parse_engine_addons
    from runtime.serve.generation import refuse_quantized
    from runtime.serve.listen import check_listen

    name = model_name or str(model_dir)
    with reporting(Output.text):
        address = parse_address(listen, "--listen")
        if not (model_dir / "config.json").is_file():
            raise ByocError("--model-dir", f"{model_dir} holds no config.json", "give a Hugging Face model folder")
        refuse_quantized(model_dir)
        addons = parse_engine_addons(addon or [], name)
        check_listen([(address, "--listen")])  # before the model loads: a taken port fails in a second, not a minute
    logs.configure()
    from runtime.serve.engine import serve as serve_engine
    from runtime.serve.generation import Generator, cpu_threads_default

    generator = Generator(
        model_dir,
        addons,
        name,
        max_batch_size,
        kv_cache_tokens,
        threads or cpu_threads_default(),
        enable_block_reuse=enable_block_reuse,
        event_buffer_max_size=event_buffer_max_size,
        max_loras=max_loras,
        max_lora_rank=max_lora_rank,
    )
    if max_context is not None:
        generator.max_context = min(max_context, generator.max_context)
    try:
        _run_server(lambda: asyncio.run(serve_engine(generator, name, address)), [(address, "--listen")])
    finally:
        generator.stop()


def engine_stats(
    engine_url: Annotated[str, typer.Option("--engine", help="trtllm-serve's base URL.")] = "http://127.0.0.1:8000",
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT serving /metrics.")] = "0.0.0.0:9091",
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between polls.")] = 2.0,
) -> None:
    """Re-export trtllm-serve's JSON iteration stats (KV cache use, queue) as Prometheus gauges."""
    _needs_extra("serve", "byoc serve engine-stats")
    import asyncio

    from byoc.commands.common import Output, reporting
    from byoc.errors import ByocError
    from runtime.serve import logs
    from runtime.serve.config import parse_address
    from runtime.serve.engine_stats import serve as serve_stats
    from runtime.serve.listen import check_listen

    with reporting(Output.text):
        address = parse_address(listen, "--listen")
        if not engine_url.startswith(("http://", "https://")):
            raise ByocError("--engine", f"{engine_url!r} is not an http URL", "e.g. http://127.0.0.1:8000")
        check_listen([(address, "--listen")])
    logs.configure()
    _run_server(lambda: asyncio.run(serve_stats(engine_url, address, interval)), [(address, "--listen")])


def hash_key(
    name: Annotated[str, typer.Option("--name", help="The key's name (it appears in the access log).")],
    rpm: Annotated[int | None, typer.Option("--rpm", min=0, help="Requests per minute for this key.")] = None,
    tpm: Annotated[
        int | None, typer.Option("--tpm", min=0, help="Tokens (prompt + completion) per minute for this key.")
    ] = None,
    max_concurrency: Annotated[
        int | None, typer.Option("--max-concurrency", min=0, help="Requests in progress at once for this key.")
    ] = None,
) -> None:
    """Read an API key on stdin and print its keys.yaml entry (only the SHA-256 of the key)."""
    import sys

    from byoc.commands.common import Output, reporting
    from byoc.errors import ByocError
    from runtime.serve.keys import check_key_name, hash_key_entry

    with reporting(Output.text):
        check_key_name(name)  # before the key is asked for
        key = typer.prompt("API key", hide_input=True) if sys.stdin.isatty() else sys.stdin.readline().rstrip("\r\n")
        if not key.strip():
            raise ByocError("stdin", "no key was given", "pipe the key in: `byoc serve hash-key --name ci < key.txt`")
        if len(key) < 16:
            raise ByocError(
                "stdin", "the key is shorter than 16 characters", "use a random key, e.g. `openssl rand -hex 24`"
            )
        if any(c.isspace() or not c.isprintable() for c in key.strip()):
            # the gateway would take it, but no client could send it: BYOC_API_KEY (`byoc addons`, `byoc status`)
            # refuses whitespace, and HTTP clients strip or reject it in an Authorization header
            raise ByocError(
                "stdin",
                "the key on stdin holds whitespace or a control character, and a key is one word",
                "use a random key, e.g. `openssl rand -hex 24`",
            )
        entry = hash_key_entry(name, key.strip(), rpm, max_concurrency, tpm=tpm)
    print(entry, end="")


def register(app: typer.Typer) -> None:
    serve = typer.Typer(
        rich_markup_mode=None,
        help="Run the serving runtime: the OpenAI-compatible gateway, the CPU reference engine.",
        no_args_is_help=True,
    )
    app.add_typer(serve, name="serve")

    serve.command("gateway")(gateway)
    serve.command("engine")(engine)
    serve.command("engine-stats")(engine_stats)
    serve.command("hash-key")(hash_key)
