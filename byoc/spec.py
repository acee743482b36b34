"""The deployment spec: what the user wrote in byoc.yaml (and on the command line), validated strictly.

Field descriptions here are the user documentation: `byoc schema` prints them as JSON Schema and docs/spec.md is
generated from them. Rules that need the catalogs (does this GPU do FP8? does the region offer it?) are not here
but in `byoc.rules`, reached through `byoc.resolve`.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from byoc.errors import ByocError
from byoc.names import DNS_LABEL, DNS_LABEL_MAX, addon_id_problem
from byoc.yamlio import load_user_yaml

SHAPE_PATTERN = re.compile(r"^(?P<gpu>[a-z0-9][a-z0-9-]*?)x(?P<count>[0-9]+)-(?P<precision>[a-z0-9]+)$")
_DURATION = re.compile(r"^(?P<value>[0-9]+)(?P<unit>s|m|h)?$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, None: 1}
# A model id names the artifact's prefix in the store (artifacts/<id>/<key>) and is what clients send as `model`.
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
MODEL_ID_MAX = 128
URI_SCHEMES = ("hf://", "s3://", "gs://", "file://")
# Names are prefixes of cloud resource names (an S3 bucket name has 63 characters at most, and byoc appends
# "-artifacts-<account or project suffix>"), so they are shorter than a DNS label may be.
NAME_MAX = 32


# Kubernetes validates an HPA's behavior.scaleUp/scaleDown.stabilizationWindowSeconds as 0..3600
# (k8s.io/kubernetes pkg/apis/autoscaling/validation: MaxStabilizationWindowSeconds).
HPA_WINDOW_MAX = 3600
# KEDA samples the activation query every pollingInterval (15 s in byoc's ScaledObject): a scale-to-zero window
# shorter than four samples would drop the last replica between two requests of light steady traffic.
SCALE_TO_ZERO_MIN = 60


# Replica counts and durations render into int32 fields of KEDA's ScaledObject and the HPA (minReplicaCount,
# maxReplicaCount, cooldownPeriod): Kubernetes refuses larger values.
INT32_MAX = 2**31 - 1


def _show(value: str, limit: int = 40) -> str:
    """A value as an error message quotes it: whole when short, its start when long."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


def _seconds(value: Any) -> Any:
    """Durations are written as 30s, 10m, 1h (or plain seconds)."""
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is not a duration; write it as 30s, 10m or 1h")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            return int(match["value"]) * _UNIT_SECONDS[match["unit"]]
        raise ValueError(f"{value!r} is not a duration; write it as 30s, 10m or 1h")
    return value


