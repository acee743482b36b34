"""What a cloud's preflight and its leftover sweep take and return (cloud-neutral shapes; no SDK imports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

CheckStatus = Literal["ok", "fail", "unknown"]
SweepAction = Literal["found", "deleted", "failed", "scheduled", "retained"]


@dataclass(frozen=True)
class CapacityNeed:
    """The GPU capacity a deployment needs at its peak: `instances` x `instance_type` bought as
    `purchase_option`, in `region` (the serving replicas at max_replicas plus the model build Job)."""

    region: str
    instance_type: str
    instances: int
    purchase_option: Literal["on-demand", "spot"]
    why: str
    deployment: str = ""  # its own running instances are part of the need, not of what else runs


@dataclass(frozen=True)
class Check:
    """One preflight check: ok, fail (nothing will be created) or unknown (could not tell; byoc goes on)."""

    name: str
    status: CheckStatus
    detail: str
    hint: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status, "detail": self.detail, "hint": self.hint, **self.data}


@dataclass(frozen=True)
class PreflightReport:
    cloud: str
    region: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "cloud": self.cloud,
            "region": self.region,
            "ok": self.ok,
            "checks": [c.as_dict() for c in self.checks],
        }


@dataclass(frozen=True)
class SweepTarget:
    """What a deployment's leftovers are tagged with: the deployment name and its cluster's name."""

    deployment: str
    cluster: str
    region: str


@dataclass
class SweptResource:
    """One resource the sweep found: its kind (instance, launch-template, load-balancer, security-group,
    network-interface, volume; on GCP cluster, disk, bucket, kms-key, ...), id, the tag or label that ties it to
    the deployment, and what became of it: `scheduled` (a Cloud KMS key, which cannot be deleted: its versions are
    scheduled for destruction) and `retained` (kept on purpose, e.g. a bucket under a locked retention policy) are
    as far as a sweep can go, and do not count as remaining."""

    kind: str
    id: str
    tag: str
    action: SweepAction = "found"
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "tag": self.tag, "action": self.action, "error": self.error}


@dataclass
class SweepReport:
    """What the sweep found; `errors`: kinds it could not list (so it cannot say nothing remains); `skipped`: why
    the cloud has no sweep at all."""

    region: str
    resources: list[SweptResource] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: str = ""

    @property
    def remaining(self) -> list[SweptResource]:
        return [r for r in self.resources if r.action not in ("deleted", "scheduled", "retained")]

    def as_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "resources": [r.as_dict() for r in self.resources],
            "remaining": len(self.remaining),
            "errors": self.errors,
            "skipped": self.skipped,
        }
