"""Gateway settings: command-line flags, an optional YAML file (`--config`), and their validation.

Every check raises `ByocError` naming the flag and a fix, so `byoc serve gateway` exits 2 with one message.
"""

from __future__ import annotations

import ssl
import zlib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from byoc.errors import ByocError

# trtllm-serve's container mounts each addon's adapter under this folder (runtime/model_build/plan.py ADAPTER_DIR).
ADAPTER_ROOT = "/models/adapters"


# How the gateway picks a replica (runtime/serve/routing.py): by load only, by the prompt prefixes it sent each
# replica, or by the KV cache blocks each replica reports (`POST /kv_cache_events`).
RoutingMode = Literal["least_outstanding", "approximate", "precise"]
ROUTING_MODES: tuple[str, ...] = get_args(RoutingMode)


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class UpstreamSpec:
    """`http://host:port` is one replica; `dns+http://host:port` is every A record of host (a headless Service)."""

    scheme: str  # "http" or "dns+http"
    host: str
    port: int

    @property
    def discovered(self) -> bool:
        return self.scheme == "dns+http"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True)
class Addon:
    """A LoRA addon: clients select it with `model: NAME`; upstream it becomes trtllm's `lora_request`."""

    name: str
    lora_int_id: int
    lora_path: str
    source: str = ""

    def lora_request(self) -> dict[str, Any]:
        return {"lora_name": self.name, "lora_int_id": self.lora_int_id, "lora_path": self.lora_path}


@dataclass(frozen=True)
class PeerRegion:
    """`--peer-region REGION=URL`: the gateway of another region of the same deployment, that takes this region's
    requests when it has no ready replica or is saturated (runtime/serve/peers.py)."""

    region: str
    url: str  # scheme://host:port, no trailing slash

    def __str__(self) -> str:
        return f"{self.region}={self.url}"


def lora_int_id(name: str) -> int:
    """Stable across gateway replicas and restarts (trtllm caches adapters by this id), whatever the flag order."""
    return zlib.crc32(name.encode()) % 1_000_000 + 1


