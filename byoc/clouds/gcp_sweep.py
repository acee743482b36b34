"""Google Cloud sweep after `byoc destroy`: what is left of a deployment once its stack is gone.

Every GCP resource of stacks/gcp that takes labels carries byoc-deployment=<name> (stacks/gcp/context.py): the node
pools' VMs through node_config.resource_labels, the volumes the PD CSI driver creates through the StorageClass's
`labels` parameter (stacks/gcp/cluster.py), so those are found by that label. The
kinds that take no labels in their API are found by the names stacks/gcp gives them, and the report's `tag` says
which way each was found:

kind             API (list)                                           found by
cluster          GKE projects.locations.clusters.list (locations/-)   resourceLabels byoc-deployment (node pools go
                                                                      with the cluster)
instance         Compute instances.aggregatedList                     labels.byoc-deployment filter
disk             Compute disks.aggregatedList (unattached only)       labels.byoc-deployment filter
log-sink         Logging projects.sinks.list                          name byoc-<name>-audit-logs (sinks take no labels)
bucket           Storage buckets.list (prefix byoc-<name>-)           labels byoc-deployment
kms-key          Cloud KMS keyRings/byoc-<name>/cryptoKeys.list       labels byoc-deployment
service-account  IAM projects.serviceAccounts.list                    display name "byoc <name>: ..." (no labels)
firewall         Compute firewalls.list                               on network byoc-<name> (no labels)
router           Compute routers.list                                 name byoc-<name> (no labels)
subnetwork       Compute subnetworks.list                             on network byoc-<name> (no labels)
network          Compute networks.list                                name byoc-<name> (no labels)

Not swept: load balancers GKE's service controller made for a Service (named after the Service's uid, no byoc
label; `byoc destroy` deletes the gateway Service before the stack for that reason), and IAM bindings (not
resources). Cloud KMS keys and key rings cannot be deleted at all: the sweep destroys a labelled key's versions
(each is scheduled for destruction, as `pulumi destroy` does) and reports the key `scheduled`, except a key a
retained bucket still uses. A bucket under a locked retention policy (the audit-log bucket) cannot be deleted
while it holds retained objects and is kept on purpose (stacks/gcp/audit.py): reported `retained`.

Order with `delete` (each kind waits for the one before it: Compute and GKE operations are waited for): cluster ->
instance -> disk -> log-sink -> bucket (its objects first) -> kms-key -> service-account -> firewall -> router ->
subnetwork -> network. A deletion refused because something still uses the resource (HTTP 400
resourceInUseByAnotherResource, 409/412) is retried with exponential backoff.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from byoc.clouds.checks import SweepAction, SweepReport, SweepTarget, SweptResource
from byoc.clouds.gcp_api import ApiError, GcpSession, GcpUnavailable
from byoc.names import DEPLOYMENT_LABEL, resource_name

# Key versions in these states are already as destroyed as Cloud KMS lets them be.
KEY_VERSION_GONE = frozenset({"DESTROY_SCHEDULED", "DESTROYED"})
RETRYABLE_REASONS = frozenset({"resourceInUseByAnotherResource", "resourceNotReady", "FAILED_PRECONDITION"})


@dataclass
class Leftover:
    kind: str
    id: str  # what the report shows (a name, or zone/name)
    tag: str  # how it was found
    path: str  # the API path that deletes it
    service: str
    detail: dict[str, Any]


def _last(url: Any) -> str:
    return str(url or "").rsplit("/", 1)[-1]


class Sweeper:
    """Find (and with `delete`, remove) a deployment's leftovers in its project and region."""

    def __init__(
        self,
        target: SweepTarget,
        delete: bool,
        attempts: int = 6,
        first_delay_s: float = 2.0,
        wait_s: float = 1200.0,
        sleep: Callable[[float], None] = time.sleep,
        on_progress: Callable[[str], None] = lambda _: None,
        session: GcpSession | None = None,
    ) -> None:
        self.target = target
        self.delete = delete
        self.attempts = attempts
        self.first_delay_s = first_delay_s
        self.wait_s = wait_s
        self.sleep = sleep
        self.on_progress = on_progress
        self.session = session
        self.report = SweepReport(region=target.region)
        self.retained_keys: set[str] = set()  # keys a retained bucket still encrypts with

    @property
    def name(self) -> str:
        return self.target.deployment

    @property
    def label(self) -> str:
        return f"{DEPLOYMENT_LABEL}={self.name}"

    @property
    def label_filter(self) -> dict[str, str]:
        return {"filter": f"labels.{DEPLOYMENT_LABEL} = {self.name}"}

    def _in_region(self, location: str) -> bool:
        return location == self.target.region or location.startswith(f"{self.target.region}-")

    # -- finding -----------------------------------------------------------------------------------------------
    def find_clusters(self, s: GcpSession) -> list[Leftover]:
        clusters = s.call("GET", "container", f"/projects/{s.project}/locations/-/clusters").get("clusters", [])
        found = []
        for c in clusters:
            location = str(c.get("location", ""))
            if (c.get("resourceLabels") or {}).get(DEPLOYMENT_LABEL) != self.name or not self._in_region(location):
                continue
            pools = ", ".join(str(p.get("name")) for p in c.get("nodePools", []))
            found.append(
                Leftover(
                    "cluster",
                    f"{location}/{c['name']}",
                    self.label + (f" (node pools: {pools})" if pools else ""),
                    f"/projects/{s.project}/locations/{location}/clusters/{c['name']}",
                    "container",
                    c,
                )
            )
        return found

    def _zonal(
        self, s: GcpSession, kind: str, collection: str, keep: Callable[[dict[str, Any]], bool]
    ) -> list[Leftover]:
        items = s.pages("compute", f"/projects/{s.project}/aggregated/{collection}", collection, self.label_filter)
        found = []
        for item in items:
            zone = _last(item.get("zone") or item.get("_scope"))
            if (item.get("labels") or {}).get(DEPLOYMENT_LABEL) != self.name or not self._in_region(zone):
                continue
            if keep(item):
                path = f"/projects/{s.project}/zones/{zone}/{collection}/{item['name']}"
                found.append(Leftover(kind, f"{zone}/{item['name']}", self.label, path, "compute", item))
        return found

    def find_instances(self, s: GcpSession) -> list[Leftover]:
        return self._zonal(s, "instance", "instances", lambda i: True)

    def find_disks(self, s: GcpSession) -> list[Leftover]:
        # an attached disk goes with its VM (or is a live node's): only unattached ones are leftovers
        return self._zonal(s, "disk", "disks", lambda d: not d.get("users"))

    def find_log_sinks(self, s: GcpSession) -> list[Leftover]:
        wanted = resource_name(self.name, "audit-logs")
        sinks = s.pages("logging", f"/projects/{s.project}/sinks", "sinks")
        return [
            Leftover("log-sink", wanted, f"name {wanted}", f"/projects/{s.project}/sinks/{wanted}", "logging", x)
            for x in sinks
            if x.get("name") == wanted
        ]

    def find_buckets(self, s: GcpSession) -> list[Leftover]:
        buckets = s.pages("storage", "/b", "items", {"project": s.project, "prefix": resource_name(self.name, "")})
        return [
            Leftover("bucket", b["name"], self.label, f"/b/{b['name']}", "storage", b)
            for b in buckets
            if (b.get("labels") or {}).get(DEPLOYMENT_LABEL) == self.name
        ]

    def find_kms_keys(self, s: GcpSession) -> list[Leftover]:
        ring = f"/projects/{s.project}/locations/{self.target.region}/keyRings/byoc-{self.name}"
        try:
            keys = s.pages("cloudkms", f"{ring}/cryptoKeys", "cryptoKeys")
        except ApiError as exc:
            if exc.status == 404:  # no key ring: byoc was given a key, or never got that far
                return []
            raise
        return [
            Leftover("kms-key", str(k["name"]), self.label, "/" + str(k["name"]), "cloudkms", k)
            for k in keys
            if (k.get("labels") or {}).get(DEPLOYMENT_LABEL) == self.name
        ]

    def find_service_accounts(self, s: GcpSession) -> list[Leftover]:
        prefix = f"byoc {self.name}:"  # stacks/gcp/identities.py display_name
        accounts = s.pages("iam", f"/projects/{s.project}/serviceAccounts", "accounts")
        return [
            Leftover(
                "service-account",
                str(a["email"]),
                f"display name {a['displayName']!r}",
                f"/projects/{s.project}/serviceAccounts/{a['email']}",
                "iam",
                a,
            )
            for a in accounts
            if str(a.get("displayName", "")).startswith(prefix)
        ]

    @property
    def network(self) -> str:
        return resource_name(self.name)  # stacks/gcp/network.py

    def find_firewalls(self, s: GcpSession) -> list[Leftover]:
        # every rule on byoc's own network: its own and any GKE left (gke-byoc-<name>-...); none elsewhere
        rules = s.pages("compute", f"/projects/{s.project}/global/firewalls", "items")
        return [
            Leftover(
                "firewall",
                r["name"],
                f"network {self.network}",
                f"/projects/{s.project}/global/firewalls/{r['name']}",
                "compute",
                r,
            )
            for r in rules
            if _last(r.get("network")) == self.network
        ]

    def find_routers(self, s: GcpSession) -> list[Leftover]:
        region = self.target.region
        routers = s.pages("compute", f"/projects/{s.project}/regions/{region}/routers", "items")
        return [
            Leftover(
                "router",
                f"{region}/{r['name']}",
                f"name {self.network}",
                f"/projects/{s.project}/regions/{region}/routers/{r['name']}",
                "compute",
                r,
            )
            for r in routers
            if r.get("name") == self.network and _last(r.get("network")) == self.network
        ]

    def find_subnetworks(self, s: GcpSession) -> list[Leftover]:
        region = self.target.region
        subnets = s.pages("compute", f"/projects/{s.project}/regions/{region}/subnetworks", "items")
        return [
            Leftover(
                "subnetwork",
                f"{region}/{n['name']}",
                f"network {self.network}",
                f"/projects/{s.project}/regions/{region}/subnetworks/{n['name']}",
                "compute",
                n,
            )
            for n in subnets
            if _last(n.get("network")) == self.network
        ]

    def find_networks(self, s: GcpSession) -> list[Leftover]:
        networks = s.pages("compute", f"/projects/{s.project}/global/networks", "items")
        return [
            Leftover(
                "network",
                n["name"],
                f"name {self.network}",
                f"/projects/{s.project}/global/networks/{n['name']}",
                "compute",
                n,
            )
            for n in networks
            if n.get("name") == self.network
        ]

    # -- deleting ----------------------------------------------------------------------------------------------
    def _remove(self, s: GcpSession, item: Leftover) -> SweepAction:
        """Delete (or schedule, or keep) one leftover; the action it ends in."""
        if item.kind == "bucket":
            return self._remove_bucket(s, item)
        if item.kind == "kms-key":
            return self._remove_key(s, item)
        operation = s.call("DELETE", item.service, item.path)
        if item.service in ("compute", "container") and operation.get("status"):
            s.wait(operation, item.service, self.wait_s, sleep_s=self.first_delay_s, sleep=self.sleep)
        return "deleted"

    def _retained(self, item: Leftover) -> bool:
        """A bucket under a locked retention policy is kept (and so is the key it encrypts with)."""
        if item.kind == "bucket" and (item.detail.get("retentionPolicy") or {}).get("isLocked"):
            key = (item.detail.get("encryption") or {}).get("defaultKmsKeyName")
            if key:
                self.retained_keys.add(str(key))
            return True
        return item.kind == "kms-key" and item.id in self.retained_keys

    def _remove_bucket(self, s: GcpSession, item: Leftover) -> SweepAction:
        for blob in s.pages("storage", f"{item.path}/o", "items", {"versions": "true"}):
            name = urllib.parse.quote(str(blob["name"]), safe="")
            try:
                s.call("DELETE", "storage", f"{item.path}/o/{name}", {"generation": str(blob.get("generation", ""))})
            except ApiError as exc:
                if exc.status != 404:  # an object gone meanwhile is fine; the bucket's own 404 is not this one
                    raise
        s.call("DELETE", "storage", item.path)
        return "deleted"

    def _remove_key(self, s: GcpSession, item: Leftover) -> SweepAction:
        versions = s.pages("cloudkms", f"{item.path}/cryptoKeyVersions", "cryptoKeyVersions")
        for version in versions:
            if version.get("state") not in KEY_VERSION_GONE:
                s.call("POST", "cloudkms", f"/{version['name']}:destroy")
        return "scheduled"

    def _key_state(self, s: GcpSession, item: Leftover) -> SweepAction:
        """A key whose versions are all scheduled for destruction (or destroyed) is as gone as Cloud KMS allows."""
        versions = s.pages("cloudkms", f"{item.path}/cryptoKeyVersions", "cryptoKeyVersions")
        return "scheduled" if all(v.get("state") in KEY_VERSION_GONE for v in versions) else "found"

    def _delete(self, s: GcpSession, item: Leftover) -> None:
        entry = SweptResource(kind=item.kind, id=item.id, tag=item.tag)
        self.report.resources.append(entry)
        if self._retained(item):
            entry.action = "retained"
            entry.error = (
                "locked retention policy: kept on purpose"
                if item.kind == "bucket"
                else "a retained bucket still encrypts with it: its versions are kept"
            )
            return
        if not self.delete:
            if item.kind == "kms-key":
                entry.action = self._key_state(s, item)
            return
        delay = self.first_delay_s
        for attempt in range(1, self.attempts + 1):
            try:
                entry.action = self._remove(s, item)
                self.on_progress(f"{entry.action} {item.kind} {item.id}")
                return
            except ApiError as exc:
                if exc.status == 404:  # gone meanwhile (a cluster takes its node pools' VMs with it)
                    entry.action = "deleted"
                    return
                busy = exc.status in (409, 412) or bool(RETRYABLE_REASONS & set(exc.reasons))
                if busy and attempt < self.attempts:
                    self.on_progress(f"{item.kind} {item.id}: {exc}; retrying in {delay:.0f}s")
                    self.sleep(delay)
                    delay *= 2
                    continue
                entry.action = "failed"
                entry.error = str(exc)
                return

    def run(self) -> SweepReport:
        """Find every kind in order; with `delete`, remove each before looking at the next."""
        try:
            s = self.session or GcpSession()
        except GcpUnavailable as exc:
            self.report.errors.append(f"could not look: {exc.detail} ({exc.hint})")
            return self.report
        steps: list[tuple[str, Callable[[GcpSession], list[Leftover]]]] = [
            ("cluster", self.find_clusters),
            ("instance", self.find_instances),
            ("disk", self.find_disks),
            ("log-sink", self.find_log_sinks),
            ("bucket", self.find_buckets),
            ("kms-key", self.find_kms_keys),
            ("service-account", self.find_service_accounts),
            ("firewall", self.find_firewalls),
            ("router", self.find_routers),
            ("subnetwork", self.find_subnetworks),
            ("network", self.find_networks),
        ]
        for kind, find in steps:
            try:
                found = find(s)
            except ApiError as exc:
                self.report.errors.append(f"could not list {kind}s: {exc}")
                continue
            for item in sorted(found, key=lambda i: i.id):
                self._delete(s, item)
        return self.report


def sweep(target: SweepTarget, delete: bool, **options: Any) -> SweepReport:
    return Sweeper(target, delete, **options).run()
