"""The compliance model: frameworks and controls (data), resources to check, checks, findings.

Checks read a `Graph` of resources in one shape whatever their source: the recorded plan (Pulumi type tokens and
the inputs Pulumi sends, camelCase) or the live account (collectors translate API answers into the same shape).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

CATALOGS = Path(__file__).parent / "catalogs"


class Status(StrEnum):
    """What a check found on one resource.

    PASS and FAIL judge the resource; ERROR means the evidence could not be read (the API's error is the reason);
    NOT_ASSESSED means the check applies to the deployment but had nothing to judge, and the reason says why (no
    cluster access, none of the resource type in the account, a customer key the plan does not hold, an account
    setting byoc does not manage); NOT_APPLICABLE means the check does not concern this resource (a key kind AWS
    cannot rotate); EXCEPTION means byoc declines the property by design, for the reason given (not a silent gap).
    """

    PASS = "PASS"
    FAIL = "FAIL"
    NOT_APPLICABLE = "NOT_APPLICABLE"
    ERROR = "ERROR"
    NOT_ASSESSED = "NOT_ASSESSED"
    EXCEPTION = "EXCEPTION"


@dataclass(frozen=True)
class Control:
    framework: str
    id: str
    title: str
    description: str

    @property
    def ref(self) -> str:
        return f"{self.framework}:{self.id}"


@dataclass(frozen=True)
class Framework:
    id: str
    title: str
    source: str
    controls: tuple[Control, ...]


@functools.cache
def frameworks() -> dict[str, Framework]:
    found = {}
    for path in sorted(CATALOGS.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        controls = tuple(Control(data["framework"], c["id"], c["title"], c["description"]) for c in data["controls"])
        found[data["framework"]] = Framework(data["framework"], data["title"], data["source"], controls)
    return found


def control(ref: str) -> Control:
    framework, _, control_id = ref.partition(":")
    for candidate in frameworks()[framework].controls:
        if candidate.id == control_id:
            return candidate
    raise KeyError(ref)


@dataclass(frozen=True)
class Resource:
    type: str
    name: str
    id: str
    inputs: Mapping[str, Any]
    source: str  # "plan" or "live"
    region: str | None = None

    def get(self, path: str, default: Any = None) -> Any:
        """A value by dotted path (`vpcConfig.endpointPublicAccess`); lists by index (`rules.0.x`)."""
        value: Any = self.inputs
        for part in path.split("."):
            if isinstance(value, Mapping):
                value = value.get(part)
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return default
            if value is None:
                return default
        return value

    @property
    def ref(self) -> dict[str, str]:
        return {"type": self.type, "name": self.name, "id": self.id, "source": self.source}


@dataclass
class Graph:
    """What a deployment declares or has: its resources and where it is placed."""

    resources: list[Resource]
    deployment: str
    region: str
    requested_region: str
    allowed_regions: tuple[str, ...]
    source: str
    errors: dict[str, str] = field(default_factory=dict)  # resource type -> why it could not be read (live)
    # resource type -> why it was not looked at (live: e.g. Kubernetes objects without --kubeconfig)
    unassessed: dict[str, str] = field(default_factory=dict)
    cloud: str | None = None  # aws | gcp: the checks of this cloud (and Kubernetes) apply
    # live: why the deployment was not found (no resource carries its tag): the report's headline says so
    not_found: str | None = None

    def by_type(self, *types: str) -> list[Resource]:
        return [r for r in self.resources if r.type in types]

    def in_order(self) -> Graph:
        """The same graph with its resources in one order (type token, name, id, region), whatever order a plan
        recorded or a collector listed them in: findings and reports come out the same for the same resources."""
        ordered = sorted(self.resources, key=lambda r: (r.type, r.name, r.id, r.region or ""))
        errors, unassessed = dict(sorted(self.errors.items())), dict(sorted(self.unassessed.items()))
        return replace(self, resources=ordered, errors=errors, unassessed=unassessed)

    def related(self, type_token: str, key: str, value: str) -> list[Resource]:
        """Resources of a type whose input `key` names `value` (e.g. the versioning of a bucket)."""
        return [r for r in self.by_type(type_token) if r.get(key) == value]


@dataclass(frozen=True)
class Evidence:
    path: str
    value: Any

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "value": self.value}


@dataclass(frozen=True)
class Verdict:
    status: Status
    evidence: tuple[Evidence, ...] = ()
    reason: str = ""


def verdict(ok: bool, path: str, value: Any, reason: str = "") -> Verdict:
    return Verdict(Status.PASS if ok else Status.FAIL, (Evidence(path, value),), reason)


def not_applicable(reason: str) -> Verdict:
    return Verdict(Status.NOT_APPLICABLE, (), reason)


def not_assessed(reason: str, path: str = "", value: Any = None) -> Verdict:
    """The check concerns this resource but the evidence it needs is not there: never read as a pass."""
    return Verdict(Status.NOT_ASSESSED, (Evidence(path, value),) if path else (), reason)


def exception(reason: str, path: str = "", value: Any = None) -> Verdict:
    """A property byoc declines by design: reported with its reason, never counted as a pass or a failure."""
    return Verdict(Status.EXCEPTION, (Evidence(path, value),) if path else (), reason)


Evaluate = Callable[[Resource, Graph], Verdict]


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    severity: str  # critical | high | medium | low
    resource_types: tuple[str, ...]
    controls: tuple[str, ...]
    remediation: str
    risk: str
    evaluate: Evaluate
    cloud: str  # aws | gcp | kubernetes | any

    def applies_to(self, resource: Resource) -> bool:
        return resource.type in self.resource_types


REGISTRY: list[Check] = []


def check(
    *,
    id: str,
    title: str,
    severity: str,
    resource_types: Iterable[str],
    controls: Iterable[str],
    remediation: str,
    risk: str,
    cloud: str,
) -> Callable[[Evaluate], Evaluate]:
    """Register a check: one small unit with its metadata and one evaluation per resource."""

    def register(function: Evaluate) -> Evaluate:
        declared = tuple(controls)
        for ref in declared:
            control(ref)  # a check may only cite controls the catalogs hold
        REGISTRY.append(Check(id, title, severity, tuple(resource_types), declared, remediation, risk, function, cloud))
        return function

    return register


@dataclass(frozen=True)
class Finding:
    check: Check
    status: Status
    resource: Resource
    evidence: tuple[Evidence, ...]
    reason: str

    def controls(self, selected: Iterable[str] | None = None) -> list[str]:
        wanted = set(selected) if selected is not None else None
        return [c for c in self.check.controls if wanted is None or c.split(":")[0] in wanted]

    def as_dict(self, selected: Iterable[str] | None = None) -> dict[str, Any]:
        return {
            "check_id": self.check.id,
            "title": self.check.title,
            "status": self.status.value,
            "severity": self.check.severity,
            "resource": self.resource.ref,
            "region": self.resource.region,
            "controls": self.controls(selected),
            "evidence": [e.as_dict() for e in self.evidence],
            "reason": self.reason,
            "remediation": self.check.remediation,
        }
