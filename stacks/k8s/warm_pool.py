"""The warm pool (spec cold_start.warm_pool): GPU nodes kept up with the images pulled and no replica, so that a
wake from zero skips the node launch.

Neither Karpenter's NodePool nor GKE's cluster autoscaler keeps an idle node for a workload that does not exist yet,
so the pool is held the way both projects document for headroom: placeholder pods with the serving pod's requests
and a PriorityClass below every other pod's. The scheduler preempts a placeholder the moment a serving replica needs
its place (the replica starts on a node that is already up, its images on it); the evicted placeholder goes pending
and the autoscaler launches a node for it, so the pool refills behind the wake ("How can I configure overprovisioning
with Cluster Autoscaler?", kubernetes/autoscaler cluster-autoscaler/FAQ.md; GKE docs, "Provision extra compute
capacity for rapid Pod scaling"; Karpenter runs the same pattern, its scheduler counting pending pods alike).

The placeholders hold GPUs, so the GPU-hour budget counts them (stacks/k8s/budget.py counts every running pod's GPU
requests) and, when the budget caps replicas (budget.cap_replicas), a spent budget stops the pool too: a KEDA
ScaledObject keeps the placeholders at the pool's size while the period's budget is unspent and at zero once it is
spent, until the period ends (warm nodes are pure cost once serving is capped; Karpenter and the cluster autoscaler
then remove the empty nodes).

Each placeholder's init container runs the runtime image and its container sleeps in the serving image, so both
images are on the warm node before any replica needs them. The weights too with cold_start.weights_cache
node_cache: the placeholder mounts the serving pods' claim (stacks/k8s/weights.py) and its init container reads and
checks the whole artifact through it once, which leaves it in the node's Mountpoint cache, shared by every pod of the
node that mounts the claim; the weights-holder DaemonSet keeps that Mountpoint when the replica preempts the
placeholder (stacks/k8s/weights.py render_holder). Without
node_cache a replica fetches the weights into its own emptyDir (a node-wide cache of the pod's own would need a
hostPath, which the namespace's restricted Pod Security level forbids).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pulumi_kubernetes as k8s

from byoc.names import resource_name
from stacks.k8s import budget as gpu_budget
from stacks.k8s.weights import MOUNT, verify_command

if TYPE_CHECKING:
    from stacks.k8s.serving import ServingStack

# Below the default priority (0) of the serving pods, and never preempting anything itself.
PLACEHOLDER_PRIORITY = -10


def budget_query(namespace: str, placeholders: int) -> str:
    """PromQL: the placeholders wanted, `placeholders` while the period's GPU-hour budget is unspent (or not counted
    yet: no series), 0 once it is spent."""
    return f"{placeholders} * ({gpu_budget.fraction_query(namespace)} < bool 1) or vector({placeholders})"


def warm_pool(stack: ServingStack, addons: dict[str, Any] | None = None) -> Any | None:
    """The PriorityClass and the placeholder Deployment of the warm pool, and with a budget that caps replicas its
    ScaledObject that empties the pool once the budget is spent; None when cold_start.warm_pool is 0."""
    from stacks.k8s.serving import (
        GPU_TOLERATION,
        container_security,
        image_annotations,
        labels,
        pod_security,
        prometheus_url,
    )

    deployment = stack.deployment
    caches = deployment.caches
    if caches is None or caches.warm_pool.nodes == 0:
        return None
    component = "warm-pool"
    priority = stack._resource(
        k8s.scheduling.v1.PriorityClass,
        "warm-pool-priority",
        metadata={"name": resource_name(deployment.name, "warm-pool"), "labels": labels(deployment, component)},
        value=PLACEHOLDER_PRIORITY,
        preemption_policy="Never",
        global_default=False,
        description="byoc warm pool placeholders: preempted by any serving replica",
    )
    # the serving pod's requests (its whole slot and its GPUs), so that one placeholder holds one replica's place
    quantities = {
        **deployment.pods.serving_pod.quantities(),
        "nvidia.com/gpu": str(deployment.shape.count),
        "ephemeral-storage": "1Gi",
    }
    resources = {"requests": quantities, "limits": dict(quantities)}
    small = {"cpu": "100m", "memory": "128Mi", "ephemeral-storage": "100Mi"}
    match = {"app.kubernetes.io/name": component, "app.kubernetes.io/instance": deployment.name}
    probe = {"exec": {"command": ["true"]}, "periodSeconds": 60}
    shared = stack.weights_volume  # node_cache: read the weights into the node's cache as well
    pull: dict[str, Any] = {"command": ["byoc", "--version"], "resources": {"requests": small, "limits": small}}
    if shared is not None:
        # hashing the whole artifact wants the serving pod's init share, not a token one (byoc/sizing.py)
        reader = {**deployment.pods.init.quantities(), "ephemeral-storage": small["ephemeral-storage"]}
        pull = {
            "command": verify_command(),
            "volumeMounts": [{"name": "models", "mountPath": MOUNT, "readOnly": True}],
            "resources": {"requests": reader, "limits": dict(reader)},
        }
    pool = stack._namespaced(
        k8s.apps.v1.Deployment,
        "warm-pool",
        {
            "name": stack._object_name("warm-pool"),
            "labels": labels(deployment, component),
            "annotations": image_annotations(deployment),
        },
        depends_on=[priority],
        spec={
            "replicas": caches.warm_pool.placeholders,
            "selector": {"matchLabels": match},
            "template": {
                "metadata": {"labels": labels(deployment, component)},
                "spec": {
                    "priorityClassName": priority.metadata.apply(lambda m: m["name"]),
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(),
                    "terminationGracePeriodSeconds": 0,  # nothing to drain: a replica is waiting for the place
                    "nodeSelector": stack.foundation.gpu_node_selector,
                    "tolerations": [GPU_TOLERATION],
                    "initContainers": [
                        {
                            # pulls the runtime image (the serving pod's fetch step) onto the node
                            "name": "pull-runtime",
                            "image": deployment.images["runtime"],
                            "imagePullPolicy": "Always",
                            **pull,
                            "securityContext": container_security(),
                        }
                    ],
                    **({"volumes": [shared]} if shared is not None else {}),
                    "containers": [
                        {
                            # holds the GPUs and the slot in the serving image, which is pulled onto the node
                            "name": "placeholder",
                            "image": deployment.images["serving"],
                            "imagePullPolicy": "Always",
                            "command": ["sleep", "infinity"],
                            "securityContext": container_security(),
                            "resources": resources,
                            "readinessProbe": probe,
                            "livenessProbe": probe,
                        }
                    ],
                },
            },
        },
    )
    budget = deployment.budget
    if budget is not None and budget.cap_replicas is not None:
        placeholders = caches.warm_pool.placeholders
        stack._custom(
            "keda.sh/v1alpha1",
            "ScaledObject",
            "warm-pool-scaler",
            {"name": stack._object_name("warm-pool"), "labels": labels(deployment, component)},
            {
                "scaleTargetRef": {"name": stack._object_name("warm-pool")},
                "minReplicaCount": 0,
                "maxReplicaCount": placeholders,
                "pollingInterval": 60,  # the budget rules evaluate once a minute (stacks/k8s/budget.py)
                "triggers": [
                    {
                        # AverageValue against 1: the HPA asks for the query's value in placeholders; at 0 KEDA
                        # deactivates the target to minReplicaCount 0 (keda.sh/docs/2.18 ScaledObject spec)
                        "type": "prometheus",
                        "name": "budget",
                        "metadata": {
                            "serverAddress": prometheus_url(deployment),
                            "query": budget_query(deployment.namespace, placeholders),
                            "threshold": "1",
                            "activationThreshold": "0",
                        },
                    }
                ],
            },
            depends_on=[pool, *([addons["keda"]] if addons and "keda" in addons else [])],
        )
    return pool
