"""The serving stack on Kubernetes, the same for every cloud: namespace, model build Job, trtllm-serve Deployment,
gateway, KEDA autoscaling (to zero and back), monitoring, GPU add-ons and network policies.

A cloud's program builds its foundation, then hands this stack a Kubernetes provider and a `Foundation` (what
differs per cloud: the artifact store URI, the GPU node selector, load balancer annotations, GPU add-on values).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml

from byoc.catalogs import load_catalog
from byoc.names import resource_name
from byoc.resolve import Deployment
from byoc.sizing import CONTAINER_FILES_GIB, SERVING_SCRATCH_GIB, Resources
from runtime.model_build.plan import SERVE_PORT, BuildPlan, build_plan
from stacks.k8s import batch as stack_batch
from stacks.k8s import budget as gpu_budget
from stacks.k8s import weights as node_weights
from stacks.k8s.warm_pool import warm_pool
from stacks.multi_region import GATEWAY_SERVICE_PORT, gateway_region_args, is_primary

MONITORING = Path(__file__).parent / "monitoring"
GATEWAY_PORT = 8080
GATEWAY_METRICS_PORT = 9090
ENGINE_STATS_PORT = 9091
RUN_AS = 10001  # a high UID no host account has
# Long enough for in-flight streams to finish once a pod is told to stop (the gateway stops sending it new work).
SERVING_GRACE_SECONDS = 300
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


# The gateway's TLS Secret (kubernetes.io/tls from your PKI or cert-manager) carries ca.crt too: the CA the peer
# regions' gateway certificates chain to, which this gateway verifies when it spills over to them.
GATEWAY_TLS_MOUNT = "/etc/byoc/tls"
# Where the gateway reads the shared store's AUTH password and CA (a Secret volume, never environment variables).
STORE_SECRET_MOUNT = "/etc/byoc/store"
# The gateway runs at least this many replicas (its Deployment and HPA minimum), behind one Service.
GATEWAY_MIN_REPLICAS = 2


@dataclass(frozen=True)
class SharedStore:
    """The gateway replicas' shared store as the cloud renders it (stacks/aws/store.py, stacks/gcp/store.py)."""

    url: pulumi.Input[str]  # rediss://HOST:PORT
    password: pulumi.Input[str]  # a Pulumi secret
    ca_pem: pulumi.Input[str]  # the CA bundle the server's certificate chains to
    port: int
    egress_cidrs: list[str]  # where the store's addresses lie, for the gateway's egress NetworkPolicy


@dataclass(frozen=True)
class Foundation:
    """What the cloud foundation hands the serving stack."""

    artifact_root: pulumi.Input[str]  # e.g. s3://bucket or gs://bucket
    gpu_node_selector: dict[str, str]
    # None: the cluster's own GPU stack (GKE's managed driver, runtime and device plugin) needs no GPU Operator
    gpu_operator_values: dict[str, Any] | None
    vpc_cidr: str
    load_balancer_annotations: dict[str, str] = field(default_factory=dict)
    # the gateway Service's externalTrafficPolicy (None: Kubernetes' default, Cluster)
    external_traffic_policy: str | None = None
    # for the build Job: where model sources are mirrored, the key artifacts are written under
    build_env: dict[str, pulumi.Input[str]] = field(default_factory=dict)
    service_account_annotations: dict[str, dict[str, str]] = field(default_factory=dict)
    # None: gateway.store none (each gateway replica keeps limits in its own memory)
    store: SharedStore | None = None
    # the deployment's artifact key (AWS KMS key ARN, Cloud KMS key id): batch files are written with it
    artifact_key: pulumi.Input[str] | None = None
    # NetworkPolicy egress rules to the endpoint pods get their cloud credentials from (stacks/k8s/batch.py)
    identity_egress: list[dict[str, Any]] = field(default_factory=list)
    # cold_start.weights_cache node_cache: the artifact prefix as a volume cached once per node (None: not offered)
    node_weights: node_weights.NodeWeightsVolume | node_weights.PopulatedWeightsVolume | None = None
    depends_on: list[pulumi.Resource] = field(default_factory=list)


def labels(deployment: Deployment, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": component,
        "app.kubernetes.io/instance": deployment.name,
        "app.kubernetes.io/part-of": "byoc",
        "app.kubernetes.io/managed-by": "byoc",
    }


def selector(deployment: Deployment, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": component, "app.kubernetes.io/instance": deployment.name}


def zone_spread(deployment: Deployment, component: str) -> list[dict[str, Any]]:
    """Replicas spread over zones when they can be (a zone short of GPUs must not block scaling)."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector(deployment, component)},
        }
    ]


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


# GPU pods that must not be evicted to save cost: a running quantization (hours of GPU time) and a serving replica
# (a model reload of minutes; with one replica, an outage). Karpenter's consolidation and drift honour
# karpenter.sh/do-not-disrupt (karpenter.sh/docs/concepts/disruption); the Kubernetes cluster autoscaler (GKE)
# honours safe-to-evict=false. Neither blocks a Deployment's own rolling update, which replaces pods itself; the
# NodePool's terminationGracePeriod bounds how long drift may wait for such pods (docs/operations.md).
DO_NOT_DISRUPT = {
    "karpenter.sh/do-not-disrupt": "true",
    "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
}


def image_annotations(deployment: Deployment) -> dict[str, str]:
    """checkov wants images by digest (CKV_K8S_43). Only byoc's own unpublished default is excused (validate warns
    about it); an image the user pinned by tag is theirs, and the scanner must still see it."""
    if "@sha256:" in deployment.images["runtime"] or deployment.spec.images.runtime is not None:
        return {}
    return {
        "checkov.io/skip1": "CKV_K8S_43=byoc publishes no runtime image to pin; build runtime/Dockerfile into your "
        "registry and set images.runtime to its @sha256 digest"
    }


def load_target_query(deployment: Deployment) -> str:
    """The PromQL whose value per replica the autoscaler holds at the spec's target."""
    ns = f'namespace="{deployment.namespace}"'
    return {
        "concurrent_requests": f"sum(byoc_gateway_in_flight_requests{{{ns}}})",
        "requests_per_second": f"sum(rate(byoc_gateway_requests_total{{{ns}}}[1m]))",
        "tokens_per_second": f"sum(rate(byoc_gateway_output_tokens_total{{{ns}}}[1m]))",
        "queue_depth": f"sum(byoc_gateway_queue_depth{{{ns}}})",
    }[deployment.autoscaling.load_target.type]