@dataclass(frozen=True)
class GatewayConfig:
    listen: Address = Address("127.0.0.1", 8080)
    metrics_listen: Address | None = None
    upstreams: tuple[UpstreamSpec, ...] = ()
    api_keys: Path | None = None
    insecure_no_auth: bool = False
    model: str = "default"
    addons: tuple[Addon, ...] = ()
    max_context: int = 8192
    ttft_slo: float = 2.0
    rate_limit_rpm: int = 0
    max_concurrency: int = 256
    max_queue: int = 512
    queue_timeout: float = 30.0
    wake_timeout: float = 300.0
    health_interval: float = 5.0
    upstream_timeout: float = 600.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # OpenAI's hosted API takes 4 stop sequences; trtllm-serve and the CPU engine have no limit of their own. A
    # bound still keeps per-token stop matching cheap (--config: max_stop_sequences).
    max_stop_sequences: int = 16
    routing: RoutingMode = "least_outstanding"
    routing_tokenizer: Path | None = None  # precise routing: the model's tokenizer folder (the engine's tokens)
    routing_load_factor: float = 1.25  # a replica takes a cached prefix while under this x the mean load
    # the store the gateway replicas share (Redis or Valkey): per-key limits, budgets and keys
    # (runtime/serve/store.py) and the usage ledger (runtime/serve/ledger.py); None: limits in this process's memory,
    # no ledger
    store: str | None = None
    store_password_file: Path | None = None
    store_ca_file: Path | None = None
    store_prefix: str = "byoc:"
    store_lease_seconds: float = 10.0  # a concurrency slot's lease: how long a killed gateway's slots stay taken
    replicas_hint: int = 1  # the divisor of each limit if the store is down before any heartbeat was seen
    gpus_per_replica: int = 1  # GPU-seconds = a request's share of its replica's busy time x this
    # -- batch admission (issue 22: runtime/serve/batch/worker.py sends each batch line through the gateway) --
    # the batch worker's token (a Kubernetes Secret the gateway and the worker mount): a request bearing it and
    # layout.OWNER_HEADER is served as that key, in the batch admission class (Gateway._batch_admit)
    batch_worker_token_file: Path | None = None
    # request slots batch work leaves free for online arrivals, below the capacity (docs/performance.md measures it)
    batch_headroom: int = 2
    # the engine's max_batch_size: batch capacity = min(--max-concurrency, this x ready replicas); 0: the first only
    batch_slots_per_replica: int = 0
    # an online request that starts ends every batch line in flight (429 batch_yield; the worker sends it again), and
    # batch lines are admitted only while no online request is in flight: for compute-bound engines (the CPU engine)
    batch_preempt: bool = False
    # the TTFT-guarded limit on batch lines in flight (runtime/serve/batch/limit.py): online TTFT p90 may be this x its
    # baseline with no batch work (0: off, the fixed headroom only), over this many online samples; the baseline's
    # oldest sample; and how long without online requests before batch may use every slot up to the headroom
    batch_ttft_ratio: float = 1.2
    batch_ttft_window: int = 20
    batch_baseline_seconds: float = 60.0
    batch_idle_seconds: float = 10.0
    # the Batch API (runtime/serve/batch/): its root in the deployment's bucket (None: no /v1/files, /v1/batches), the
    # key its objects are encrypted with (SSE-KMS on S3, CMEK on GCS), and the longest a batch file is kept
    batch_store: str | None = None
    batch_kms_key: str | None = None
    batch_retention_hours: int = 24
    # -- regions and spill-over (issue 23: runtime/serve/peers.py) --
    region: str | None = None  # the region this gateway serves in (a region id of byoc/catalogs/regions.yaml)
    residency: str | None = None  # the residency set: GLOBAL, US, EUROPE or APAC; peers must all belong to it
    peer_regions: tuple[PeerRegion, ...] = ()  # the gateways of the deployment's other regions
    peer_ca_file: Path | None = None  # PEM CA that signed the peers' certificates (None: the system's CAs)
    # with no replica ready, how long a request waits for one here before it spills to a peer (a wake from zero takes
    # minutes: docs/estimates.md); once one request has spilled, the next spill at once until a replica is ready
    spill_hold: float = 2.0

    def store_settings(self) -> Any:
        """The store's settings (runtime/serve/store.py StoreSettings), or None without --store."""
        if self.store is None:
            return None
        try:
            from runtime.serve.store import StoreSettings
        except ModuleNotFoundError as exc:
            raise ByocError(
                "--store", f"needs the {exc.name} package", "install byoc's runtime extra (it brings redis)"
            ) from None

        return StoreSettings(self.store, self.store_password_file, self.store_ca_file, self.store_prefix)

    def batch_worker_digest(self) -> bytes | None:
        """The SHA-256 of the batch worker's token (--batch-worker-token-file), or None without the flag.

        Raises ByocError when the file cannot be read or holds less than a 16-character token."""
        path = self.batch_worker_token_file
        if path is None:
            return None
        import hashlib

        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ByocError(
                "--batch-worker-token-file", f"cannot read {path}: {type(exc).__name__}", "mount the worker's Secret"
            ) from None
        if len(token) < 16 or any(c.isspace() for c in token):
            raise ByocError(
                "--batch-worker-token-file",
                f"{path} does not hold one token of at least 16 characters",
                "write a random token, e.g. `openssl rand -hex 32 > token`",
            )
        return hashlib.sha256(token.encode()).digest()

    def ssl_context(self) -> ssl.SSLContext | None:
        """The API listener's TLS (TLS 1.2 or newer), or None for plain HTTP."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ByocError(
                "--tls-cert",
                f"cannot load {self.tls_cert} with {self.tls_key}: {exc}",
                "give a PEM certificate and its key",
            ) from None
        return context

    def validate(self) -> GatewayConfig:
        if not self.upstreams:
            raise ByocError(
                "--upstream", "no upstream given", "pass --upstream http://HOST:PORT (repeatable) or dns+http://..."
            )
        if self.api_keys is None and not self.insecure_no_auth:
            raise ByocError(
                "--api-keys",
                "the gateway refuses to start without API keys",
                "pass --api-keys FILE (build it with `byoc serve hash-key`), or --insecure-no-auth on a trusted "
                "development machine only",
            )
        checks: list[tuple[str, bool, str]] = [
            ("--max-context", self.max_context >= 1, "a positive number of tokens, e.g. 16384"),
            ("--ttft-slo", self.ttft_slo > 0, "a positive number of seconds, e.g. 2.0"),
            ("--rate-limit-rpm", self.rate_limit_rpm >= 0, "0 (unlimited) or a positive requests/minute"),
            ("--max-concurrency", self.max_concurrency >= 1, "at least 1"),
            ("--max-queue", self.max_queue >= 0, "0 (no queue) or more"),
            ("--queue-timeout", self.queue_timeout > 0, "a positive number of seconds"),
            ("--wake-timeout", self.wake_timeout >= 0, "0 (fail at once) or seconds to hold requests"),
            ("--health-interval", self.health_interval > 0, "a positive number of seconds"),
            ("--upstream-timeout", self.upstream_timeout > 0, "a positive number of seconds"),
            ("--config: max_stop_sequences", 1 <= self.max_stop_sequences <= 1024, "from 1 to 1024, e.g. 16"),
            ("--store-lease-seconds", 1.0 <= self.store_lease_seconds <= 3600, "from 1 to 3600 seconds, e.g. 10"),
            ("--replicas-hint", 1 <= self.replicas_hint <= 1000, "the usual gateway replica count, 1 to 1000"),
            (
                "--batch-headroom",
                self.batch_headroom >= 0
                and (self.batch_worker_token_file is None or self.batch_headroom < self.max_concurrency),
                "from 0 to --max-concurrency - 1",
            ),
            ("--batch-slots-per-replica", 0 <= self.batch_slots_per_replica <= 4096, "the engine's max_batch_size"),
            (
                "--batch-ttft-ratio",
                self.batch_ttft_ratio == 0 or 1.0 < self.batch_ttft_ratio <= 10.0,
                "0 (off: the fixed headroom only) or above 1 up to 10, e.g. 1.2",
            ),
            ("--batch-ttft-window", 5 <= self.batch_ttft_window <= 10_000, "from 5 to 10000 online samples, e.g. 20"),
            ("--batch-baseline-seconds", 1.0 <= self.batch_baseline_seconds <= 86_400, "from 1 to 86400, e.g. 60"),
            ("--batch-idle-seconds", 0.1 <= self.batch_idle_seconds <= 86_400, "from 0.1 to 86400, e.g. 10"),
        ]
        for flag, ok, hint in checks:
            if not ok:
                raise ByocError(flag, "out of range", hint)
        if self.routing not in ROUTING_MODES:
            raise ByocError("--routing", f"unknown routing mode {self.routing!r}", f"one of {', '.join(ROUTING_MODES)}")
        if self.routing == "precise" and self.routing_tokenizer is None:
            raise ByocError(
                "--routing-tokenizer",
                "precise routing tokenizes prompts as the engine does, and needs the model's tokenizer",
                "pass --routing-tokenizer DIR (the model folder, or any folder with its tokenizer files)",
            )
        if self.routing_tokenizer is not None and not self.routing_tokenizer.is_dir():
            raise ByocError("--routing-tokenizer", f"{self.routing_tokenizer} is not a folder", "give the model folder")
        if not 1.0 <= self.routing_load_factor <= 10.0:
            raise ByocError("--routing-load-factor", "out of range", "from 1.0 to 10.0, e.g. 1.25")
        if self.store is not None:
            from byoc.extras import require
            from runtime.serve.ledger import check_store

            require("store", "--store")
            check_store(self.store, self.store_password_file, self.store_ca_file)
        elif self.store_password_file is not None or self.store_ca_file is not None:
            raise ByocError("--store", "a store file is given without --store", "pass --store redis://HOST:6379 too")
        if not 1 <= self.gpus_per_replica <= 64:
            raise ByocError("--gpus-per-replica", "out of range", "the GPUs of one model replica, from 1 to 64")
        self._check_batch()
        self.residency_regions()  # --region, --residency, --peer-region and --peer-ca-file, checked together
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ByocError(
                "--tls-cert", "--tls-cert and --tls-key go together", "give both, or neither for plain HTTP"
            )
        self.ssl_context()  # a bad certificate is an input error now, not a crash at the first connection
        if self.store is not None:
            self.store_settings().check()  # the limiter's own rules too: no password in the URL, the prefix
        if self.batch_worker_token_file is not None:
            self.batch_worker_digest()  # an unreadable or short token is an input error now
        names = [a.name for a in self.addons]
        if self.model in names:
            raise ByocError("--addon", f"addon {self.model!r} has the base model's name", "rename the addon")
        if len(set(names)) != len(names):
            raise ByocError("--addon", "the same addon name is given twice", "give each addon once")
        return self

    def residency_regions(self) -> frozenset[str]:
        """The regions requests may spill to: the residency set's members (byoc/catalogs/regions.yaml), less this
        gateway's own region; empty without --residency.

        Raises ByocError (exit 2) naming the flag for a peer outside the residency set, an unknown region or set,
        a peer of another cloud, the gateway's own region as a peer, a region or URL given twice, peers without
        --region or --residency, an unreadable --peer-ca-file or one given without peers."""
        if not 0 <= self.spill_hold <= 600:
            raise ByocError("--spill-hold", "out of range", "from 0 (spill at once) to 600 seconds, e.g. 2")
        if self.peer_ca_file is not None and not self.peer_regions:
            raise ByocError("--peer-ca-file", "given without --peer-region", "pass --peer-region REGION=https://...")
        if self.peer_regions and self.region is None:
            raise ByocError(
                "--region",
                "spill-over to --peer-region needs the region this gateway serves in",
                "pass --region REGION, e.g. --region eu-west-2",
            )
        if self.peer_regions and self.residency is None:
            raise ByocError(
                "--residency",
                "spill-over to --peer-region needs the residency set the peers must belong to",
                "pass --residency EUROPE (or US, APAC, GLOBAL: the deployment's region setting)",
            )
        if self.residency is None and self.region is None:
            return frozenset()
        if self.residency is not None and self.region is None:
            raise ByocError(
                "--residency",
                "given without --region: a residency set bounds the region this gateway serves in and its peers",
                "pass --region REGION as well, e.g. --region eu-west-2",
            )
        from byoc.catalogs import MEGA_REGIONS, load_catalog

        catalog = load_catalog()
        cloud_of = {region: cloud for cloud in catalog.mega_regions for region in catalog.regions(cloud)}
        if self.region is not None and self.region not in cloud_of:
            raise ByocError("--region", f"{self.region!r} is not a region byoc knows", "`byoc regions` lists them")
        if self.residency is None:
            return frozenset()
        if self.residency not in MEGA_REGIONS:
            raise ByocError(
                "--residency", f"{self.residency!r} is not a residency set", f"one of {', '.join(MEGA_REGIONS)}"
            )
        cloud = cloud_of.get(self.region or "")
        members = {
            region
            for each in catalog.mega_regions
            if cloud is None or each == cloud
            for region in (
                catalog.regions(each) if self.residency == "GLOBAL" else catalog.mega_regions[each][self.residency]
            )
        }
        if self.region is not None and self.region not in members:
            raise ByocError(
                "--region",
                f"{self.region} is outside the residency set {self.residency}",
                f"serve in one of {', '.join(sorted(members))}",
            )
        seen_regions: set[str] = set()
        seen_urls: set[str] = set()
        for peer in self.peer_regions:
            where = f"--peer-region {peer.region}"
            if peer.region not in cloud_of:
                raise ByocError(where, f"{peer.region!r} is not a region byoc knows", "`byoc regions` lists them")
            if cloud is not None and cloud_of[peer.region] != cloud:
                raise ByocError(
                    where,
                    f"{peer.region} is a {cloud_of[peer.region]} region; {self.region} is {cloud}",
                    "give the peers of this deployment's cloud",
                )
            if peer.region not in members:
                raise ByocError(
                    where,
                    f"{peer.region} is outside the residency set {self.residency}: requests would leave it",
                    f"remove it; peers must be among {', '.join(sorted(members - {self.region or ''}))}",
                )
            if peer.region == self.region:
                raise ByocError(where, "is this gateway's own region (--region)", "give the other regions only")
            if peer.region in seen_regions or peer.url in seen_urls:
                raise ByocError(where, "a region or URL is given twice", "give each peer region once")
            seen_regions.add(peer.region)
            seen_urls.add(peer.url)
        self.peer_ssl_context()
        return frozenset(members - {self.region or ""})

    def peer_ssl_context(self) -> ssl.SSLContext:
        """TLS to the peers' gateways (TLS 1.2 or newer), verifying their certificates against --peer-ca-file or,
        without it, the system's CAs. Raises ByocError for a CA file that cannot be read."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.peer_ca_file is not None:
            try:
                context.load_verify_locations(cafile=str(self.peer_ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ByocError(
                    "--peer-ca-file",
                    f"cannot load {self.peer_ca_file}: {type(exc).__name__}",
                    "give the PEM CA certificate that signed the peer gateways' certificates",
                ) from None
        return context

    def _check_batch(self) -> None:
        """--batch-store's URI, and the flags that need it (the store itself is reached per request: a bucket that
        is down must not stop the gateway serving online traffic)."""
        if self.batch_store is None:
            if self.batch_kms_key is not None:
                raise ByocError(
                    "--batch-kms-key", "given without --batch-store", "pass --batch-store s3://BUCKET/batch/"
                )
            return
        scheme = urlsplit(self.batch_store).scheme
        if scheme not in ("s3", "gs", "file") and not self.batch_store.startswith("/"):
            raise ByocError(
                "--batch-store",
                "not a store URI",
                "use s3://BUCKET/batch/ (AWS), gs://BUCKET/batch/ (GCP) or file:///path for a local test",
            )
        if scheme in ("s3", "gs") and not urlsplit(self.batch_store).netloc:
            raise ByocError("--batch-store", "names no bucket", f"write {scheme}://BUCKET/batch/")
        # the spec's batch.retention_hours bounds (byoc/spec.py); OpenAI keeps batch files 30 days at most
        if not 1 <= self.batch_retention_hours <= 720:
            raise ByocError("--batch-retention-hours", "out of range", "from 1 to 720 hours, e.g. 24")


def parse_address(value: str, flag: str) -> Address:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ByocError(flag, f"{value!r} is not HOST:PORT", "e.g. 0.0.0.0:8080")
    return Address(host.strip("[]"), int(port))


def parse_upstream(value: str) -> UpstreamSpec:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "dns+http") or not parts.hostname or parts.path not in ("", "/"):
        raise ByocError(
            "--upstream",
            f"{value!r} is not an upstream URL",
            "use http://HOST:PORT for one replica or dns+http://SERVICE:PORT to route to every address of a name",
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise ByocError("--upstream", f"{value!r} has a bad port", "e.g. http://127.0.0.1:8000") from None
    return UpstreamSpec(parts.scheme, parts.hostname, port)


# Test peers only: plain HTTP never leaves the machine (127.0.0.0/8 is loopback, RFC 1122 3.2.1.3).
_LOOPBACK_NAMES = ("localhost", "::1")


def _loopback(host: str) -> bool:
    """A loopback address (127.0.0.0/8, ::1) or a loopback name: the only peers plain http:// may reach. A DNS name
    that merely starts with "127." (127.evil.example) is not one."""
    import ipaddress

    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_peer_region(value: str) -> PeerRegion:
    """`REGION=https://HOST[:PORT]`: a peer region's gateway. https:// in production; http:// only to a loopback
    address (tests on one machine): a request spilled to a peer carries the client's prompt and API key."""
    region, sep, url = value.partition("=")
    region, url = region.strip(), url.strip()
    example = "e.g. --peer-region eu-north-1=https://eu-north-1.NAME.byoc.internal:443"
    if not sep or not region or not url:
        raise ByocError("--peer-region", f"{value!r} is not REGION=URL", example)
    parts = urlsplit(url)
    where = f"--peer-region {region}"
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ByocError(where, f"{url!r} is not a gateway URL", f"give scheme://HOST[:PORT] only, {example}")
    if parts.username or parts.password:
        raise ByocError(
            where, "the URL carries credentials", "the client's API key is forwarded; remove user:password@"
        )
    host = parts.hostname
    if parts.scheme == "http" and not _loopback(host):
        raise ByocError(
            where,
            f"plain http:// to {host} would carry prompts and API keys unencrypted between regions",
            "use https:// (the peer gateway's --tls-cert; trust its CA with --peer-ca-file); http:// is for "
            "127.0.0.x test peers only",
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ByocError(where, f"{url!r} has a bad port", example) from None
    netloc = f"[{host}]" if ":" in host else host
    return PeerRegion(region, f"{parts.scheme}://{netloc}:{port}")


def _addon_name(name: str, flag: str, example: str) -> str:
    """An addon name as clients will send it as `model` and the engine will find its folder (byoc/names.py)."""
    from byoc.names import addon_id_problem

    if not name:
        raise ByocError(flag, "an addon has no name", f"use NAME=..., e.g. {example}")
    problem = addon_id_problem(name)
    if problem:
        raise ByocError(flag, f"addon name {problem}", f"rename it, e.g. {example}")
    return name


def parse_addon(value: str) -> Addon:
    name, sep, source = value.partition("=")
    name = _addon_name(name.strip(), "--addon", "sql=hf://org/sql-lora")
    return Addon(name, lora_int_id(name), f"{ADAPTER_ROOT}/{name}", source.strip() if sep else "")


def _coerce(name: str, value: Any, default: Any) -> Any:
    """A value from the config file, checked against the type of the setting's default."""
    flag = f"--config: {name}"
    if name in {"listen", "metrics_listen"}:
        return parse_address(str(value), flag)
    if name == "upstreams":
        items = value if isinstance(value, list) else [value]
        return tuple(parse_upstream(str(v)) for v in items)
    if name == "addons":
        items = value if isinstance(value, list) else [value]
        return tuple(parse_addon(str(v)) for v in items)
    if name == "peer_regions":
        items = value if isinstance(value, list) else [value]
        return tuple(parse_peer_region(str(v)) for v in items)
    if name in {
        "api_keys",
        "tls_cert",
        "tls_key",
        "routing_tokenizer",
        "store_password_file",
        "store_ca_file",
        "batch_worker_token_file",
        "peer_ca_file",
    }:
        return Path(str(value))
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ByocError(flag, "must be true or false", f"e.g. {name}: false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ByocError(flag, "must be a whole number", f"e.g. {name}: {default}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ByocError(flag, "must be a number", f"e.g. {name}: {default}")
        return float(value)
    if not isinstance(value, str):
        raise ByocError(flag, "must be a string", f"e.g. {name}: {default}")
    return value


def load_config_file(path: Path) -> dict[str, Any]:
    """The YAML file's settings, named like the flags with underscores (`max_queue: 100`, `upstreams: [...]`)."""
    from byoc.yamlio import load_user_yaml

    data = load_user_yaml(path, "--config", "a gateway config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ByocError("--config", f"{path} must hold a mapping of settings", "e.g. `max_queue: 100`")
    defaults = {f.name: f.default for f in fields(GatewayConfig)}
    settings: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name == "upstream":
            name = "upstreams"
        if name == "addon":
            name = "addons"
        if name == "peer_region":
            name = "peer_regions"
        if name not in defaults:
            known = ", ".join(sorted(defaults))
            raise ByocError("--config", f"unknown setting {key!r}", f"known settings: {known}")
        settings[name] = _coerce(name, value, defaults[name])
    return settings


def build_config(config_file: Path | None, flags: dict[str, Any]) -> GatewayConfig:
    """Defaults, then the config file, then every flag given on the command line (None = not given)."""
    config = GatewayConfig()
    if config_file is not None:
        config = replace(config, **load_config_file(config_file))
    given = {k: v for k, v in flags.items() if v is not None and v not in ((), [])}
    if given.get("insecure_no_auth") is False:
        given.pop("insecure_no_auth")
    return replace(config, **given).validate()


@dataclass
class EngineSettings:
    """`byoc serve engine` flags."""

    model_dir: Path
    listen: Address
    addons: dict[str, Path] = field(default_factory=dict)
    model_name: str | None = None
    max_batch_size: int = 8
    max_context: int | None = None
    kv_cache_tokens: int = 65536
    threads: int = 1


def parse_engine_addon(value: str) -> tuple[str, Path]:
    name, sep, folder = value.partition("=")
    if not sep or not name.strip() or not folder.strip():
        raise ByocError("--addon", f"{value!r} is not NAME=DIR", "e.g. --addon sql=/models/adapters/sql")
    name = _addon_name(name.strip(), "--addon", "sql=/models/adapters/sql")
    path = Path(folder.strip())
    if not (path / "adapter_config.json").is_file():
        raise ByocError("--addon", f"{path} holds no adapter_config.json", "point at a PEFT LoRA adapter folder")
    return name, path


def parse_engine_addons(values: list[str], model_name: str) -> dict[str, Path]:
    """The engine's `--addon NAME=DIR` flags: each name once, none the base model's (`--model-name`)."""
    addons: dict[str, Path] = {}
    for value in values:
        name, path = parse_engine_addon(value)
        if name == model_name:
            raise ByocError("--addon", f"addon {name!r} has the base model's name (--model-name)", "rename the addon")
        if name in addons:
            raise ByocError("--addon", f"addon {name!r} is given twice", "give each addon once")
        addons[name] = path
    return addons