# A duration is a number of seconds, or a string such as 30s, 10m or 1h; the schema says both.
Seconds = Annotated[
    int,
    BeforeValidator(_seconds),
    Field(ge=0, le=INT32_MAX),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": INT32_MAX},
                {"type": "string", "pattern": _DURATION.pattern},
            ]
        }
    ),
]
# Whole numbers as YAML writes them: `true` or "4" is not a count (pydantic's lax mode would take both).
Count = Annotated[int, Strict()]
Number = Annotated[float, Strict()]
# true or false as YAML writes them: "yes", "false" (quoted) or 0 is not a switch (pydantic's lax mode would take all
# three, and read the quoted "false" as off only by luck).
Switch = Annotated[bool, Strict()]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelRef(_Strict):
    """A model by id with where its weights come from."""

    id: str = Field(
        description="Model id: a catalog id (see `byoc shapes`), or any name for a model read from `source`.",
        min_length=1,
    )
    source: str | None = Field(
        default=None,
        description="Where the Hugging Face checkpoint lives: hf://org/name, s3://bucket/prefix or gs://bucket/prefix "
        "(what the in-cluster build Job reads). file:///path only for a local `byoc build`: a cloud plan refuses it.",
    )
    revision: str | None = Field(
        default=None, description="Revision of the source (a commit hash for hf://); recorded in the build manifest."
    )
    config: str | None = Field(
        default=None,
        description="A local copy of the model's config.json (file:///path/config.json), read at plan time for a "
        "model outside the catalog whose source is remote; the build checks it against the source's own.",
    )

    @field_validator("id")
    @classmethod
    def _model_id(cls, value: str) -> str:
        if len(value) > MODEL_ID_MAX or not MODEL_ID.match(value) or ".." in value:
            raise ValueError(
                f"{value!r} is not a model id: letters, digits, '.', '_', '-', at most one '/' (org/name), "
                f"at most {MODEL_ID_MAX} characters"
            )
        return value

    @field_validator("config")
    @classmethod
    def _local_config(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("file://"):
            raise ValueError(f"{value!r} must be a file:// path to a config.json on this machine")
        return value

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(URI_SCHEMES):
            raise ValueError(f"{value!r} must start with one of {', '.join(URI_SCHEMES)}")
        return value


class Addon(_Strict):
    """A LoRA adapter served beside the base model; requests select it by `model: <id>`."""

    id: str = Field(
        description="Addon id, used as the `model` in API requests (a DNS-1123 label).",
        json_schema_extra={"pattern": DNS_LABEL.pattern, "maxLength": DNS_LABEL_MAX},
    )
    source: str = Field(description="Where the PEFT adapter lives: hf://, s3://, gs:// or file:// URI.")
    rank: Count = Field(default=16, ge=1, le=512, description="LoRA rank r of the adapter (sizes max_lora_rank).")

    @field_validator("id")
    @classmethod
    def _label(cls, value: str) -> str:
        problem = addon_id_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(URI_SCHEMES):
            raise ValueError(f"{value!r} must start with one of {', '.join(URI_SCHEMES)}")
        return value


LoadTargetType = Literal["concurrent_requests", "requests_per_second", "tokens_per_second", "queue_depth"]


class LoadTarget(_Strict):
    """The load one replica should carry; the autoscaler adds replicas above it."""

    type: LoadTargetType = Field(description="What is measured per replica.")
    value: Number = Field(gt=0, description="Target value per replica.")


class Autoscaling(_Strict):
    """Replica bounds and how fast to follow the load. Defaults follow Fireworks' deployments."""

    min_replicas: Count = Field(
        default=0, ge=0, le=INT32_MAX, description="Fewest replicas; 0 lets the deployment scale to zero."
    )
    max_replicas: Count = Field(
        default=1,
        ge=1,
        le=INT32_MAX,
        description="Most replicas. Their GPU nodes, with the model build Job's and the system nodes, must fit "
        "network.cidr: on AWS pods take VPC addresses (the VPC CNI), on Google Cloud each node a block of the pods "
        "range, and a GKE cluster holds at most 15,000 nodes; validate refuses more and says how many fit.",
    )
    scale_up_window: Seconds = Field(
        default=30,
        description="How long load must stay high before adding replicas (seconds, or 30s / 10m / 1h); at most 1h "
        "(the HPA's behavior.scaleUp.stabilizationWindowSeconds).",
        json_schema_extra={"maximum": HPA_WINDOW_MAX},
    )
    scale_down_window: Seconds = Field(
        default=600,
        description="How long load must stay low before removing replicas (10m); at most 1h "
        "(the HPA's behavior.scaleDown.stabilizationWindowSeconds).",
        json_schema_extra={"maximum": HPA_WINDOW_MAX},
    )
    scale_to_zero_window: Seconds = Field(
        default=3600,
        description="How long with no requests before the last replica goes (1h; KEDA's cooldownPeriod); needs "
        "min_replicas 0, at least 1m and, with max_replicas above 1, at least scale_down_window (KEDA takes every "
        "replica straight to zero once it passes).",
        json_schema_extra={"minimum": SCALE_TO_ZERO_MIN},
    )
    load_target: LoadTarget | None = Field(
        default=None,
        description="Load per replica to scale on; default: concurrent requests sized from the shape's KV-cache "
        "capacity (see `byoc estimate`).",
    )


class Network(_Strict):
    """The private network byoc creates."""

    cidr: str = Field(
        default="10.42.0.0/16",
        description="VPC / VPC network CIDR (a /16 to /20 private range); its size bounds autoscaling.max_replicas "
        "(a /20 holds about 20 one-GPU replicas, a /16 several hundred).",
    )
    endpoint: Literal["private", "allowlist", "public"] = Field(
        default="private",
        description="Kubernetes API endpoint: private (VPC only), allowlist (public, limited to allowed_cidrs), or "
        "public (open; weakens the compliance report).",
    )
    allowed_cidrs: list[str] = Field(
        default_factory=list, description="CIDRs allowed to reach a public API endpoint (endpoint: allowlist)."
    )
    nat_gateways: Literal["per_zone", "single"] = Field(
        default="per_zone",
        description="NAT gateways for the private subnets' egress: one per zone (survives a zone outage) or a "
        "single one (cheaper).",
    )

    @field_validator("cidr")
    @classmethod
    def _private_cidr(cls, value: str) -> str:
        try:
            network = ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a CIDR block ({exc})") from None
        if not network.is_private or network.version != 4:
            raise ValueError(f"{value} is not a private IPv4 range; use e.g. 10.42.0.0/16")
        if not 16 <= network.prefixlen <= 20:
            raise ValueError(
                f"{value} must be a /16 to /20: byoc carves the zones' subnets (AWS) or the pods and services "
                "ranges (Google Cloud) out of it"
            )
        return value

    @field_validator("allowed_cidrs")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                network = ipaddress.ip_network(value, strict=True)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a CIDR block ({exc})") from None
            if network.prefixlen == 0:
                raise ValueError(f"{value} opens the API to the whole internet; use endpoint: public to mean that")
            if network.version == 6:
                raise ValueError(f"{value} is IPv6; byoc's clusters and their endpoints are IPv4-only")
            cgnat = ipaddress.ip_network("100.64.0.0/10")
            if (
                network.is_loopback
                or network.is_link_local
                or network.is_multicast
                or network.is_unspecified
                or (
                    network.version == 4 and network.subnet_of(cgnat)  # type: ignore[arg-type]
                )
            ):
                raise ValueError(f"{value} is not an address a client reaches the endpoint from; list public CIDRs")
        duplicates = sorted({v for v in values if values.count(v) > 1})
        if duplicates:
            raise ValueError(f"{', '.join(duplicates)} listed twice; list each CIDR once")
        return values


class Encryption(_Strict):
    """Customer-managed keys."""

    kms_key: str = Field(
        default="create",
        description="`create` to create customer-managed keys, or an existing key: an AWS KMS key ARN "
        "(arn:aws:kms:...) or a Cloud KMS key id (projects/.../cryptoKeys/...).",
    )
    ebs_default: Switch = Field(
        default=False,
        description="AWS: turn on EBS encryption by default for the account in the deployment's region, with the "
        "platform key as the default key, so that every new volume there is encrypted, including volumes made "
        "outside byoc (HIPAA 164.312(a)(2)(iv), ISO 27001 A.8.24). Off by default because the setting is "
        "account-wide; byoc's own node volumes are encrypted either way.",
    )


# GKE's Google Groups for RBAC reads exactly one group per domain, named gke-security-groups (GKE docs, "Configure
# Google Groups for RBAC"); the groups that RoleBindings name are its members.
GKE_SECURITY_GROUP = re.compile(
    r"^gke-security-groups@(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
)


class Access(_Strict):
    """How people reach the Kubernetes API besides the network path (network.endpoint)."""

    security_group: str | None = Field(
        default=None,
        description="Google Cloud: turn on Google Groups for RBAC with this group, which must be "
        "gke-security-groups@<your Workspace or Cloud Identity domain>; the groups nested in it can then be named "
        "in RoleBindings and ClusterRoleBindings (docs/gcp-foundation.md, 'How people reach the cluster'). "
        "Default: none (IAM roles on the project only). AWS: not used (EKS access entries).",
        json_schema_extra={"pattern": GKE_SECURITY_GROUP.pattern},
    )

    @field_validator("security_group")
    @classmethod
    def _security_group(cls, value: str | None) -> str | None:
        if value is not None and not GKE_SECURITY_GROUP.match(value):
            raise ValueError(
                f"{_show(value)} is not gke-security-groups@<your domain>: GKE reads only the group of that exact "
                "name (lowercase), e.g. gke-security-groups@example.com"
            )
        return value


Framework = Literal["hipaa", "soc2", "iso27001"]
FRAMEWORKS: tuple[Framework, ...] = ("hipaa", "soc2", "iso27001")


class Compliance(_Strict):
    """Which frameworks the evidence pack maps controls to."""

    frameworks: list[Framework] = Field(
        default_factory=lambda: list(FRAMEWORKS),
        min_length=1,
        description="Frameworks to report on (at least one).",
    )

    @field_validator("frameworks")
    @classmethod
    def _once_each(cls, values: list[Framework]) -> list[Framework]:
        if len(set(values)) != len(values):
            raise ValueError("a framework is listed twice; list each once")
        return values


IMAGE_REFERENCE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*(@sha256:[0-9a-f]{64}|:[A-Za-z0-9._-]+)$")


class Images(_Strict):
    """Container images, overriding the pinned defaults in byoc/catalogs/images.yaml."""

    serving: str | None = Field(
        default=None, description="TensorRT-LLM image for trtllm-serve, as repository@sha256:<digest>."
    )
    runtime: str | None = Field(
        default=None,
        description="byoc runtime image (gateway, builder, verifier) built from runtime/Dockerfile into your "
        "registry, as repository@sha256:<digest>.",
    )

    @field_validator("serving", "runtime")
    @classmethod
    def _reference(cls, value: str | None) -> str | None:
        if value is not None and not IMAGE_REFERENCE.match(value):
            raise ValueError(f"{value!r} is not an image reference; write registry/repository@sha256:<64 hex>")
        return value


# The largest finite bucket of the gateway's TTFT histogram (runtime/serve/metrics.py TTFT_BUCKETS; a test ties
# the two): histogram_quantile never reports more than it, so an objective above it would never fire its alert.
TTFT_SLO_MAX_S = 60.0
# ... and its first bucket: an objective below it cannot be told from zero, so the alert would fire on every answer.
TTFT_SLO_MIN_S = 0.01


class Monitoring(_Strict):
    """Metrics, alerts and the autoscaler's data source."""

    prometheus_url: str | None = Field(
        default=None,
        description="URL of an existing in-cluster Prometheus that scrapes ServiceMonitors and that KEDA queries "
        "(e.g. http://prometheus-operated.monitoring:9090); default: byoc installs kube-prometheus-stack.",
    )
    ttft_p95_slo_seconds: Number = Field(
        default=2.0,
        ge=TTFT_SLO_MIN_S,
        le=TTFT_SLO_MAX_S,
        description="Time-to-first-token p95 objective; the ByocTTFTHigh alert fires above it. At most 60 s: the "
        "gateway's TTFT histogram ends there, so a larger objective could never be seen to be missed.",
    )

    @field_validator("prometheus_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"[\s\"'<>]", value):
            raise ValueError(f"{_show(value)} must be an http:// or https:// URL with a host and no spaces or quotes")
        return value


StoreKind = Literal["managed", "none"]


class Gateway(_Strict):
    """The gateway replicas (2 to 6, scaled on CPU) and what they share."""

    store: StoreKind = Field(
        default="managed",
        description="Where the gateway replicas keep per-key limits, budgets and usage so that they hold across "
        "replicas: managed (a private, encrypted Redis-compatible service of the cloud: AWS ElastiCache for Valkey "
        "with the deployment's KMS key, TLS and an AUTH token; Google Cloud Memorystore for Redis with the "
        "deployment's Cloud KMS key, TLS and AUTH; about $0.05/h, see `byoc estimate`), or none (each replica "
        "enforces limits in its own memory, so a key's rpm multiplies with the replica count: for trials only). "
        'docs/operations.md, "The gateway\'s shared store", says why not a store in the cluster.',
    )


class Batch(_Strict):
    """OpenAI's Files and Batches API on the gateway, run by a worker that fills only capacity online traffic leaves."""

    enabled: Switch = Field(
        default=True,
        description="Serve /v1/files and /v1/batches and run the batch worker. Files live under batch/ in the "
        "deployment's artifact bucket, encrypted with its customer-managed key.",
    )
    retention_hours: Count = Field(
        default=24,
        ge=1,
        le=720,
        description="Hours after creation at which batch input, output and error files are deleted (a client may "
        "ask for less with expires_after, never more); the bucket's lifecycle rule on batch/ deletes anything "
        "left a day later.",
    )


DISK_IMAGE = re.compile(r"(projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/)?global/images/[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
WeightsCache = Literal["local_ssd", "node_cache", "none"]


class ColdStart(_Strict):
    """What shortens a wake from zero: caches on the GPU node and an optional warm pool (docs/operations.md)."""

    image_cache: Switch = Field(
        default=True,
        description="Shorten the serving image's pull on a new GPU node: GKE, a secondary boot disk that holds the "
        "image (cold_start.image_disk) and image streaming (images in Artifact Registry); AWS, SOCI parallel pull "
        "and unpack (nodeadm's FastImagePull on AL2023). false: a plain pull on every new node.",
    )
    weights_cache: WeightsCache = Field(
        default="local_ssd",
        description="Where the GPU nodes keep the model's weights: local_ssd (the instance's local NVMe as the "
        "node's ephemeral storage: Karpenter's instance-store RAID0, GKE Local SSD; each replica fetches into it with "
        "parallel ranged reads, and the root disk holds only the OS), node_cache (one copy shared by the replicas, "
        "read-only; AWS: per node, the artifact's S3 prefix mounted through the Mountpoint for Amazon S3 CSI "
        "driver, whose cache lies on the same local NVMe, the first replica on a node reads from S3, later ones and "
        "warm-pool nodes from the node's cache; GKE: per zone, a Hyperdisk ML volume the GKE Volume Populator fills "
        "from the bucket at deploy, which every GPU node attaches, so every replica reads it from the volume, at a "
        "monthly cost per zone that plan.json shows; one region only, on machine types that attach Hyperdisk ML) or "
        "none (the root disk, sized for the weights). Where the pool's NVMe cannot hold them, the root disk is used "
        "and plan.json says why.",
    )
    image_disk: str | None = Field(
        default=None,
        description="GKE only: the disk image holding the serving image, made with GKE's gke-disk-image-builder "
        "(docs/operations.md, 'Cold start'), attached to every GPU node as a secondary boot disk that containerd "
        "reads the image from; `projects/PROJECT/global/images/NAME`. Unset: the image is streamed (Artifact "
        "Registry) or pulled.",
    )
    warm_pool: Count = Field(
        default=0,
        ge=0,
        le=64,
        description="GPU nodes kept running with the images pulled and no replica (held by low-priority "
        "placeholder pods that a replica preempts), so a wake skips the node launch; each costs its instance's "
        "hourly price, always, in each region of the deployment (plan.json cold_start_caches.warm_pool, per_region). "
        "At most the nodes max_replicas replicas fill less those min_replicas fill, in each region: only a replica "
        "past the minimum that finds no free slot on the minimum's nodes takes a warm node.",
    )

    @field_validator("image_disk")
    @classmethod
    def _disk_image(cls, value: str | None) -> str | None:
        # Compute Engine names: a lowercase letter, then up to 62 of lowercase letters, digits and hyphens, not
        # ending in a hyphen (https://cloud.google.com/compute/docs/naming-resources); project ids 6 to 30 of those
        if value is not None and not DISK_IMAGE.fullmatch(value):
            raise ValueError(
                f"{_show(value)} is not a Compute Engine image; write projects/PROJECT/global/images/NAME (or "
                "global/images/NAME in the deployment's project), e.g. projects/my-project/global/images/serving-cache"
            )
        return value


BudgetPeriod = Literal["day", "week", "month"]
# Fractions of the budget an alert fires at (each fires once the period's GPU-hours pass it).
BUDGET_ALERTS_MAX = 10


class Budget(_Strict):
    """A deployment-level GPU-hour budget: alerts as it is spent and, optionally, a cap on replicas once it is."""

    gpu_hours: Number = Field(
        gt=0,
        le=1e7,
        description="GPU-hours the deployment's pods may use per period (a replica of an h100x8 shape uses 8 per "
        "hour); counted by Prometheus from the GPU requests of its running pods: serving replicas, the build Job and "
        "the warm pool's placeholders (docs/operations.md, 'GPU-hour budget').",
    )
    period: BudgetPeriod = Field(
        default="month",
        description="The period the budget covers: day, week (from Monday) or month (calendar, UTC); the count "
        "starts again at each period's start.",
    )
    alert_at: list[Number] = Field(
        default_factory=lambda: [0.5, 0.8, 1.0],
        min_length=1,
        max_length=BUDGET_ALERTS_MAX,
        description="Fractions of gpu_hours at which the ByocGpuBudgetSpent alert fires (each above 0, at most 1, "
        "listed once).",
    )
    cap_replicas: Count | None = Field(
        default=None,
        ge=0,
        le=INT32_MAX,
        description="Once gpu_hours are spent, the most serving replicas until the period ends (0 stops serving; "
        "the gateway then holds and times out requests); at most autoscaling.max_replicas. Default: none, alerts "
        "only. Applied through KEDA's scalingModifiers on the ScaledObject.",
    )

    @field_validator("alert_at")
    @classmethod
    def _fractions(cls, values: list[float]) -> list[float]:
        for value in values:
            if not 0 < value <= 1:
                raise ValueError(f"{value:g} is not a fraction of the budget; write values above 0 and at most 1")
        if len(set(values)) != len(values):
            raise ValueError("a threshold is listed twice; list each once")
        return sorted(values)


# A multi-region deployment names each region's resources <name>-<region code> (byoc.names.region_code: at most 5
# characters and a dash), so its name leaves that room under NAME_MAX.
REGION_SUFFIX_MAX = 6
MAX_REGIONS = 8  # the most regions one deployment places in: each is a whole foundation (network, keys, cluster)


class Placement(_Strict):
    """Where a mega-region or GLOBAL deployment runs. A region id pins the deployment to that one region."""

    regions: list[str] | None = Field(
        default=None,
        description="The regions of the mega-region to place in, the first the primary (where the model is built). "
        "Default: byoc picks min_regions of the set that offer the shape, cheapest node first, then the catalog's "
        "order. Every region must belong to the mega-region (GLOBAL: any region of the cloud).",
    )
    min_regions: Count | None = Field(
        default=None,
        ge=1,
        le=MAX_REGIONS,
        description=f"How many regions a mega-region or GLOBAL deployment places in (1 to {MAX_REGIONS}); "
        "default 2, for failover. 1 places in one region of the set, as a region id does.",
    )

    @field_validator("regions")
    @classmethod
    def _regions(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        if not values:
            raise ValueError("is empty; list regions of the mega-region, or leave it out")
        if len(values) > MAX_REGIONS:
            raise ValueError(f"lists {len(values)} regions; at most {MAX_REGIONS}")
        duplicates = sorted({v for v in values if values.count(v) > 1})
        if duplicates:
            raise ValueError(f"{', '.join(duplicates)} listed twice; list each region once")
        return values


class Speculative(_Strict):
    """Speculative decoding with a smaller draft model."""

    draft_model: str = Field(description="Catalog id or URI of the draft model (same tokenizer as the target).")
    max_draft_tokens: Count = Field(default=4, ge=1, le=16, description="Tokens the draft proposes per step.")


class Spec(_Strict):
    """A byoc deployment: one model on one shape in one region of one cloud."""

    name: str = Field(
        default="byoc",
        json_schema_extra={"pattern": DNS_LABEL.pattern, "maxLength": NAME_MAX},
        description=f"Deployment name: a DNS-1123 label of at most {NAME_MAX} characters; prefixes every resource.",
    )
    cloud: Literal["aws", "gcp"] = Field(description="Cloud to deploy into.")
    region: str = Field(
        description="A mega-region (GLOBAL, US, EUROPE, APAC: byoc places the deployment in placement.min_regions "
        "regions of it that offer the shape, 2 by default, behind one private name; it never serves or stores "
        "outside the set) or a concrete region id of the cloud (eu-west-2, europe-west4), which pins it there."
    )
    model: str | ModelRef = Field(description="Catalog model id, or {id, source, revision}.")
    shape: str = Field(
        description="Deployment shape <gpu>x<count>-<precision>: e.g. h100x1-fp8, h200x8-fp8, b200x1-fp4, "
        "a100x1-bf16, l40sx4-fp8, l4x1-fp8. See `byoc shapes`."
    )
    addons: list[Addon] = Field(default_factory=list, description="LoRA addons (BF16 shapes only).")
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, description="Replica bounds and windows.")
    kv_cache_fraction: Number = Field(
        default=0.9,
        description="Share of the GPU memory left after the weights that the KV cache takes "
        "(trtllm-serve --kv_cache_free_gpu_memory_fraction); strictly between 0 and 1.",
    )
    max_context: Count | None = Field(
        default=None, ge=1, description="Longest sequence (prompt + output) served; default: the model's own."
    )
    speculative: Speculative | None = Field(default=None, description="Speculative decoding, or none.")
    capacity: Literal["on-demand", "spot"] = Field(
        default="on-demand",
        description="How GPU nodes are bought: on-demand, or spot (cheaper, reclaimable at two minutes' notice; "
        "nodes are drained on the interruption warning).",
    )
    node_image: str | None = Field(
        default=None,
        description="Image of the GPU nodes. AWS: a Karpenter AMI alias, family@version (al2023@v20260512; "
        "al2023@latest rolls every GPU node, each a model reload, on every AMI release). Default: the dated alias "
        "pinned in byoc/catalogs/kubernetes.yaml.",
    )
    network: Network = Field(default_factory=Network, description="Private network and API endpoint.")
    access: Access = Field(default_factory=Access, description="Who reaches the Kubernetes API.")
    encryption: Encryption = Field(default_factory=Encryption, description="Customer-managed keys.")
    compliance: Compliance = Field(default_factory=Compliance, description="Compliance frameworks.")
    images: Images = Field(default_factory=Images, description="Container image overrides.")
    monitoring: Monitoring = Field(default_factory=Monitoring, description="Monitoring and alerting.")
    placement: Placement = Field(
        default_factory=Placement, description="Multi-region placement of a mega-region or GLOBAL deployment."
    )
    gateway: Gateway = Field(default_factory=Gateway, description="The API gateway and its shared store.")
    batch: Batch = Field(default_factory=Batch, description="Batch inference (OpenAI's Files and Batches API).")
    cold_start: ColdStart = Field(default_factory=ColdStart, description="Caches and warm pool for wakes from zero.")
    budget: Budget | None = Field(
        default=None, description="GPU-hour budget of the deployment: alerts and an optional replica cap; or none."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if len(value) > NAME_MAX:
            raise ValueError(f"{_show(value)} has {len(value):,} characters; at most {NAME_MAX}")
        if not DNS_LABEL.match(value):
            raise ValueError(f"{value!r} must be a DNS-1123 label: lowercase letters, digits and '-', from a letter")
        return value

    @field_validator("shape")
    @classmethod
    def _shape_format(cls, value: str) -> str:
        if not SHAPE_PATTERN.match(value):
            raise ValueError(f"{value!r} is not <gpu>x<count>-<precision>, e.g. h100x1-fp8")
        return value

    @field_validator("addons")
    @classmethod
    def _unique_addons(cls, values: list[Addon]) -> list[Addon]:
        seen: set[str] = set()
        for addon in values:
            if addon.id in seen:
                raise ValueError(f"addon id {addon.id!r} appears twice")
            seen.add(addon.id)
        return values

    @property
    def model_id(self) -> str:
        return self.model if isinstance(self.model, str) else self.model.id


# ---------------------------------------------------------------------------------------------------------------
# Loading: YAML + flags -> Spec, every problem as one ByocError naming the field.


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("str", "ModelRef", "function-after[_label(), str]") or "[" in str(item):
            continue  # union branch names pydantic adds to the location
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts)


def _known_fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names allowed where an unknown key was found, for a did-you-mean hint."""
    current: type[BaseModel] | None = model
    for item in loc[:-1]:
        if isinstance(item, int):
            continue
        info = current.model_fields.get(item) if current is not None else None
        if info is None:
            return []
        args = getattr(info.annotation, "__args__", (info.annotation,))
        current = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(current.model_fields) if current is not None else []


def _as_written(value: Any) -> str:
    """A value as the spec's YAML writes it (null, true, 'text'), not as Python prints it (None, True)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def error_from_validation(exc: ValidationError, model: type[BaseModel] = Spec) -> ByocError:
    """Turn pydantic's first error into one message that names the field and a fix."""
    errors = exc.errors()
    # For a union (model: str | ModelRef) pydantic reports each branch; the deepest location is the branch the
    # user meant (a mapping given for `model` fails inside ModelRef, not as "not a string").
    # A misspelt key shows up twice: as an unknown field and as the required field it meant. The unknown field is
    # the one with a did-you-mean.
    errors = [e for e in errors if e["type"] == "extra_forbidden"] or errors
    top = errors[0]["loc"][:1]
    first = max((e for e in errors if e["loc"][:1] == top), key=lambda e: len(e["loc"]))
    loc = tuple(first["loc"])
    field = _field_path(loc) or "spec"
    kind = first["type"]
    if kind == "extra_forbidden":
        unknown = str(loc[-1])
        choices = _known_fields(model, loc)
        close = difflib.get_close_matches(unknown, choices, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed here: {', '.join(choices)}"
        return ByocError(field, f"unknown field {unknown!r}", hint)
    if kind == "missing":
        flag = f" or pass --{loc[0]}" if len(loc) == 1 and loc[0] in FIELDS_WITH_FLAGS else ""
        return ByocError(field, "is required", f"add `{loc[-1]}:` to the spec{flag}")
    if kind == "literal_error":
        expected = first.get("ctx", {}).get("expected", "")
        return ByocError(field, f"{_as_written(first['input'])} is not allowed", f"use one of {expected}")
    message = str(first["msg"]).removeprefix("Value error, ")
    if kind == "bool_type":  # a quoted word or a number where YAML's true/false belongs
        message = f"{_as_written(first['input'])} is not true or false"
    hint = {
        "greater_than_equal": "use a value at or above the minimum",
        "greater_than": "use a larger value",
        "less_than_equal": "use a value at or below the maximum",
        "int_parsing": "write a whole number",
        "int_type": "write a whole number, not true/false or a quoted value",
        "float_parsing": "write a number",
        "float_type": "write a number, not true/false or a quoted value",
        "bool_type": "write true or false, unquoted",
        "finite_number": "write a finite number",
        "string_type": "quote it: YAML reads yes/no/on/off (and NO, Norway's code) as true/false",
    }.get(kind, "see `byoc schema` for the allowed values")
    return ByocError(field, message, hint)


def load_spec_file(path: Path) -> dict[str, Any]:
    """The spec file's keys (strict YAML: see byoc.yamlio.load_user_yaml), or ByocError naming -f."""
    data = load_user_yaml(path, "-f", "a byoc.yaml spec")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ByocError("-f", f"{path} must hold a mapping of spec keys", "see examples/byoc.yaml")
    return data


# The spec fields `plan`, `validate` and the lifecycle commands also take as flags (--name, --cloud, ...).
FIELDS_WITH_FLAGS = frozenset({"name", "cloud", "region", "model", "shape"})


def build_spec(data: dict[str, Any], overrides: dict[str, Any] | None = None) -> Spec:
    """Merge flags over the file's keys (flags win) and validate."""
    merged = dict(data)
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
    try:
        return Spec.model_validate(merged)
    except ValidationError as exc:
        raise error_from_validation(exc) from None


def load_spec(path: Path | None, overrides: dict[str, Any] | None = None) -> Spec:
    data = load_spec_file(path) if path is not None else {}
    return build_spec(data, overrides)