# KEDA samples its triggers every POLLING_INTERVAL_S; Prometheus scrapes the gateway every 15 s. A request shorter
# than both is invisible to an instantaneous gauge, so activity looks back over several samples of each.
POLLING_INTERVAL_S = 15
ACTIVITY_WINDOW_S = 4 * POLLING_INTERVAL_S


def activity_query(namespace: str, window_s: int = ACTIVITY_WINDOW_S) -> str:
    """PromQL that is 1 while the deployment is in use, else 0: KEDA's activation signal for scale to zero.

    In use = a request for a served model answered in the last `window_s` seconds (the counter catches requests
    that start and end between two samples), one in flight at any sample in that window, or one held at zero.
    Capped at 1, so this trigger never asks for more than one replica: the load trigger sizes the deployment.
    401s and rate-limited requests (addon "unknown") do not keep GPUs awake.
    """
    ns = f'namespace="{namespace}"'
    window = f"{window_s}s"
    return (
        f'clamp_max((sum(increase(byoc_gateway_requests_total{{{ns},addon!="unknown"}}[{window}])) or vector(0))'
        f" + (sum(max_over_time(byoc_gateway_in_flight_requests{{{ns}}}[{window}])) or vector(0))"
        f" + (sum(byoc_gateway_pending_requests{{{ns}}}) or vector(0)), 1)"
    )


def prometheus_url(deployment: Deployment) -> str:
    if deployment.monitoring.prometheus_url:
        return deployment.monitoring.prometheus_url
    namespace = load_catalog().kubernetes["charts"]["kube_prometheus_stack"]["namespace"]
    return f"http://byoc-monitoring-prometheus.{namespace}.svc:9090"


