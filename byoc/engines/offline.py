"""Run a Pulumi program offline under `pulumi.runtime.set_mocks` and record every resource it registers.

This is Pulumi's own unit-test path: the program runs unchanged, every resource registration reaches a mock monitor
(a wrong keyword argument fails at once with TypeError), and nothing is created. What we record per resource
(the Pulumi type token, the logical name, the inputs with the names the provider receives, the parent and the
provider) is the `resources` list of plan.json.

Pulumi registers resources from many threads at once, so the order in which they reach the monitor varies from run
to run, and the protobuf maps the inputs arrive in iterate in a per-process order. Neither means anything, and CI
reviews plans with `git diff`: the record is put in one order (the resource tree depth first, each parent before its
children, siblings by type token then logical name) and every mapping in the inputs is sorted by key.

Values only a live account knows are placeholders: the account id is 123456789012 (AWS's documentation account),
availability zones are <region>a/b/c, and ARNs of resources that do not exist yet are made up from their names. On
Google Cloud the project is `example-project` (number 123456789012), and ids, emails and service agents are made up
in the formats Google documents for them.
"""

from __future__ import annotations

import threading
from typing import Any

from byoc import interrupts
from byoc.engines import Program
from byoc.errors import ByocFailure
from byoc.plan import Plan, RecordedResource
from byoc.resolve import Deployment

PLACEHOLDER_ACCOUNT = "123456789012"
PLACEHOLDER_PROJECT = "example-project"
PLACEHOLDER_PROJECT_NUMBER = "123456789012"


def _gcp_machine_type(name_filter: str) -> dict[str, Any]:
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


def _gcp_outputs(type_token: str, name: str, inputs: dict[str, Any], region: str) -> tuple[str | None, dict[str, Any]]:
    """The id and computed outputs a Google Cloud resource would have (None: the default placeholder id)."""
    project = PLACEHOLDER_PROJECT
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
        return f"projects/{project}/global/networks/{name}", {}
    if type_token == "gcp:compute/subnetwork:Subnetwork":
        return f"projects/{project}/regions/{region}/subnetworks/{name}", {}
    if type_token == "gcp:container/cluster:Cluster":
        return f"projects/{project}/locations/{inputs.get('location', region)}/clusters/{name}", {
            "endpoint": "10.42.96.2",
            "masterAuth": {**inputs.get("masterAuth", {}), "clusterCaCertificate": "cGxhY2Vob2xkZXI="},
        }
    if type_token == "gcp:logging/projectSink:ProjectSink":
        writer = f"serviceAccount:service-{PLACEHOLDER_PROJECT_NUMBER}@gcp-sa-logging.iam.gserviceaccount.com"
        return None, {"writerIdentity": writer}
    return None, {}


