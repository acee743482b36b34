"""The compliance model: frameworks and controls (data), resources to check, checks, findings.

Checks read a `Graph` of resources in one shape whatever their source: the recorded plan (Pulumi type tokens and
the inputs Pulumi sends, camelCase) or the live account (collectors translate API answers into the same shape).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

CATALOGS = Path(__file__).parent / "catalogs"
# Which checks evidence which control: one file per framework and provider (compliance/catalogs/mappings/*.yaml).
MAPPINGS = CATALOGS / "mappings"
PROVIDERS = ("aws", "gcp", "kubernetes")  # a check's `cloud`; Kubernetes checks judge deployments on either cloud
# The order of a check's controls in findings and reports: the frameworks as `--framework` lists them by default
# (byoc.spec.FRAMEWORKS; not imported, it would load pydantic), then each catalog's own order.
FRAMEWORK_ORDER = ("hipaa", "soc2", "iso27001")


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
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        controls = tuple(Control(data["framework"], c["id"], c["title"], c["description"]) for c in data["controls"])
        found[data["framework"]] = Framework(data["framework"], data["title"], data["source"], controls)
    return found


@dataclass(frozen=True)
class Resource:
    type: str
    name: str
    id: str
    inputs: Mapping[str, Any]
    source: str  # "plan" or "live"
    region: str | None = None
    # the Pulumi stack that declares it (a plan: one per region of a multi-region deployment, plus the global layer)
    stack: str | None = None

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
    # the keys the deployment uses that byoc does not create (encryption.kms_key): a plan holds only their ARN
    customer_keys: tuple[str, ...] = ()
    # live: the keys the deployment uses that the account says AWS manages (KeyManager AWS)
    aws_managed_keys: tuple[str, ...] = ()
    # a plan: every region the deployment is placed in (the primary first); each must lie in allowed_regions and
    # every regional resource in one of them. Empty: the deployment's one region, `region`.
    regions: tuple[str, ...] = ()
    # a plan of several stacks: the global layer's stack (its resources span every region), and the stack this
    # graph is the part of (compliance.evaluate judges each region's stack on its own resources)
    global_stack: str | None = None
    stack: str | None = None

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
    remediation: str
    risk: str
    evaluate: Evaluate
    cloud: str  # aws | gcp | kubernetes
    # "framework:control id" refs, from compliance/catalogs/mappings/ (bind_controls), never written in code
    controls: tuple[str, ...] = ()

    def applies_to(self, resource: Resource) -> bool:
        return resource.type in self.resource_types


REGISTRY: list[Check] = []


def check(
    *,
    id: str,
    title: str,
    severity: str,
    resource_types: Iterable[str],
    remediation: str,
    risk: str,
    cloud: str,
) -> Callable[[Evaluate], Evaluate]:
    """Register a check: one small unit with its metadata and one evaluation per resource.

    Its controls are data: the mapping files list it under each control it evidences (`bind_controls`).
    """

    def register(function: Evaluate) -> Evaluate:
        REGISTRY.append(Check(id, title, severity, tuple(resource_types), remediation, risk, function, cloud))
        return function

    return register


class MappingError(ValueError):
    """A mapping file that would drop or invent evidence; the message names the file, the control and the check."""


def repo_path(path: Path) -> str:
    """A mapping file as a maintainer finds it: compliance/catalogs/mappings/hipaa_aws.yaml (else its full path)."""
    root = Path(__file__).parent.parent
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def mapping_files(folder: Path = MAPPINGS) -> list[str]:
    """The mapping files, as a maintainer finds them (compliance/catalogs/mappings/hipaa_aws.yaml, ...)."""
    return [repo_path(path) for path in sorted(folder.glob("*.yaml"))]


def _requirements(path: Path) -> tuple[str, str, list[tuple[str, list[str]]]]:
    """(framework, provider, [(control id, [check ids])]) of one mapping file, its shape checked."""
    where = repo_path(path)
    try:
        # libyaml's safe loader where PyYAML has it: these files load on every report (pure Python: ~25 ms)
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise MappingError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("requirements"), list):
        raise MappingError(f"{where}: needs `framework`, `provider` and a list `requirements: [{{id, checks}}]`")
    framework, provider = str(data.get("framework")), str(data.get("provider"))
    if path.name != f"{framework}_{provider}.yaml":
        raise MappingError(
            f"{where}: says framework {framework!r}, provider {provider!r}; "
            f"name it {framework}_{provider}.yaml or fix those keys"
        )
    if framework not in frameworks():
        raise MappingError(f"{where}: no catalog for framework {framework!r} (known: {', '.join(frameworks())})")
    if provider not in PROVIDERS:
        raise MappingError(f"{where}: unknown provider {provider!r} (use one of {', '.join(PROVIDERS)})")
    found: list[tuple[str, list[str]]] = []
    for entry in data["requirements"]:
        if not isinstance(entry, dict) or "id" not in entry:
            raise MappingError(f"{where}: each requirement needs an `id` (a control of the catalog): {entry!r}")
        control_id, checks = str(entry["id"]), entry.get("checks") or []
        if not isinstance(checks, list) or not all(isinstance(c, str) for c in checks):
            raise MappingError(f"{where}: control {control_id}: `checks` must be a list of check ids")
        found.append((control_id, checks))
    return framework, provider, found


def load_mappings(checks: Sequence[Check], folder: Path = MAPPINGS) -> dict[str, tuple[str, ...]]:
    """Each check's controls, as refs (`{"kms_cmk_rotation_enabled": ("hipaa:164.312(a)(2)(iv)", ...)}`), read from
    the files `<framework>_<provider>.yaml` in `folder`; each control lists the ids of the checks that evidence it.

    A check's refs come in one order: FRAMEWORK_ORDER, then the catalog's order of controls.

    Raises MappingError, naming the file, the control and the check, for: a check id that no check of that provider
    has, a control id the framework's catalog does not hold, a control or check listed twice, a check that no file
    maps to any control. A typo therefore fails at load and can never silently drop evidence.
    """
    by_id = {c.id: c for c in checks}
    if len(by_id) != len(checks):
        twice = sorted({c.id for c in checks if sum(other.id == c.id for other in checks) > 1})
        raise MappingError(f"check id {', '.join(twice)} is registered twice: a mapping line could not tell them apart")
    if stray := sorted(p.name for p in folder.glob("*.yml")):
        raise MappingError(f"{repo_path(folder)}: {', '.join(stray)} would not be read: name mapping files *.yaml")
    mapped: dict[str, set[str]] = {c.id: set() for c in checks}
    seen_files: dict[str, list[str]] = {p: [] for p in PROVIDERS}
    for path in sorted(folder.glob("*.yaml")):
        framework, provider, requirements = _requirements(path)
        where = repo_path(path)
        seen_files[provider].append(where)
        catalog = frameworks()[framework]
        known = [c.id for c in catalog.controls]
        listed: set[str] = set()
        for control_id, check_ids in requirements:
            if control_id not in known:
                # every id, not a guess: citations differ by one letter or number (164.312(d) and (e)(1))
                raise MappingError(
                    f"{where}: control {control_id} (listing {', '.join(check_ids) or 'no check'}) is not in "
                    f"compliance/catalogs/{framework}.yaml (its controls: {', '.join(known)})"
                )
            if control_id in listed:
                raise MappingError(f"{where}: control {control_id} is listed twice: merge its checks into one")
            listed.add(control_id)
            for check_id in check_ids:
                owner = by_id.get(check_id)
                if owner is None:
                    ours = [c.id for c in checks if c.cloud == provider]
                    hint = difflib.get_close_matches(check_id, ours, n=1)
                    raise MappingError(
                        f"{where}: control {control_id} lists check {check_id}, which does not exist"
                        + (f"; did you mean {hint[0]}?" if hint else f" (no {provider} check has that id)")
                    )
                if owner.cloud != provider:
                    raise MappingError(
                        f"{where}: control {control_id} lists check {check_id}, a {owner.cloud} check: "
                        f"map it in {framework}_{owner.cloud}.yaml"
                    )
                ref = f"{framework}:{control_id}"
                if ref in mapped[check_id]:
                    raise MappingError(f"{where}: control {control_id} lists check {check_id} twice")
                mapped[check_id].add(ref)
    for check_id, refs in mapped.items():
        if not refs:
            cloud = by_id[check_id].cloud
            raise MappingError(
                f"check {check_id} ({cloud}) is mapped to no control: list it under each control it evidences in "
                f"{', '.join(seen_files[cloud]) or repo_path(folder / f'<framework>_{cloud}.yaml')}"
            )
    order = {
        control.ref: (FRAMEWORK_ORDER.index(f.id) if f.id in FRAMEWORK_ORDER else len(FRAMEWORK_ORDER), f.id, i)
        for f in frameworks().values()
        for i, control in enumerate(f.controls)
    }
    return {check_id: tuple(sorted(refs, key=order.__getitem__)) for check_id, refs in mapped.items()}


def bind_controls(registry: list[Check], folder: Path = MAPPINGS) -> None:
    """Give every registered check its controls from the mapping files (in place); raises MappingError."""
    mapped = load_mappings(registry, folder)
    registry[:] = [replace(c, controls=mapped[c.id]) for c in registry]


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
            **({"stack": self.resource.stack} if self.resource.stack else {}),
            "controls": self.controls(selected),
            "evidence": [e.as_dict() for e in self.evidence],
            "reason": self.reason,
            "remediation": self.check.remediation,
        }