class ServingStack(pulumi.ComponentResource):
    gateway_service: pulumi.Output[str]
    # the gateway's internal load balancer as its Service status reports it (AWS: the NLB's DNS name; GCP: the
    # forwarding rule's IP address); "" until the cloud has made it
    gateway_lb_address: pulumi.Output[str]

    def __init__(
        self,
        deployment: Deployment,
        provider: k8s.Provider,
        foundation: Foundation,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        name = deployment.name
        super().__init__("byoc:k8s:ServingStack", f"{name}-serving-stack", None, opts)
        self.deployment = deployment
        self.foundation = foundation
        self.plan = build_plan(deployment)
        self.namespace = deployment.namespace
        self._opts = pulumi.ResourceOptions(parent=self, provider=provider)

        addons = self._cluster_addons()
        namespace = self._resource(
            k8s.core.v1.Namespace,
            "namespace",
            metadata={
                "name": self.namespace,
                "labels": {
                    **labels(deployment, "namespace"),
                    # Pod Security Admission: nothing here may run privileged (GPU drivers live elsewhere).
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                    "pod-security.kubernetes.io/audit": "restricted",
                    "pod-security.kubernetes.io/warn": "restricted",
                },
            },
            depends_on=foundation.depends_on,
        )
        self._in_namespace = pulumi.ResourceOptions(depends_on=[namespace])
        accounts = self._service_accounts()
        config = self._engine_config()
        # The model is built once, in the primary region; the other regions' buckets receive the artifact by the
        # primary's replication (stacks/<cloud>/replication.py), so their serving pods wait for it instead
        build = self._build_job(accounts["builder"], config) if is_primary(deployment) else None
        # node_cache: the claim every serving pod and warm-pool placeholder mounts at /models (stacks/k8s/weights.py)
        self.weights_volume = node_weights.render(self, build)
        serving = self._serving(accounts["serving"], config, build)
        batch_token = stack_batch.worker_token(self) if deployment.batch.enabled else None
        gateway_service = self._gateway(accounts["gateway"], batch_token)
        stack_batch.render(self, accounts, batch_token, gateway_service)
        self._autoscaling(serving, addons)
        warm_pool(self, addons)  # cold_start.warm_pool (stacks/k8s/warm_pool.py)
        self._monitoring(addons)
        self._network_policies()
        self.gateway_service = gateway_service.metadata.apply(lambda m: f"{m['name']}.{m['namespace']}")
        self.gateway_lb_address = gateway_service.status.apply(_load_balancer_address)
        self.register_outputs({"namespace": self.namespace, "artifact": self.artifact_uri})

    # -- helpers ---------------------------------------------------------------------------------------------
    def _resource(
        self,
        resource_type: type[Any],
        suffix: str,
        depends_on: list[pulumi.Resource] | None = None,
        **args: Any,
    ) -> Any:
        options = pulumi.ResourceOptions.merge(self._opts, pulumi.ResourceOptions(depends_on=depends_on or []))
        return resource_type(f"{self.deployment.name}-{suffix}", opts=options, **args)

    def _namespaced(self, resource_type: type[Any], suffix: str, metadata: dict[str, Any], **args: Any) -> Any:
        options = pulumi.ResourceOptions.merge(self._opts, self._in_namespace)
        depends = args.pop("depends_on", [])
        if depends:
            options = pulumi.ResourceOptions.merge(options, pulumi.ResourceOptions(depends_on=depends))
        return resource_type(
            f"{self.deployment.name}-{suffix}",
            metadata={"namespace": self.namespace, **metadata},
            opts=options,
            **args,
        )

    def _custom(
        self, api_version: str, kind: str, suffix: str, metadata: dict[str, Any], spec: Any, **extra: Any
    ) -> Any:
        return self._namespaced(
            k8s.apiextensions.CustomResource, suffix, metadata, api_version=api_version, kind=kind, spec=spec, **extra
        )

    @property
    def artifact_uri(self) -> pulumi.Output[str]:
        return pulumi.Output.concat(self.foundation.artifact_root, "/", self.plan.artifact_prefix)

    def _object_name(self, component: str) -> str:
        return resource_name(self.deployment.name, component)

    # -- cluster add-ons (their own namespaces) ----------------------------------------------------------------
    def _cluster_addons(self) -> dict[str, pulumi.Resource]:
        charts = load_catalog().kubernetes["charts"]
        deployment = self.deployment
        installed: dict[str, pulumi.Resource] = {}

        def release(key: str, pod_security: str, values: dict[str, Any]) -> pulumi.Resource:
            chart = charts[key]
            namespace = self._resource(
                k8s.core.v1.Namespace,
                f"{key.replace('_', '-')}-namespace",
                metadata={
                    "name": chart["namespace"],
                    "labels": {
                        "app.kubernetes.io/managed-by": "byoc",
                        "pod-security.kubernetes.io/enforce": pod_security,
                    },
                },
                depends_on=self.foundation.depends_on,
            )
            chart_release: pulumi.Resource = self._resource(
                k8s.helm.v3.Release,
                key.replace("_", "-"),
                depends_on=[namespace],
                name=key.replace("_", "-"),
                chart=chart["chart"],
                version=chart["version"],
                repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=chart["repo"]),
                namespace=chart["namespace"],
                values=values,
                atomic=True,
            )
            return chart_release

        # GPU drivers and the device plugin need host access: privileged, in their own namespace.
        if self.foundation.gpu_operator_values is not None:
            installed["gpu_operator"] = release("gpu_operator", "privileged", self.foundation.gpu_operator_values)
        installed["keda"] = release("keda", "baseline", {"prometheus": {"metricServer": {"enabled": True}}})
        if deployment.monitoring.prometheus_url is None:
            installed["monitoring"] = release(
                "kube_prometheus_stack",
                "privileged",  # node-exporter reads the host
                {
                    "fullnameOverride": "byoc-monitoring",
                    "prometheus": {
                        "prometheusSpec": {
                            # pick up every ServiceMonitor and PrometheusRule, not only the chart's own
                            "serviceMonitorSelectorNilUsesHelmValues": False,
                            "ruleSelectorNilUsesHelmValues": False,
                            "retention": "15d",
                        }
                    },
                    "grafana": {"sidecar": {"dashboards": {"enabled": True, "searchNamespace": "ALL"}}},
                },
            )
        return installed

    # -- identities and configuration --------------------------------------------------------------------------
    def _service_accounts(self) -> dict[str, Any]:
        accounts = {}
        roles = {**self.deployment.service_accounts, "gateway": "byoc-gateway"}
        for role, account in roles.items():
            accounts[role] = self._namespaced(
                k8s.core.v1.ServiceAccount,
                f"{role}-sa",
                {
                    "name": account,
                    "labels": labels(self.deployment, role),
                    "annotations": self.foundation.service_account_annotations.get(role, {}),
                },
                # The cloud identity comes from the pod identity webhook's own token, not the API token.
                automount_service_account_token=False,
            )
        return accounts

    def _engine_config(self) -> Any:
        spec = self.deployment.spec.model_dump(mode="json", exclude_none=True)
        return self._namespaced(
            k8s.core.v1.ConfigMap,
            "engine-config",
            {"name": self._object_name("engine"), "labels": labels(self.deployment, "serving")},
            data={
                "options.yaml": yaml.safe_dump(self.plan.options, sort_keys=False),
                "build-plan.json": json.dumps(self.plan.as_dict(), indent=2),
                "byoc.yaml": yaml.safe_dump(spec, sort_keys=False),
            },
        )

    # -- model build -------------------------------------------------------------------------------------------
    def _gpu_pod(self) -> dict[str, Any]:
        return {
            "nodeSelector": self.foundation.gpu_node_selector,
            "tolerations": [GPU_TOLERATION],
        }

    def _gpu_resources(self, amount: Resources, ephemeral_gib: int) -> dict[str, Any]:
        """A GPU container's requests and limits (equal: Guaranteed QoS), cut from its node's allocatable by
        byoc/sizing.py (deployment.pods), so that the pod fits every machine its pool may launch; its ephemeral
        storage is what the pod writes (deployment.disk), which the kubelet holds it to."""
        gpus = str(self.deployment.shape.count)
        quantities = {**amount.quantities(), "nvidia.com/gpu": gpus, "ephemeral-storage": f"{ephemeral_gib}Gi"}
        return {"requests": quantities, "limits": dict(quantities)}

    @property
    def _artifact_gib(self) -> int:
        """The serving pod's /models: the artifact it fetches, or reads from the node's shared copy (node_cache)."""
        return self.deployment.disk.artifact_gib

    def _build_job(self, account: Any, config: Any) -> Any:
        deployment = self.deployment
        # the builder writes under <store>/<artifact prefix>, the content-addressed place the serving pods read
        command = pulumi.Output.from_input(self.foundation.artifact_root).apply(
            lambda root: [
                "byoc",
                "build",
                "-f",
                "/etc/byoc/byoc.yaml",
                "--dest",
                root,
                "--work-dir",
                "/scratch/work",
                "--output",
                "json",
            ]
        )
        return self._namespaced(
            k8s.batch.v1.Job,
            "build",
            {
                "name": self._object_name(f"build-{self.plan.cache_key[:10]}"),
                "labels": labels(deployment, "builder"),
                "annotations": image_annotations(deployment),
            },
            spec={
                "backoffLimit": 2,
                "activeDeadlineSeconds": 6 * 3600,
                "ttlSecondsAfterFinished": 86400,
                "template": {
                    "metadata": {"labels": labels(deployment, "builder"), "annotations": dict(DO_NOT_DISRUPT)},
                    "spec": {
                        "serviceAccountName": account.metadata["name"],
                        "automountServiceAccountToken": False,
                        "restartPolicy": "Never",
                        "securityContext": pod_security(),
                        **self._gpu_pod(),
                        "containers": [
                            {
                                "name": "build",
                                "image": deployment.images["runtime"],
                                "imagePullPolicy": "Always",
                                "command": command,
                                "env": [
                                    {"name": "HOME", "value": "/scratch/home"},
                                    *({"name": k, "value": v} for k, v in sorted(self.foundation.build_env.items())),
                                ],
                                "securityContext": container_security(),
                                "resources": self._gpu_resources(deployment.pods.build, deployment.disk.build_gib),
                                "volumeMounts": [
                                    {"name": "config", "mountPath": "/etc/byoc", "readOnly": True},
                                    {"name": "scratch", "mountPath": "/scratch"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "config", "configMap": {"name": config.metadata["name"]}},
                            {
                                "name": "scratch",
                                "emptyDir": {"sizeLimit": f"{deployment.disk.build_gib - CONTAINER_FILES_GIB}Gi"},
                            },
                        ],
                    },
                },
            },
        )

    # -- serving -----------------------------------------------------------------------------------------------
    def _serving(self, account: Any, config: Any, build: Any) -> Any:
        deployment = self.deployment
        plan: BuildPlan = self.plan
        probe = {"httpGet": {"path": "/health", "port": "http"}}
        fetch = self.artifact_uri.apply(
            lambda uri: ["byoc", "artifacts", "fetch", "--from", uri, "--to", "/models", "--verify"]
        )
        component = "serving"
        serving_storage = {"ephemeral-storage": f"{deployment.disk.serving_gib}Gi"}
        shared = self.weights_volume
        fetch_step: dict[str, Any] = {
            # fetch the built artifact and check every file against its manifest's sha256
            "name": "fetch-artifacts",
            "command": fetch,
            "volumeMounts": [{"name": "models", "mountPath": "/models"}, {"name": "scratch", "mountPath": "/scratch"}],
        }
        if shared is not None:
            fetch_step = {
                # read every file through the node's shared mount and check its sha256 against the manifest: the
                # first pod on a node fills the node's cache with this read (stacks/k8s/weights.py)
                "name": "verify-artifacts",
                "command": node_weights.verify_command(),
                "volumeMounts": [
                    {"name": "models", "mountPath": node_weights.MOUNT, "readOnly": True},
                    {"name": "scratch", "mountPath": "/scratch"},
                ],
            }
        serving = self._namespaced(
            k8s.apps.v1.Deployment,
            "serving",
            {
                "name": self._object_name("serving"),
                "labels": labels(deployment, component),
                "annotations": image_annotations(deployment),
            },
            depends_on=[build] if build is not None else [],
            spec={
                # KEDA owns the replica count from here on; this is only where it starts
                "replicas": deployment.autoscaling.min_replicas,
                "selector": {"matchLabels": selector(deployment, component)},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {
                        "labels": labels(deployment, component),
                        "annotations": {"byoc.dev/artifact": plan.artifact_prefix, **DO_NOT_DISRUPT},
                    },
                    "spec": {
                        "serviceAccountName": account.metadata["name"],
                        "automountServiceAccountToken": False,
                        "securityContext": pod_security(),
                        "terminationGracePeriodSeconds": SERVING_GRACE_SECONDS,
                        **self._gpu_pod(),
                        "topologySpreadConstraints": zone_spread(deployment, component),
                        "initContainers": [
                            {
                                "name": fetch_step["name"],
                                "image": deployment.images["runtime"],
                                "imagePullPolicy": "Always",
                                "command": fetch_step["command"],
                                "env": [{"name": "HOME", "value": "/scratch/home"}],
                                "securityContext": container_security(),
                                # init containers run before the others: the pod's request is the larger of
                                # this and the containers' sum, which byoc/sizing.py keeps within the slot
                                "resources": {
                                    # it writes the artifact into /models: the pod's ephemeral storage is its too
                                    "requests": {**deployment.pods.init.quantities(), **serving_storage},
                                    "limits": {**deployment.pods.init.quantities(), **serving_storage},
                                },
                                "volumeMounts": fetch_step["volumeMounts"],
                            }
                        ],
                        "containers": [
                            {
                                "name": "trtllm-serve",
                                "image": deployment.images["serving"],
                                "imagePullPolicy": "Always",
                                "command": plan.serve_command(),
                                "ports": [{"name": "http", "containerPort": SERVE_PORT, "protocol": "TCP"}],
                                "env": [
                                    {"name": "HOME", "value": "/scratch/home"},
                                    {"name": "HF_HUB_OFFLINE", "value": "1"},  # never reach out for weights
                                    {"name": "TRITON_CACHE_DIR", "value": "/scratch/triton"},
                                    {"name": "XDG_CACHE_HOME", "value": "/scratch/cache"},
                                ],
                                "securityContext": container_security(),
                                "resources": self._gpu_resources(deployment.pods.engine, deployment.disk.serving_gib),
                                # model load can take many minutes; liveness starts only after it
                                "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": 180},
                                "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
                                "livenessProbe": {**probe, "periodSeconds": 15, "failureThreshold": 4},
                                "lifecycle": {"preStop": {"sleep": {"seconds": 15}}},
                                "volumeMounts": [
                                    {"name": "models", "mountPath": "/models", "readOnly": True},
                                    {"name": "config", "mountPath": "/etc/byoc", "readOnly": True},
                                    {"name": "scratch", "mountPath": "/scratch"},
                                    {"name": "shm", "mountPath": "/dev/shm"},
                                ],
                            },
                            {
                                # re-exports trtllm's iteration stats (KV cache use, queue) as Prometheus gauges
                                "name": "engine-stats",
                                "image": deployment.images["runtime"],
                                "imagePullPolicy": "Always",
                                "command": [
                                    "byoc",
                                    "serve",
                                    "engine-stats",
                                    "--engine",
                                    f"http://127.0.0.1:{SERVE_PORT}",
                                    "--listen",
                                    f"0.0.0.0:{ENGINE_STATS_PORT}",
                                ],
                                "ports": [{"name": "stats", "containerPort": ENGINE_STATS_PORT, "protocol": "TCP"}],
                                "securityContext": container_security(),
                                "resources": {
                                    "requests": deployment.pods.sidecar.quantities(),
                                    "limits": deployment.pods.sidecar.quantities(),
                                },
                                "readinessProbe": {"httpGet": {"path": "/health", "port": "stats"}},
                                "livenessProbe": {"httpGet": {"path": "/health", "port": "stats"}},
                            },
                        ],
                        "volumes": [
                            shared or {"name": "models", "emptyDir": {"sizeLimit": f"{self._artifact_gib}Gi"}},
                            {"name": "config", "configMap": {"name": config.metadata["name"]}},
                            {"name": "scratch", "emptyDir": {"sizeLimit": f"{SERVING_SCRATCH_GIB}Gi"}},
                            # NCCL and the runtime use shared memory between tensor-parallel ranks
                            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
                        ],
                    },
                },
            },
        )
        self._namespaced(
            k8s.core.v1.Service,
            "serving-service",
            {"name": self._object_name("serving"), "labels": labels(deployment, component)},
            spec={
                # headless: the gateway resolves every ready pod and routes to the least busy one
                "clusterIP": "None",
                "selector": selector(deployment, component),
                "ports": [
                    {"name": "http", "port": SERVE_PORT, "targetPort": "http"},
                    {"name": "stats", "port": ENGINE_STATS_PORT, "targetPort": "stats"},
                ],
            },
        )
        self._namespaced(
            k8s.policy.v1.PodDisruptionBudget,
            "serving-pdb",
            {"name": self._object_name("serving"), "labels": labels(deployment, component)},
            spec={"maxUnavailable": 1, "selector": {"matchLabels": selector(deployment, component)}},
        )
        return serving

    # -- gateway -----------------------------------------------------------------------------------------------
    def _gateway(self, account: Any, batch_token: Any = None) -> Any:
        deployment = self.deployment
        component = "gateway"
        upstream = f"dns+http://{self._object_name('serving')}.{self.namespace}.svc.cluster.local:{SERVE_PORT}"
        models = [deployment.model.id, *[f"{a.id}={a.source}" for a in deployment.addons]]
        command: list[pulumi.Input[str]] = [
            "byoc",
            "serve",
            "gateway",
            "--listen",
            f"0.0.0.0:{GATEWAY_PORT}",
            "--metrics-listen",
            f"0.0.0.0:{GATEWAY_METRICS_PORT}",
            "--upstream",
            upstream,
            "--api-keys",
            "/etc/byoc/keys/keys.yaml",
            # the API is TLS-only, also inside the VPC: clients verify the deployment's certificate
            "--tls-cert",
            f"{GATEWAY_TLS_MOUNT}/tls.crt",
            "--tls-key",
            f"{GATEWAY_TLS_MOUNT}/tls.key",
            "--model",
            deployment.model.id,
            "--max-context",
            str(deployment.max_context),
            "--ttft-slo",
            str(deployment.monitoring.ttft_p95_slo_seconds),
            # hold requests while the serving deployment wakes from zero: the cold-start estimate x a margin
            # (byoc/coldstart.py wake_timeout; plan.json estimates.cold_start.wake_timeout_basis says why)
            "--wake-timeout",
            str(deployment.cold_start.wake_timeout_s),
            # a multi-region deployment: spill over to the peer regions' gateways, inside the residency set only
            *gateway_region_args(deployment, f"{GATEWAY_TLS_MOUNT}/ca.crt"),
        ]
        for addon in models[1:]:
            command += ["--addon", addon]
        mounts = [
            # API keys as a file, never as environment variables
            {"name": "api-keys", "mountPath": "/etc/byoc/keys", "readOnly": True},
            {"name": "tls", "mountPath": GATEWAY_TLS_MOUNT, "readOnly": True},
        ]
        volumes: list[dict[str, Any]] = [
            # Created by the operator (hashed keys only); byoc never holds your API keys.
            {"name": "api-keys", "secret": {"secretName": self._object_name("api-keys")}},
            # a kubernetes.io/tls Secret from your PKI or cert-manager (tls.crt, tls.key)
            # (ca.crt too, which cert-manager writes: a multi-region gateway verifies its peers with it)
            {"name": "tls", "secret": {"secretName": self._object_name("gateway-tls")}},
        ]
        store = self.foundation.store
        store_secret = None
        if store is not None:
            # per-key limits, budgets and usage shared by every replica, over TLS with the store's own CA
            command += [
                "--store",
                store.url,
                "--store-password-file",
                f"{STORE_SECRET_MOUNT}/password",
                "--store-ca-file",
                f"{STORE_SECRET_MOUNT}/ca.crt",
                # with the store away each replica enforces limit / replicas: until it has seen the others'
                # heartbeats, it counts the HPA's minimum
                "--replicas-hint",
                str(GATEWAY_MIN_REPLICAS),
                # the ledger's GPU-seconds: a replica's busy time times its GPUs
                "--gpus-per-replica",
                str(deployment.shape.count),
            ]
            store_secret = self._namespaced(
                k8s.core.v1.Secret,
                "store-secret",
                {"name": self._object_name("store"), "labels": labels(deployment, component)},
                type="Opaque",
                # the password is a Pulumi secret: encrypted in the stack's state, "[secret]" in an offline plan
                string_data={"password": store.password, "ca.crt": store.ca_pem},
            )
            mounts.append({"name": "store", "mountPath": STORE_SECRET_MOUNT, "readOnly": True})
            volumes.append(
                {"name": "store", "secret": {"secretName": self._object_name("store"), "defaultMode": 0o440}}
            )
        if batch_token is not None:
            # OpenAI's Files and Batches API over the batch root, and the worker's token (stacks/k8s/batch.py)
            command += stack_batch.gateway_args(self)
            mounts.append(stack_batch.TOKEN_MOUNT)
            volumes.append(stack_batch.token_volume(self))
        probe_port = {"port": "http", "scheme": "HTTPS"}
        gateway = self._namespaced(
            k8s.apps.v1.Deployment,
            "gateway",
            {
                "name": self._object_name("gateway"),
                "labels": labels(deployment, component),
                "annotations": image_annotations(deployment),
            },
            spec={
                "replicas": GATEWAY_MIN_REPLICAS,
                "selector": {"matchLabels": selector(deployment, component)},
                "template": {
                    "metadata": {"labels": labels(deployment, component)},
                    "spec": {
                        "serviceAccountName": account.metadata["name"],
                        "automountServiceAccountToken": False,
                        "securityContext": pod_security(),
                        "terminationGracePeriodSeconds": SERVING_GRACE_SECONDS,
                        "topologySpreadConstraints": zone_spread(deployment, component),
                        "containers": [
                            {
                                "name": "gateway",
                                "image": deployment.images["runtime"],
                                "imagePullPolicy": "Always",
                                "command": command,
                                "ports": [
                                    {"name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP"},
                                    {"name": "metrics", "containerPort": GATEWAY_METRICS_PORT, "protocol": "TCP"},
                                ],
                                "securityContext": container_security(),
                                "resources": {
                                    "requests": {"cpu": "1", "memory": "512Mi"},
                                    "limits": {"cpu": "2", "memory": "512Mi"},
                                },
                                "readinessProbe": {"httpGet": {"path": "/ready", **probe_port}, "periodSeconds": 5},
                                "livenessProbe": {"httpGet": {"path": "/health", **probe_port}, "periodSeconds": 10},
                                "volumeMounts": mounts,
                            }
                        ],
                        "volumes": volumes,
                    },
                },
            },
            depends_on=[s for s in (store_secret, batch_token) if s is not None],
        )
        service = self._namespaced(
            k8s.core.v1.Service,
            "gateway-service",
            {
                "name": self._object_name("gateway"),
                "labels": labels(deployment, component),
                "annotations": self.foundation.load_balancer_annotations,
            },
            spec={
                # an internal load balancer: reachable from the VPC, never from the internet
                "type": "LoadBalancer",
                "selector": selector(deployment, component),
                "ports": [{"name": "https", "port": GATEWAY_SERVICE_PORT, "targetPort": "http"}],
                **(
                    {"externalTrafficPolicy": self.foundation.external_traffic_policy}
                    if self.foundation.external_traffic_policy
                    else {}
                ),
            },
        )
        self._namespaced(
            k8s.policy.v1.PodDisruptionBudget,
            "gateway-pdb",
            {"name": self._object_name("gateway"), "labels": labels(deployment, component)},
            spec={"minAvailable": 1, "selector": {"matchLabels": selector(deployment, component)}},
        )
        self._namespaced(
            k8s.autoscaling.v2.HorizontalPodAutoscaler,
            "gateway-hpa",
            {"name": self._object_name("gateway"), "labels": labels(deployment, component)},
            spec={
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": self._object_name("gateway")},
                "minReplicas": GATEWAY_MIN_REPLICAS,
                "maxReplicas": 6,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                    }
                ],
            },
            depends_on=[gateway],
        )
        return service

    # -- autoscaling -------------------------------------------------------------------------------------------
    def _autoscaling(self, serving: Any, addons: dict[str, pulumi.Resource]) -> None:
        deployment = self.deployment
        scaling = deployment.autoscaling
        server = prometheus_url(deployment)
        wake = f'sum(byoc_gateway_pending_requests{{namespace="{deployment.namespace}"}})'
        spec: dict[str, Any] = {
            "scaleTargetRef": {"name": self._object_name("serving")},
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "pollingInterval": POLLING_INTERVAL_S,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleUp": {
                            "stabilizationWindowSeconds": scaling.scale_up_window_s,
                            "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}],
                        },
                        "scaleDown": {
                            "stabilizationWindowSeconds": scaling.scale_down_window_s,
                            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
                        },
                    }
                }
            },
            "triggers": [
                {
                    "type": "prometheus",
                    "name": "load",
                    "metadata": {
                        "serverAddress": server,
                        "query": load_target_query(deployment),
                        "threshold": f"{scaling.load_target.value:g}",
                        "activationThreshold": "0",
                    },
                },
                {
                    # a request waiting at the gateway wakes a deployment that is at zero
                    "type": "prometheus",
                    "name": "wake",
                    "metadata": {
                        "serverAddress": server,
                        "query": wake,
                        "threshold": "1",
                        "activationThreshold": "0",
                    },
                },
            ],
        }
        if scaling.scale_to_zero_window_s is not None:
            spec["cooldownPeriod"] = scaling.scale_to_zero_window_s  # idle this long before the last replica goes
            # KEDA goes to zero once every trigger has been inactive for cooldownPeriod; the load and wake queries
            # read instantaneous gauges, which steady light traffic of short requests leaves at 0 in most samples
            spec["triggers"].append(
                {
                    "type": "prometheus",
                    "name": "activity",
                    "metadata": {
                        "serverAddress": server,
                        "query": activity_query(deployment.namespace),
                        "threshold": "1",
                        "activationThreshold": "0",
                    },
                }
            )
        budget = deployment.budget
        if budget is not None and budget.cap_replicas is not None:
            # Once the period's GPU-hours are spent, at most cap_replicas until it ends. KEDA then feeds the HPA one
            # composite metric (the formula's value against target 1: the replicas wanted), so the formula repeats
            # what the separate triggers asked for (keda.sh/docs/2.18/reference/scaledobject-spec, scalingModifiers).
            spec["triggers"].append(
                {
                    "type": "prometheus",
                    "name": "budget",
                    "metadata": {
                        "serverAddress": server,
                        "query": gpu_budget.fraction_query(deployment.namespace),
                        "threshold": "1",
                        "activationThreshold": "0",
                    },
                }
            )
            spec["advanced"]["scalingModifiers"] = {
                "formula": gpu_budget.capped_formula(
                    deployment,
                    f"{scaling.load_target.value:g}",
                    [trigger["name"] for trigger in spec["triggers"]],
                    budget.cap_replicas,
                ),
                "target": "1",
                "activationTarget": "0",
                "metricType": "AverageValue",
            }
        self._custom(
            "keda.sh/v1alpha1",
            "ScaledObject",
            "serving-scaler",
            {"name": self._object_name("serving"), "labels": labels(deployment, "serving")},
            spec,
            depends_on=[serving, addons["keda"]],
        )

    # -- monitoring --------------------------------------------------------------------------------------------
    def _monitoring(self, addons: dict[str, pulumi.Resource]) -> None:
        deployment = self.deployment
        after = [addons["monitoring"]] if "monitoring" in addons else []
        monitors = {
            "gateway": ("gateway", [{"port": "metrics", "path": "/metrics", "interval": "15s"}]),
            "serving": (
                "serving",
                [
                    {"port": "http", "path": "/prometheus/metrics", "interval": "15s"},
                    {"port": "stats", "path": "/metrics", "interval": "15s"},
                ],
            ),
        }
        for suffix, (component, endpoints) in monitors.items():
            self._custom(
                "monitoring.coreos.com/v1",
                "ServiceMonitor",
                f"{suffix}-monitor",
                {"name": self._object_name(suffix), "labels": labels(deployment, component)},
                {"selector": {"matchLabels": selector(deployment, component)}, "endpoints": endpoints},
                depends_on=after,
            )
        rules = yaml.safe_load((MONITORING / "rules.yaml").read_text())
        self._custom(
            "monitoring.coreos.com/v1",
            "PrometheusRule",
            "rules",
            {"name": self._object_name("rules"), "labels": labels(deployment, "monitoring")},
            rules,
            depends_on=after,
        )
        if deployment.budget is not None:
            self._custom(
                "monitoring.coreos.com/v1",
                "PrometheusRule",
                "budget-rules",
                {"name": gpu_budget.budget_rules_name(deployment), "labels": labels(deployment, "monitoring")},
                {"groups": gpu_budget.rule_groups(deployment.namespace, deployment.budget)},
                depends_on=after,
            )
        self._namespaced(
            k8s.core.v1.ConfigMap,
            "dashboard",
            {
                "name": self._object_name("dashboard"),
                # the Grafana sidecar loads every ConfigMap with this label
                "labels": {**labels(deployment, "monitoring"), "grafana_dashboard": "1"},
            },
            data={"byoc-serving.json": (MONITORING / "dashboard.json").read_text()},
        )

    def _store_egress(self) -> list[dict[str, Any]]:
        """The gateway (and only it: the namespace's default policy denies every other egress) reaches the shared
        store's port at the store's addresses."""
        store = self.foundation.store
        if store is None:
            return []
        return [
            {
                "to": [{"ipBlock": {"cidr": cidr}} for cidr in store.egress_cidrs],
                "ports": [{"protocol": "TCP", "port": store.port}],
            }
        ]

    def _peer_cidrs(self) -> list[str]:
        """The network ranges of a multi-region deployment's other regions (none for a one-region deployment)."""
        return [cidr for _region, _name, cidr in self.deployment.peers()] if self.deployment.multi_region else []

    def _peer_ingress(self) -> list[dict[str, Any]]:
        """A multi-region deployment: the peer regions' gateways spill over to this one through its internal load
        balancer, from their own network ranges, to the gateway port only (a load balancer that keeps the client's
        address, as GKE's passthrough one does, shows the peer's range here; one that goes through a NodePort shows
        a node of this VPC)."""
        cidrs = self._peer_cidrs()
        if not cidrs:
            return []
        return [
            {"from": [{"ipBlock": {"cidr": c}} for c in cidrs], "ports": [{"protocol": "TCP", "port": GATEWAY_PORT}]}
        ]

    def _peer_egress(self) -> list[dict[str, Any]]:
        """...and this gateway reaches the peers' load balancers (addresses in their ranges) on the Service port."""
        cidrs = self._peer_cidrs()
        if not cidrs:
            return []
        return [
            {
                "to": [{"ipBlock": {"cidr": c}} for c in cidrs],
                "ports": [{"protocol": "TCP", "port": GATEWAY_SERVICE_PORT}],
            }
        ]

    # -- network policies --------------------------------------------------------------------------------------
    def _network_policies(self) -> None:
        deployment = self.deployment
        charts = load_catalog().kubernetes["charts"]
        monitoring_ns = charts["kube_prometheus_stack"]["namespace"]

        def policy(suffix: str, spec: dict[str, Any]) -> None:
            self._namespaced(
                k8s.networking.v1.NetworkPolicy,
                f"netpol-{suffix}",
                {"name": self._object_name(suffix), "labels": labels(deployment, "network-policy")},
                spec=spec,
            )

        def pods(component: str) -> dict[str, Any]:
            return {"matchLabels": selector(deployment, component)}

        from_prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": monitoring_ns}}}
        https_out = {"ports": [{"protocol": "TCP", "port": 443}]}
        identity_out = list(self.foundation.identity_egress)
        policy("default-deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
        policy(
            "allow-dns",
            {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [
                            {
                                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                            }
                        ],
                        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                    }
                ],
            },
        )
        policy(
            "gateway",
            {
                "podSelector": pods("gateway"),
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    # clients inside the VPC, through the internal load balancer
                    {
                        "from": [{"ipBlock": {"cidr": self.foundation.vpc_cidr}}],
                        "ports": [{"protocol": "TCP", "port": GATEWAY_PORT}],
                    },
                    {"from": [from_prometheus], "ports": [{"protocol": "TCP", "port": GATEWAY_METRICS_PORT}]},
                    *self._peer_ingress(),
                ],
                "egress": [
                    {"to": [{"podSelector": pods("serving")}], "ports": [{"protocol": "TCP", "port": SERVE_PORT}]},
                    *self._store_egress(),
                    *self._peer_egress(),
                ],
            },
        )
        policy(
            "serving",
            {
                "podSelector": pods("serving"),
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {"from": [{"podSelector": pods("gateway")}], "ports": [{"protocol": "TCP", "port": SERVE_PORT}]},
                    {
                        "from": [from_prometheus],
                        "ports": [
                            {"protocol": "TCP", "port": SERVE_PORT},
                            {"protocol": "TCP", "port": ENGINE_STATS_PORT},
                        ],
                    },
                ],
                # the artifact store over HTTPS (object stores have no fixed addresses to narrow this to), and the
                # node-local endpoint the pod's cloud credentials come from (EKS Pod Identity agent, GKE metadata
                # server): a policy with any egress rule blocks it too, and the weights fetch then has no credentials
                "egress": [https_out, *identity_out],
            },
        )
        policy(
            "builder",
            {"podSelector": pods("builder"), "policyTypes": ["Egress"], "egress": [https_out, *identity_out]},
        )


def _load_balancer_address(status: Any) -> str:
    """The first ingress point of a LoadBalancer Service's status (a hostname on AWS, an IP on GCP), or "" while
    there is none (a preview, an offline plan)."""
    ingress = getattr(getattr(status, "load_balancer", None), "ingress", None) or []
    if not ingress:
        return ""
    return str(getattr(ingress[0], "hostname", None) or getattr(ingress[0], "ip", None) or "")
