"""NVIDIA GPU Operator values for the two ways a managed cluster's GPU nodes come: with the driver and container
toolkit baked into the node image (EKS AL2023 NVIDIA AMIs, Bottlerocket), or with the driver installed by GKE."""

from __future__ import annotations

from typing import Any, Literal

DriverSource = Literal["node-image", "gke"]


def gpu_operator_values(driver: DriverSource) -> dict[str, Any]:
    # dcgm-exporter gives the GPU metrics; honorLabels keeps the namespace/pod of the workload holding each GPU,
    # which the byoc recording rules aggregate by.
    values: dict[str, Any] = {
        "driver": {"enabled": False},
        "dcgmExporter": {"enabled": True, "serviceMonitor": {"enabled": True, "honorLabels": True}},
        "nfd": {"enabled": True},
    }
    if driver == "node-image":
        # the AMI has the driver and the NVIDIA container toolkit; the operator adds the device plugin
        values |= {"toolkit": {"enabled": False}, "devicePlugin": {"enabled": True}}
    else:
        # GKE installs the driver (node pool gpu_driver_installation_config) under /home/kubernetes/bin/nvidia and
        # runs its own device plugin, which also mounts the driver into GPU containers, so neither the NVIDIA
        # container toolkit nor a second device plugin is wanted (two plugins would advertise every GPU twice). The
        # operator stays for dcgm-exporter: the byoc recording rules read its DCGM metrics from the in-cluster
        # Prometheus, and GKE's own DCGM metrics go to Cloud Monitoring instead.
        values |= {
            "hostPaths": {"driverInstallDir": "/home/kubernetes/bin/nvidia"},
            "toolkit": {"enabled": False},
            "devicePlugin": {"enabled": False},
        }
    return values
