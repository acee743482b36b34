"""What `byoc destroy` deletes through the cluster's API before the stack goes, while the controllers that made it
still run: the gateway's LoadBalancer Service (its cloud load balancer), the PersistentVolumeClaims (their volumes),
and a node provisioner's pools and claims where the stack does not own them (Karpenter: its NodePools, then every
NodeClaim's instance). byoc.lifecycle runs it between DELETING and `pulumi destroy`; the sweep of tagged leftovers
after the stack (Cloud.sweep) finds what an unreachable cluster kept it from deleting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from byoc.clouds import get_cloud
from byoc.names import resource_name
from byoc.registry import Record

if TYPE_CHECKING:
    from byoc.cluster_api import ClusterApi

ClusterFactory = Callable[[Record], "ClusterApi"]


@dataclass
class Waits:
    """How long the pre-destroy waits for each controller (seconds) and how often it looks."""

    gateway_s: float = 600.0
    volumes_s: float = 300.0
    node_claims_s: float = 900.0
    poll_s: float = 10.0
    orphans_s: float = 10.0  # `unlock`: how long an orphaned pulumi has to stop on SIGINT before SIGKILL


@dataclass
class Teardown:
    """The pre-destroy steps of one deployment's cluster (`cluster_for` opens it; `say` reports progress)."""

    cluster_for: ClusterFactory
    say: Callable[[str], None]
    waits: Waits = field(default_factory=Waits)
    sleep: Callable[[float], None] = time.sleep

    def cluster_objects(self, record: Record) -> dict[str, Any]:
        from byoc.cluster_api import ClusterUnreachable

        namespace = resource_name(record.name)
        try:
            cluster = self.cluster_for(record)
            return {
                "services": [object_name(s) for s in cluster.list("services", namespace) if is_load_balancer(s)],
                "persistentvolumeclaims": [object_name(p) for p in cluster.list("persistentvolumeclaims", namespace)],
                **self._provisioner_objects(record, cluster),
            }
        except ClusterUnreachable as exc:
            return {"unknown": str(exc)}

    @staticmethod
    def _provisioner_objects(record: Record, cluster: ClusterApi) -> dict[str, list[str]]:
        """The node provisioner's pools and claims that `destroy` deletes first (none where the stack owns them)."""
        provisioner = get_cloud(record.cloud).node_provisioner
        if not (provisioner.pools and provisioner.claims):
            return {}
        return {
            "nodepools": [object_name(p) for p in cluster.list(provisioner.pools)],
            "nodeclaims": [object_name(c) for c in cluster.list(provisioner.claims)],
        }

    def _wait_gone(
        self, cluster: ClusterApi, kind: str, namespace: str | None, names: set[str], limit_s: float
    ) -> bool:
        deadline = time.monotonic() + limit_s
        while True:
            left = {object_name(o) for o in cluster.list(kind, namespace)} & names
            if not left:
                return True
            if time.monotonic() >= deadline:
                return False
            self.sleep(self.waits.poll_s)

    def predestroy(self, record: Record) -> dict[str, Any]:
        """Delete what controllers made while the controllers still run (through the cluster's API).

        An unreachable cluster is reported, not fatal: the sweep after the stack finds what they left."""
        from byoc.cluster_api import ClusterUnreachable

        namespace = resource_name(record.name)
        done: dict[str, Any] = {}
        try:
            cluster = self.cluster_for(record)
            # 1. the gateway's LoadBalancer Service: the load-balancer controller deletes the NLB, then the finalizer
            services = {object_name(s) for s in cluster.list("services", namespace) if is_load_balancer(s)}
            for service in sorted(services):
                cluster.delete("services", service, namespace)
            gone = self._wait_gone(cluster, "services", namespace, services, self.waits.gateway_s)
            done["services"] = {"deleted": sorted(services), "gone": gone}
            # 2. PVCs while the CSI driver runs (it deletes their volumes)
            claims = {object_name(p) for p in cluster.list("persistentvolumeclaims", namespace)}
            for claim in sorted(claims):
                cluster.delete("persistentvolumeclaims", claim, namespace)
            gone = self._wait_gone(cluster, "persistentvolumeclaims", namespace, claims, self.waits.volumes_s)
            done["persistentvolumeclaims"] = {"deleted": sorted(claims), "gone": gone}
            # 3. a node provisioner outside the stack (Karpenter): its pools, then wait for it to terminate every
            # claim (its instances) before it goes with the stack
            provisioner = get_cloud(record.cloud).node_provisioner
            if provisioner.pools and provisioner.claims:
                pools = {object_name(p) for p in cluster.list(provisioner.pools)}
                for pool in sorted(pools):
                    cluster.delete(provisioner.pools, pool)
                claims_before = {object_name(c) for c in cluster.list(provisioner.claims)}
                gone = self._wait_gone(cluster, provisioner.claims, None, claims_before, self.waits.node_claims_s)
                done["nodepools"] = {"deleted": sorted(pools), "nodeclaims": sorted(claims_before), "gone": gone}
        except ClusterUnreachable as exc:
            done["unknown"] = f"{exc}; the sweep after the stack looks for what controllers left"
            self.say(f"cluster: unknown: {done['unknown']}")
        return done


def object_name(obj: dict[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def is_load_balancer(service: dict[str, Any]) -> bool:
    return bool(service.get("spec", {}).get("type") == "LoadBalancer")


def state_resources(record: Record) -> list[Any]:
    state = record.stack_state or {}
    return list((state.get("deployment") or {}).get("resources") or [])
