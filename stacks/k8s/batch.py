"""Batch inference in the cluster (batch.enabled; nothing of this otherwise): the gateway's batch flags, the batch
worker's Deployment, the worker token both share, and the network policies that let the worker reach the gateway,
DNS, the cloud's credentials endpoint and the object store, nothing else.

The gateway serves OpenAI's Files and Batches API over the batch root, `<artifact bucket>/batch/`, encrypted with
the deployment's artifact key (runtime/serve/batch/layout.py); the worker runs each batch's lines through the
gateway's own path, authenticated by the worker token (runtime/serve/batch/worker.py). Each has its own cloud
identity, which reaches only batch/ (stacks/aws/identities.py, stacks/gcp/identities.py: batch_*).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from byoc.batch import (
    BATCH_PREFIX,
    GATEWAY_ROLE,
    WORKER_LIMITS,
    WORKER_REPLICAS,
    WORKER_REQUESTS,
    WORKER_ROLE,
    WORKER_SCRATCH_MIB,
)

if TYPE_CHECKING:
    from stacks.k8s.serving import ServingStack

# Where the gateway and the worker read the worker token (a Secret volume, never an environment variable).
WORKER_TOKEN_MOUNT = "/etc/byoc/batch-worker"
WORKER_TOKEN_FILE = f"{WORKER_TOKEN_MOUNT}/token"
# 48 letters and digits (about 285 bits): a bearer token the gateway compares, nothing to escape anywhere.
WORKER_TOKEN_LENGTH = 48
# The worker trusts the gateway's own certificate (the Secret's tls.crt only, never its key).
GATEWAY_CA_MOUNT = "/etc/byoc/gateway-tls"
WORKER_COMPONENT = "batch-worker"
HTTPS = 443


def batch_root(stack: ServingStack) -> pulumi.Output[str]:
    """s3://<bucket>/batch/ or gs://<bucket>/batch/: the gateway's and the worker's --batch-store."""
    return pulumi.Output.concat(stack.foundation.artifact_root, "/", BATCH_PREFIX)


def gateway_args(stack: ServingStack) -> list[pulumi.Input[str]]:
    """The gateway's batch flags (runtime/serve/config.py): the batch root, the key every batch object is written
    with, the retention, the worker token it accepts, and --batch-slots-per-replica: the engines' `max_batch_size`
    (the trtllm-serve option the build plan renders into options.yaml, runtime/model_build/plan.py serve_options), so
    batch lines in flight never exceed what the ready engines take at once, less --batch-headroom. Empty without
    batch."""
    deployment = stack.deployment
    if not deployment.batch.enabled:
        return []
    # trtllm-serve queues what is beyond max_batch_size (docs/FACTS.md): a batch line past it would wait in the
    # engine, ahead of online requests that arrive after it
    slots = int(stack.plan.options["max_batch_size"])
    args: list[pulumi.Input[str]] = ["--batch-store", batch_root(stack)]
    if stack.foundation.artifact_key is not None:
        args += ["--batch-kms-key", stack.foundation.artifact_key]
    return [
        *args,
        "--batch-retention-hours",
        str(deployment.batch.retention_hours),
        "--batch-worker-token-file",
        WORKER_TOKEN_FILE,
        "--batch-slots-per-replica",
        str(slots),
    ]


def token_volume(stack: ServingStack) -> dict[str, Any]:
    return {
        "name": "batch-worker-token",
        "secret": {"secretName": stack._object_name("batch-worker-token"), "defaultMode": 0o440},
    }


TOKEN_MOUNT = {"name": "batch-worker-token", "mountPath": WORKER_TOKEN_MOUNT, "readOnly": True}


def worker_token(stack: ServingStack) -> Any:
    """The worker token Secret: generated once by pulumi-random and kept as a Pulumi secret (encrypted in the
    stack's state; "[secret]" in an offline plan and its manifests, byoc/engines/offline.py), as the shared store's
    AUTH token is (stacks/aws/store.py)."""
    deployment = stack.deployment
    token = random.RandomPassword(
        f"{deployment.name}-batch-worker-token",
        length=WORKER_TOKEN_LENGTH,
        special=False,
        opts=pulumi.ResourceOptions(parent=stack),
    )
    return stack._namespaced(
        k8s.core.v1.Secret,
        "batch-worker-token",
        {"name": stack._object_name("batch-worker-token"), "labels": _labels(stack, WORKER_COMPONENT)},
        type="Opaque",
        string_data={"token": pulumi.Output.secret(token.result)},
    )


def _labels(stack: ServingStack, component: str) -> dict[str, str]:
    from stacks.k8s.serving import labels

    return labels(stack.deployment, component)


def _selector(stack: ServingStack, component: str) -> dict[str, str]:
    from stacks.k8s.serving import selector

    return selector(stack.deployment, component)


