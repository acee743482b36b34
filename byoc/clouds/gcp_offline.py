"""What Google Cloud would answer a byoc program run offline (`byoc plan`, under Pulumi's mocks): the ids and
computed outputs of each resource and the answers of the data sources the program reads.

Values only a live project knows are placeholders: the project is `example-project` (number 123456789012), zones
are <region>-a/b/c, and ids, emails and service agents are made up in the formats Google documents for them (each
API's resource name, "Service agents" for the agents' emails).
"""

from __future__ import annotations

from typing import Any

from byoc.plan import PLACEHOLDER_SECRET

PLACEHOLDER_PROJECT = "example-project"
PLACEHOLDER_PROJECT_NUMBER = "123456789012"
# A stack reference (the global layer of a multi-region deployment reads each region's outputs through one)
STACK_REFERENCE = "pulumi:pulumi:StackReference"


def region_of_stack(stack: str) -> str:
    """The Google Cloud region of a regional stack <name>-<region code> (byoc.names.region_code), among the
    catalog's."""
    from byoc.catalogs import load_catalog
    from byoc.names import region_code

    codes = {region_code(region): region for region in load_catalog().offerings["gcp"]}
    return codes[stack.rsplit("/", 1)[-1].rsplit("-", 1)[-1]]


def regional_stack_outputs(stack: str) -> dict[str, Any]:
    """What a regional stack exports for the global layer (stacks/gcp/program.py), as a live one would: the
    network's self link and the gateway's internal load balancer address (an address of the region's nodes range,
    stacks/gcp/network.py; the placeholder is in 10.255.0.0/16, outside every deployment range byoc derives from
    the default network.cidr)."""
    region = region_of_stack(stack)
    name = stack.rsplit("/", 1)[-1]
    network = f"https://www.googleapis.com/compute/v1/projects/{PLACEHOLDER_PROJECT}/global/networks/byoc-{name}"
    return {
        "region": region,
        "project": PLACEHOLDER_PROJECT,
        "network_id": f"projects/{PLACEHOLDER_PROJECT}/global/networks/byoc-{name}",
        "network_self_link": network,
        "gateway_lb_address": f"10.255.{sum(name.encode()) % 250}.10",
        "artifact_bucket": f"byoc-{name}-artifacts-{PLACEHOLDER_PROJECT_NUMBER}",
    }


def _machine_type(name_filter: str) -> dict[str, Any]:
    """A placeholder Compute Engine machine type named as the filter `name = "<type>"` asks."""
    name = name_filter.split("=", 1)[-1].strip().strip('"')
    return {
        "name": name,
        "accelerators": [],
        "architecture": "X86_64",
        "bundledLocalSsds": [],
        "deprecateds": [],
        "description": name,
        "guestCpus": 0,
        "isSharedCpus": False,
        "maximumPersistentDisks": 0,
        "maximumPersistentDisksSizeGb": 0,
        "memoryMb": 0,
        "selfLink": name,
    }


def resource_outputs(
    type_token: str, logical_name: str, name: str, inputs: dict[str, Any], region: str
) -> tuple[str | None, dict[str, Any]]:
    """The id (None: the engine's placeholder) and the outputs Google Cloud computes for a resource of
    `type_token`; `name` is the physical name the program gave (or the logical name)."""
    project = PLACEHOLDER_PROJECT
    if type_token == STACK_REFERENCE:
        return name, {"outputs": regional_stack_outputs(name), "secretOutputNames": []}
    if type_token == "gcp:kms/keyRing:KeyRing":
        return f"projects/{project}/locations/{inputs.get('location', region)}/keyRings/{name}", {}
    if type_token == "gcp:kms/cryptoKey:CryptoKey":
        return f"{inputs.get('keyRing')}/cryptoKeys/{name}", {}
    if type_token == "gcp:serviceaccount/account:Account":
        email = f"{inputs.get('accountId')}@{project}.iam.gserviceaccount.com"
        path = f"projects/{project}/serviceAccounts/{email}"
        return path, {"email": email, "member": f"serviceAccount:{email}", "name": path}
    if type_token == "gcp:storage/bucket:Bucket":
        return name, {"url": f"gs://{name}", "selfLink": f"https://www.googleapis.com/storage/v1/b/{name}"}
    if type_token == "gcp:compute/network:Network":
        return f"projects/{project}/global/networks/{name}", {
            "selfLink": f"https://www.googleapis.com/compute/v1/projects/{project}/global/networks/{name}"
        }
    if type_token == "gcp:compute/subnetwork:Subnetwork":
        return f"projects/{project}/regions/{region}/subnetworks/{name}", {}
    if type_token == "gcp:container/cluster:Cluster":
        return f"projects/{project}/locations/{inputs.get('location', region)}/clusters/{name}", {
            "endpoint": "10.42.96.2",
            "masterAuth": {**inputs.get("masterAuth", {}), "clusterCaCertificate": "cGxhY2Vob2xkZXI="},
        }
    if type_token == "gcp:redis/instance:Instance":
        # the address private services access would give it, and a stand-in for the instance's own server CA
        return f"projects/{project}/locations/{region}/instances/{name}", {
            "host": "10.42.96.3",
            "port": 6378,
            "authString": PLACEHOLDER_SECRET,
            "serverCaCerts": [{"cert": "-----BEGIN CERTIFICATE-----\nplaceholder\n-----END CERTIFICATE-----\n"}],
        }
    if type_token == "random:index/randomPassword:RandomPassword":
        # the batch worker token (stacks/k8s/batch.py), which a live run generates
        return None, {"result": PLACEHOLDER_SECRET}
    if type_token == "gcp:logging/projectSink:ProjectSink":
        writer = f"serviceAccount:service-{PLACEHOLDER_PROJECT_NUMBER}@gcp-sa-logging.iam.gserviceaccount.com"
        return None, {"writerIdentity": writer}
    return None, {}


def call_answer(token: str, args: dict[str, Any], region: str) -> dict[str, Any] | None:
    """What the Google Cloud data source `token` answers (None: not one byoc reads)."""
    storage_agent = f"service-{PLACEHOLDER_PROJECT_NUMBER}@gs-project-accounts.iam.gserviceaccount.com"
    transfer_agent = f"project-{PLACEHOLDER_PROJECT_NUMBER}@storage-transfer-service.iam.gserviceaccount.com"
    answers: dict[str, dict[str, Any]] = {
        "gcp:organizations/getProject:getProject": {
            "projectId": PLACEHOLDER_PROJECT,
            "number": PLACEHOLDER_PROJECT_NUMBER,
            "name": PLACEHOLDER_PROJECT,
            "id": f"projects/{PLACEHOLDER_PROJECT}",
        },
        "gcp:compute/getZones:getZones": {"names": [f"{region}-{suffix}" for suffix in "abc"], "id": region},
        # every zone offers every machine type asked for (a live plan asks Compute Engine)
        "gcp:compute/getMachineTypes:getMachineTypes": {
            "machineTypes": [_machine_type(str(args.get("filter", "")))],
            "id": str(args.get("zone")),
        },
        "gcp:storage/getTransferProjectServiceAccount:getTransferProjectServiceAccount": {
            "email": transfer_agent,
            "member": f"serviceAccount:{transfer_agent}",
            "subjectId": "100000000000000000000",
            "id": PLACEHOLDER_PROJECT,
        },
        "gcp:storage/getProjectServiceAccount:getProjectServiceAccount": {
            "emailAddress": storage_agent,
            "member": f"serviceAccount:{storage_agent}",
            "id": PLACEHOLDER_PROJECT,
        },
    }
    return answers.get(token)
