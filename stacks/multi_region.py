"""What the regional stacks and the global layer of a multi-region deployment agree on: the private DNS names (one
entry name for clients, one host per region for the gateways' spill-over) and how the global layer reads each
region's stack outputs.

The names live in one private zone per deployment, `<deployment>.byoc.internal`: `.internal` is reserved for private
use and never delegated in the public DNS (ICANN Board resolution 2024.07.29.06), so the names cannot collide with a
public one or leak into public resolution. Each region's gateway certificate must name its regional host and the
entry name (docs/multi-region.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pulumi

from byoc.errors import ByocError
from byoc.resolve import Deployment

ZONE_SUFFIX = "byoc.internal"
# The label of the one entry name clients use: api.<deployment>.byoc.internal
ENTRY_LABEL = "api"
# The gateway Service's port (stacks/k8s/serving.py: the load balancer listens on 443 and forwards to the pods' 8080)
GATEWAY_SERVICE_PORT = 443
# Seconds resolvers may cache a record: short, so a failover reaches clients within about a minute.
RECORD_TTL_S = 60

# The stack outputs every region exports for the global layer (stacks/<cloud>/program.py)
REGION_OUTPUT = "region"
CIDR_OUTPUT = "network_cidr"
LB_ADDRESS_OUTPUT = "gateway_lb_address"  # AWS: the NLB's DNS name; GCP: the internal load balancer's IP


def private_zone(deployment_name: str) -> str:
    """The deployment's private DNS zone (no trailing dot): <deployment>.byoc.internal."""
    return f"{deployment_name}.{ZONE_SUFFIX}"


def entry_name(deployment_name: str) -> str:
    """The one private name clients call: api.<deployment>.byoc.internal, answered by a healthy region."""
    return f"{ENTRY_LABEL}.{private_zone(deployment_name)}"


def regional_host(deployment_name: str, region: str) -> str:
    """One region's gateway: <region>.<deployment>.byoc.internal (what peers spill over to)."""
    return f"{region}.{private_zone(deployment_name)}"


def peer_url(deployment_name: str, region: str) -> str:
    """The URL a peer gateway reaches `region`'s gateway at: https://<regional host>:443."""
    return f"https://{regional_host(deployment_name, region)}:{GATEWAY_SERVICE_PORT}"


def gateway_region_args(deployment: Deployment, ca_file: str) -> list[str]:
    """The gateway's spill-over flags (runtime/serve/config.py): its region, the residency set, one --peer-region
    per other region of the deployment (never one outside the set: the placement never leaves it), and the CA
    that signs the peers' certificates. Empty for a one-region deployment."""
    if not deployment.multi_region:
        return []
    args = ["--region", deployment.region]
    if deployment.residency:
        args += ["--residency", deployment.residency]
    for region, _name, _cidr in deployment.peers():
        args += ["--peer-region", f"{region}={peer_url(deployment.deployment_name, region)}"]
    return [*args, "--peer-ca-file", ca_file]


def is_primary(deployment: Deployment) -> bool:
    """The region the model is built in (the first of the placement); every one-region deployment is its own."""
    return not deployment.regions or deployment.regions[0].region == deployment.region


def region_outputs(deployment: Deployment, region: str) -> pulumi.StackReference:
    """The outputs of `region`'s stack, read by the global layer (Pulumi's way across stacks: StackReference,
    named <organization>/<project>/<stack>; the organization is "organization" on a self-managed backend)."""
    stack = deployment.stack_name(region)
    return pulumi.StackReference(
        f"{stack}-outputs",
        stack_name=f"{pulumi.get_organization()}/{pulumi.get_project()}/{stack}",
    )


def output(reference: pulumi.StackReference, key: str) -> pulumi.Output[Any]:
    """One output of a region's stack (fails the global layer's run, naming the output, if the region lacks it)."""
    return reference.require_output(key)


def stack_program(
    deployment: Deployment, stack: str, regional: Callable[[Deployment], dict[str, Any]], layer: str
) -> Callable[[], dict[str, Any]]:
    """What `pulumi up -C stacks/<cloud>` runs on the stack `stack` (stacks/<cloud>/__main__.py): a multi-region
    deployment has one stack per region, named <name>-<region code>, and its global layer, <name>-global (`layer`:
    "module:function" of the cloud's global program); a one-region deployment runs on a stack of any name.

    Raises:
        ByocError: naming the stacks of a multi-region deployment when `stack` is none of them (exit 2).
    """
    if not deployment.multi_region:
        return lambda: regional(deployment)
    if stack == deployment.stack_name():
        import importlib

        module, _, function = layer.partition(":")
        global_program: Callable[[Deployment], dict[str, Any]] = getattr(importlib.import_module(module), function)
        return lambda: global_program(deployment)
    for region in deployment.region_names:
        if stack == deployment.stack_name(region):
            return lambda: regional(deployment.in_region(region))
    stacks = [deployment.stack_name(region) for region in deployment.region_names] + [deployment.stack_name()]
    raise ByocError(
        "stack",
        f"{deployment.name} runs in {len(deployment.region_names)} regions, one Pulumi stack each, and a global "
        f"layer; {stack!r} is none of them",
        f"select one of {', '.join(stacks)} (pulumi stack select), the regions before the global layer",
    )