def worker(stack: ServingStack, account: Any, token: Any, gateway: Any) -> Any:
    """The batch worker: one replica (it leases each batch, runtime/serve/batch/conditional.py, so a second pod
    would wait for the lease rather than send lines twice; one is enough, the engines set the pace, and Recreate
    stops the old pod before the new one starts, which then waits out the old pod's lease), CPU only, non-root,
    read-only root filesystem, no privilege escalation, every capability dropped, seccomp RuntimeDefault (the
    namespace enforces Pod Security `restricted`)."""
    from stacks.k8s.serving import container_security, image_annotations, pod_security

    deployment = stack.deployment
    gateway_host = f"{stack._object_name('gateway')}.{stack.namespace}.svc.cluster.local"
    command: list[pulumi.Input[str]] = [
        "python",
        "-m",
        "runtime.serve.batch.worker",
        # the gateway's Service (443 -> the pods' 8080), over TLS like every client
        "--gateway",
        f"https://{gateway_host}",
        "--batch-store",
        batch_root(stack),
    ]
    if stack.foundation.artifact_key is not None:
        command += ["--batch-kms-key", stack.foundation.artifact_key]
    command += [
        "--worker-token-file",
        WORKER_TOKEN_FILE,
        "--retention-hours",
        str(deployment.batch.retention_hours),
        # the gateway's certificate, for this client only (the object store clients keep their own CA bundles)
        "--gateway-ca-file",
        f"{GATEWAY_CA_MOUNT}/tls.crt",
    ]
    # Ready (and alive) while the gateway accepts connections: the worker has no port of its own, and with the
    # gateway away it only waits (it resumes where it stopped), so a restart after minutes of that costs nothing.
    reach_gateway = {
        "exec": {
            "command": [
                "python",
                "-c",
                f"import socket; socket.create_connection(({gateway_host!r}, {HTTPS}), timeout=3).close()",
            ]
        },
        "timeoutSeconds": 5,
    }
    return stack._namespaced(
        k8s.apps.v1.Deployment,
        "batch-worker",
        {
            "name": stack._object_name(WORKER_COMPONENT),
            "labels": _labels(stack, WORKER_COMPONENT),
            "annotations": image_annotations(deployment),
        },
        depends_on=[token, gateway],
        spec={
            "replicas": WORKER_REPLICAS,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": _selector(stack, WORKER_COMPONENT)},
            "template": {
                "metadata": {"labels": _labels(stack, WORKER_COMPONENT)},
                "spec": {
                    "serviceAccountName": account.metadata["name"],
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(),
                    # lets an in-flight line finish and its part be committed before the pod goes
                    "terminationGracePeriodSeconds": 120,
                    "containers": [
                        {
                            "name": "batch-worker",
                            "image": deployment.images["runtime"],
                            "imagePullPolicy": "Always",
                            "command": command,
                            "env": [{"name": "HOME", "value": "/tmp"}],
                            "securityContext": container_security(),
                            "resources": {
                                "requests": WORKER_REQUESTS.quantities(),
                                "limits": WORKER_LIMITS.quantities(),
                            },
                            "readinessProbe": {**reach_gateway, "periodSeconds": 10},
                            "livenessProbe": {**reach_gateway, "periodSeconds": 30, "failureThreshold": 10},
                            "volumeMounts": [
                                TOKEN_MOUNT,
                                {"name": "gateway-ca", "mountPath": GATEWAY_CA_MOUNT, "readOnly": True},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        token_volume(stack),
                        {
                            "name": "gateway-ca",
                            "secret": {
                                "secretName": stack._object_name("gateway-tls"),
                                "items": [{"key": "tls.crt", "path": "tls.crt"}],
                            },
                        },
                        {"name": "tmp", "emptyDir": {"sizeLimit": f"{WORKER_SCRATCH_MIB}Mi"}},
                    ],
                },
            },
        },
    )


def network_policies(stack: ServingStack) -> None:
    """The worker reaches the gateway's pods (the Service's target port), the cloud's credentials endpoint and
    the object store over HTTPS, and nothing answers it; the gateway additionally takes the worker's requests and
    reaches the object store. DNS comes from the namespace's allow-dns policy, and the default-deny policy stays
    under both (stacks/k8s/serving.py): NetworkPolicies add up.

    Object stores have no fixed addresses to narrow HTTPS to, so it goes anywhere but the VPC's own range (not the
    cluster's API endpoint, not another in-VPC service on 443)."""
    from stacks.k8s.serving import GATEWAY_PORT

    foundation = stack.foundation
    deployment = stack.deployment
    store_out = {
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": [foundation.vpc_cidr]}}],
        "ports": [{"protocol": "TCP", "port": HTTPS}],
    }
    credentials = list(foundation.identity_egress)

    def policy(suffix: str, spec: dict[str, Any]) -> None:
        from stacks.k8s.serving import labels

        stack._namespaced(
            k8s.networking.v1.NetworkPolicy,
            f"netpol-{suffix}",
            {"name": stack._object_name(suffix), "labels": labels(deployment, "network-policy")},
            spec=spec,
        )

    worker_pods = {"podSelector": {"matchLabels": _selector(stack, WORKER_COMPONENT)}}
    gateway_pods = {"podSelector": {"matchLabels": _selector(stack, GATEWAY_ROLE)}}
    policy(
        WORKER_COMPONENT,
        {
            **worker_pods,
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [
                {"to": [gateway_pods], "ports": [{"protocol": "TCP", "port": GATEWAY_PORT}]},
                *credentials,
                store_out,
            ],
        },
    )
    policy(
        "gateway-batch",
        {
            **gateway_pods,
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [worker_pods], "ports": [{"protocol": "TCP", "port": GATEWAY_PORT}]}],
            "egress": [*credentials, store_out],
        },
    )


def render(stack: ServingStack, accounts: dict[str, Any], token: Any, gateway: Any) -> None:
    """The worker and its network policies, once the gateway exists (batch.enabled only)."""
    if not stack.deployment.batch.enabled:
        return
    worker(stack, accounts[WORKER_ROLE], token, gateway)
    # A drain may take the worker (it resumes from its committed parts); the budget says so explicitly, as every
    # Deployment of the namespace has one (compliance k8s_disruption_budgets).
    stack._namespaced(
        k8s.policy.v1.PodDisruptionBudget,
        "batch-worker-pdb",
        {"name": stack._object_name(WORKER_COMPONENT), "labels": _labels(stack, WORKER_COMPONENT)},
        spec={"maxUnavailable": 1, "selector": {"matchLabels": _selector(stack, WORKER_COMPONENT)}},
    )
    network_policies(stack)