def _plain(value: Any) -> Any:
    """Inputs as JSON: containers kept (mappings sorted by key: their order in the protobuf map that carried them
    changes from process to process), anything exotic (resource references, unknowns) as a string."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda item: str(item[0]))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


def _name_of(urn: str) -> str:
    """The logical name at the end of a URN (urn:pulumi:stack::project::type$type::name)."""
    return urn.rsplit("::", 1)[-1]


def _in_tree_order(resources: list[RecordedResource], parents: dict[str, str]) -> list[RecordedResource]:
    """The resources depth first down the resource tree: a parent before its children, siblings by type token and
    logical name. The order does not depend on when each registration reached the monitor."""
    by_urn = {r.urn: r for r in resources}
    paths: dict[str, tuple[tuple[str, str], ...]] = {}

    def path(urn: str) -> tuple[tuple[str, str], ...]:
        if urn not in paths:
            resource = by_urn[urn]
            parent = parents.get(urn, "")
            # the stack itself (and any parent not recorded) is the root
            above = path(parent) if parent in by_urn and parent != urn else ()
            paths[urn] = (*above, (resource.type, resource.name))
        return paths[urn]

    return sorted(resources, key=lambda r: (path(r.urn), r.urn))


def run_offline(deployment: Deployment, program: Program) -> Plan:
    """Run the program under Pulumi's mocks and return every resource it registered."""
    import pulumi
    from pulumi.runtime import mocks, rpc, settings

    region = deployment.region
    zones = [f"{region}{suffix}" for suffix in "abc"]
    plan = Plan()
    lock = threading.Lock()
    parents: dict[str, str] = {}  # URN -> parent URN, to put the record in tree order

    class RecordingMocks(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
            outputs = dict(args.inputs)
            name = str(outputs.get("name") or args.name)
            service = args.typ.split(":")[1].split("/")[0] if args.typ.startswith("aws:") else "resource"
            outputs.setdefault("arn", f"arn:aws:{service}:{region}:{PLACEHOLDER_ACCOUNT}:{name}")
            extra: dict[str, dict[str, Any]] = {
                "aws:iam/role:Role": {
                    "name": name,
                    "arn": f"arn:aws:iam::{PLACEHOLDER_ACCOUNT}:role/{name}",
                },
                "aws:kms/key:Key": {
                    "keyId": f"{args.name}-key-id",
                    "arn": f"arn:aws:kms:{region}:{PLACEHOLDER_ACCOUNT}:key/{args.name}-key-id",
                },
                "aws:s3/bucket:Bucket": {
                    "bucket": outputs.get("bucket") or args.name,
                    "arn": f"arn:aws:s3:::{outputs.get('bucket') or args.name}",
                },
                "aws:eks/cluster:Cluster": {
                    "endpoint": f"https://{name}.eks.{region}.example",
                    "certificateAuthority": {"data": "cGxhY2Vob2xkZXI="},
                    "vpcConfig": {**outputs.get("vpcConfig", {}), "clusterSecurityGroupId": f"sg-{args.name}"},
                    "arn": f"arn:aws:eks:{region}:{PLACEHOLDER_ACCOUNT}:cluster/{name}",
                },
                "aws:sqs/queue:Queue": {
                    "url": f"https://sqs.{region}.amazonaws.com/{PLACEHOLDER_ACCOUNT}/{name}",
                    "arn": f"arn:aws:sqs:{region}:{PLACEHOLDER_ACCOUNT}:{name}",
                },
                "aws:cloudwatch/logGroup:LogGroup": {
                    "arn": f"arn:aws:logs:{region}:{PLACEHOLDER_ACCOUNT}:log-group:{name}",
                },
                "aws:ec2/launchTemplate:LaunchTemplate": {"latestVersion": 1},
                "aws:ec2/eip:Eip": {"allocationId": f"eipalloc-{args.name}"},
            }
            outputs.update(extra.get(args.typ, {}))
            resource_id, computed = _gcp_outputs(args.typ, name, outputs, region)
            outputs.update(computed)
            return resource_id or f"{args.name}-id", outputs

        def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
            arn = f"arn:aws:iam::{PLACEHOLDER_ACCOUNT}:role/byoc-deployer"
            storage_agent = f"service-{PLACEHOLDER_PROJECT_NUMBER}@gs-project-accounts.iam.gserviceaccount.com"
            answers: dict[str, dict[str, Any]] = {
                "aws:index/getCallerIdentity:getCallerIdentity": {
                    "accountId": PLACEHOLDER_ACCOUNT,
                    "arn": f"arn:aws:sts::{PLACEHOLDER_ACCOUNT}:assumed-role/byoc-deployer/session",
                    "userId": "AROAEXAMPLE:session",
                    "id": PLACEHOLDER_ACCOUNT,
                },
                "aws:index/getPartition:getPartition": {
                    "partition": "aws",
                    "dnsSuffix": "amazonaws.com",
                    "id": "aws",
                },
                "aws:iam/getSessionContext:getSessionContext": {"issuerArn": arn, "arn": args.args.get("arn")},
                "aws:index/getAvailabilityZones:getAvailabilityZones": {"names": zones, "zoneIds": zones},
                "gcp:organizations/getProject:getProject": {
                    "projectId": PLACEHOLDER_PROJECT,
                    "number": PLACEHOLDER_PROJECT_NUMBER,
                    "name": PLACEHOLDER_PROJECT,
                    "id": f"projects/{PLACEHOLDER_PROJECT}",
                },
                "gcp:compute/getZones:getZones": {"names": [f"{region}-{suffix}" for suffix in "abc"], "id": region},
                # every zone offers every machine type asked for (a live plan asks Compute Engine)
                "gcp:compute/getMachineTypes:getMachineTypes": {
                    "machineTypes": [_gcp_machine_type(str(args.args.get("filter", "")))],
                    "id": str(args.args.get("zone")),
                },
                "gcp:storage/getProjectServiceAccount:getProjectServiceAccount": {
                    "emailAddress": storage_agent,
                    "member": f"serviceAccount:{storage_agent}",
                    "id": PLACEHOLDER_PROJECT,
                },
            }
            return answers.get(args.token, {}), []

    class RecordingMonitor(mocks.MockMonitor):
        def RegisterResource(self, request: Any) -> Any:
            response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
            if request.type != "pulumi:pulumi:Stack":
                inputs = rpc.deserialize_properties(request.object)
                # URN: urn:pulumi:<stack>::<project>::<parent types$type>::<name>; the root is pulumi:pulumi:Stack
                parent_type = request.parent.split("::")[2].split("$")[-1] if request.parent else ""
                parent = None if parent_type in ("", "pulumi:pulumi:Stack") else _name_of(request.parent)
                # a provider reference is "<provider URN>::<provider id>"
                provider = _name_of(request.provider.rsplit("::", 1)[0]) if request.provider else None
                with lock:
                    parents[response.urn] = request.parent
                    plan.resources.append(
                        RecordedResource(
                            type=request.type,
                            name=request.name,
                            id=response.id,
                            inputs=_plain(inputs),
                            parent=parent,
                            provider=provider,
                            custom=bool(request.custom),
                            urn=response.urn,
                        )
                    )
            return response

    settings.ROOT.set(None)  # a fresh root stack for every run in this process
    _ensure_event_loop()
    recording = RecordingMocks()
    pulumi.runtime.set_mocks(
        recording,
        project=f"byoc-{deployment.cloud}",
        stack=deployment.name,
        preview=False,
        monitor=RecordingMonitor(recording),
    )
    try:
        # A signal in here stops the process rather than raising into Pulumi's event loop and its threads, where a
        # KeyboardInterrupt can be swallowed and leave the loop waiting forever (byoc.interrupts)
        with interrupts.abrupt():
            pulumi.runtime.test(lambda: program(deployment))()  # type: ignore[no-untyped-call]
    except TypeError:
        raise  # a wrong property name in a stack: a bug, shown with its traceback
    except Exception as exc:
        raise ByocFailure(
            "plan", f"the {deployment.cloud} program failed offline: {exc}", "report this as a bug"
        ) from exc
    plan.resources[:] = _in_tree_order(plan.resources, parents)
    return plan


def _ensure_event_loop() -> None:
    """Pulumi's mocks run on the thread's current event loop (`asyncio.get_event_loop()`). A process that ran
    `asyncio.run()` before (a tool embedding byoc, a test session) has none left, and the plan would fail with "There
    is no current event loop": give it one, once (a loop per plan would leak its file descriptors)."""
    import asyncio
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            asyncio.set_event_loop(asyncio.new_event_loop())
