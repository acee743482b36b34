"""NVIDIA GPU Operator values for the two ways a managed cluster's GPU nodes come: with the driver and container
toolkit baked into the node image (EKS AL2023 NVIDIA AMIs, Bottlerocket), or with the driver installed by GKE.

The "gke" values are NVIDIA's for GKE pools that opt out of GKE's own GPU stack (GKE docs, "Manage the GPU stack with
the NVIDIA GPU Operator": `gpu-driver-version=disabled` and the `gke-no-default-nvidia-gpu-device-plugin=true` node
label). byoc's GKE stack keeps GKE's managed stack instead and installs no operator (stacks/gcp/program.py).
"""

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
        # GKE installs the driver under /home/kubernetes/bin/nvidia (NVIDIA GPU Operator docs, "Google GKE")
        values |= {
            "hostPaths": {"driverInstallDir": "/home/kubernetes/bin/nvidia"},
            "toolkit": {"installDir": "/home/kubernetes/bin/nvidia"},
            "cdi": {"enabled": True, "default": True},
        }
    return values
