"""Multi-region plans (EUROPE, US, GLOBAL on AWS and GCP) checked as graphs: a foundation per region with its keys in
that region, peering between every pair, one private zone with one entry name and a health check per region, the
model built once and replicated, and no region outside the residency set anywhere in the plan."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from byoc.catalogs import load_catalog
from byoc.plan import Plan, RecordedResource
from byoc.resolve import Deployment
from stacks.multi_region import entry_name, private_zone, regional_host
from tests.conftest import ROOT, deploy, run_byoc
from tests.stacks.plans import rendered

CASES = [(cloud, region) for cloud in ("aws", "gcp") for region in ("EUROPE", "US", "GLOBAL")]
IDS = [f"{cloud}-{region}" for cloud, region in CASES]

# What every regional foundation has, by type token: network, keys, cluster, GPU capacity, audit trail.
FOUNDATION = {
    "aws": {
        "network": "aws:ec2/vpc:Vpc",
        "keys": "aws:kms/key:Key",
        "cluster": "aws:eks/cluster:Cluster",
        "gpu capacity": "kubernetes:karpenter.sh/v1:NodePool",
        "audit trail": "aws:cloudtrail/trail:Trail",
    },
    "gcp": {
        "network": "gcp:compute/network:Network",
        "keys": "gcp:kms/cryptoKey:CryptoKey",
        "cluster": "gcp:container/cluster:Cluster",
        "gpu capacity": "gcp:container/nodePool:NodePool",
        "audit trail": "gcp:logging/projectSink:ProjectSink",
    },
}


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def case(request: pytest.FixtureRequest) -> tuple[Deployment, Plan]:
    cloud, region = request.param
    placement = {"min_regions": 2}
    return (
        deploy(cloud=cloud, region=region, placement=placement),
        rendered(cloud=cloud, region=region, placement=placement),
    )


def residency_set(deployment: Deployment) -> set[str]:
    catalog = load_catalog()
    if deployment.residency == "GLOBAL":
        return set(catalog.offerings[deployment.cloud])
    assert deployment.residency is not None
    return set(catalog.mega_regions[deployment.cloud][deployment.residency])


def strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (str(k), *strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [str(value)] if value is not None else []


def gateway_command(plan: Plan) -> list[str]:
    (gateway,) = [r for r in plan.by_type("kubernetes:apps/v1:Deployment") if r.name.endswith("-gateway")]
    command: list[str] = gateway.inputs["spec"]["template"]["spec"]["containers"][0]["command"]
    return command


def flag_values(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == flag]


def provider_region(plan: Plan, resource: RecordedResource) -> str:
    """The region of the provider a resource is created with (its stack's provider of that name)."""
    (provider,) = [
        r
        for r in plan.of_stack(resource.stack).resources
        if r.type.startswith("pulumi:providers:") and r.name == resource.provider
    ]
    region: str = provider.inputs["region"]
    return region


def test_a_stack_per_region_and_the_global_layer(case: tuple[Deployment, Plan]) -> None:
    deployment, plan = case
    assert len(deployment.regions) >= 2
    assert plan.stacks() == [*(deployment.stack_name(r) for r in deployment.region_names), deployment.stack_name()]


def test_each_region_has_its_own_foundation(case: tuple[Deployment, Plan]) -> None:
    deployment, plan = case
    for region in deployment.region_names:
        regional = plan.of_stack(deployment.stack_name(region))
        for part, type_token in FOUNDATION[deployment.cloud].items():
            assert regional.by_type(type_token), f"{region} has no {part} ({type_token})"
    # and nothing of a region's foundation is in the global layer
    global_types = {r.type for r in plan.of_stack(deployment.stack_name()).resources}
    assert not global_types & set(FOUNDATION[deployment.cloud].values())


def test_keys_of_a_region_live_in_that_region(case: tuple[Deployment, Plan]) -> None:
    deployment, plan = case
    for region in deployment.region_names:
        regional = plan.of_stack(deployment.stack_name(region))
        if deployment.cloud == "aws":
            keys = regional.by_type("aws:kms/key:Key")
            assert len(keys) == 2  # platform and artifacts
            assert {provider_region(plan, key) for key in keys} == {region}
        else:
            rings = regional.by_type("gcp:kms/keyRing:KeyRing")
            assert rings and {ring.inputs["location"] for ring in rings} == {region}


def test_no_region_outside_the_residency_set_anywhere(case: tuple[Deployment, Plan]) -> None:
    """Every input of every resource (names, ARNs, endpoints, zones, provider regions, flags) names only regions the
    deployment runs in, which all belong to its residency set."""
    deployment, plan = case
    placed = set(deployment.region_names)
    assert placed <= residency_set(deployment)
    every_region = sorted(load_catalog().offerings[deployment.cloud], key=len, reverse=True)
    pattern = re.compile(r"(?<![a-z0-9-])(" + "|".join(map(re.escape, every_region)) + r")(?![0-9])")
    named: dict[str, str] = {}
    for resource in plan.resources:
        for text in strings(resource.inputs):
            for found in pattern.findall(text):
                named.setdefault(found, f"{resource.stack}: {resource.type} {resource.name}: {text[:120]}")
    outside = {region: where for region, where in named.items() if region not in placed}
    assert not outside, outside
    assert set(named) == placed


def test_gateways_spill_over_only_to_peers_in_the_set(case: tuple[Deployment, Plan]) -> None:
    deployment, plan = case
    for region in deployment.region_names:
        command = gateway_command(plan.of_stack(deployment.stack_name(region)))
        assert flag_values(command, "--region") == [region]
        assert flag_values(command, "--residency") == [deployment.residency]
        peers = dict(value.split("=", 1) for value in flag_values(command, "--peer-region"))
        assert set(peers) == set(deployment.region_names) - {region}
        assert set(peers) <= residency_set(deployment)
        for peer, url in peers.items():
            assert url == f"https://{regional_host(deployment.name, peer)}:443"
        assert flag_values(command, "--peer-ca-file") == ["/etc/byoc/tls/ca.crt"]


def test_gateway_network_policy_admits_the_peers_on_the_gateway_port_only(case: tuple[Deployment, Plan]) -> None:
    deployment, plan = case
    for regional in deployment.per_region:
        stack = plan.of_stack(deployment.stack_name(regional.region))
        policies = stack.by_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
        (policy,) = [r for r in policies if r.name.endswith("-netpol-gateway")]
        peer_cidrs = {cidr for _region, _name, cidr in regional.peers()}
        ingress_from = {
            block["ipBlock"]["cidr"]: {p["port"] for p in rule["ports"]}
            for rule in policy.inputs["spec"]["ingress"]
            for block in rule["from"]
            if "ipBlock" in block
        }
        egress_to = {
            block["ipBlock"]["cidr"]: {p["port"] for p in rule["ports"]}
            for rule in policy.inputs["spec"]["egress"]
            for block in rule.get("to", [])
            if "ipBlock" in block and block["ipBlock"]["cidr"] in peer_cidrs
        }
        for cidr in peer_cidrs:
            assert ingress_from[cidr] == {8080}
            assert egress_to[cidr] == {443}
        assert "0.0.0.0/0" not in ingress_from


def test_every_pair_of_regions_is_peered(case: tuple[Deployment, Plan]) -> None:
    deployment, plan = case
    layer = plan.of_stack(deployment.stack_name())
    pairs = {frozenset(pair) for pair in itertools.combinations(deployment.region_names, 2)}
    if deployment.cloud == "aws":
        connections = layer.by_type("aws:ec2/vpcPeeringConnection:VpcPeeringConnection")
        peered = {frozenset((provider_region(plan, c), c.inputs["peerRegion"])) for c in connections}
        assert len(connections) == len(pairs) and peered == pairs
        accepters = layer.by_type("aws:ec2/vpcPeeringConnectionAccepter:VpcPeeringConnectionAccepter")
        assert {provider_region(plan, a) for a in accepters} == {
            c.inputs["peerRegion"] for c in connections
        }  # each accepted in its peer region
        # routes both ways: to each peer's range in every private route table of each region
        routes = layer.by_type("aws:ec2/route:Route")
        for regional in deployment.per_region:
            mine = [r for r in routes if provider_region(plan, r) == regional.region]
            assert {r.inputs["destinationCidrBlock"] for r in mine} == {c for _r, _n, c in regional.peers()}
            assert len(mine) == 3 * len(regional.peers())
    else:
        peerings = layer.by_type("gcp:compute/networkPeering:NetworkPeering")
        directions = {(p.inputs["network"], p.inputs["peerNetwork"]) for p in peerings}
        assert len(peerings) == 2 * len(pairs) == len(directions)
        assert all((b, a) in directions for a, b in directions)  # both directions of each pair


def test_one_private_zone_one_entry_name_a_health_check_per_region(case: tuple[Deployment, Plan]) -> None:
    deployment, plan = case
    layer = plan.of_stack(deployment.stack_name())
    regions = set(deployment.region_names)
    if deployment.cloud == "aws":
        (zone,) = layer.by_type("aws:route53/zone:Zone")
        assert zone.inputs["name"] == private_zone(deployment.name)
        associations = layer.by_type("aws:route53/zoneAssociation:ZoneAssociation")
        associated = {v["vpcRegion"] for v in zone.inputs["vpcs"]} | {a.inputs["vpcRegion"] for a in associations}
        assert associated == regions  # visible in every regional VPC
        checks = layer.by_type("aws:route53/healthCheck:HealthCheck")
        assert {c.inputs["type"] for c in checks} == {"CLOUDWATCH_METRIC"}
        assert {c.inputs["cloudwatchAlarmRegion"] for c in checks} == regions
        alarms = layer.by_type("aws:cloudwatch/metricAlarm:MetricAlarm")
        assert {(a.inputs["namespace"], a.inputs["metricName"]) for a in alarms} == {
            ("AWS/NetworkELB", "HealthyHostCount")
        }
        assert {provider_region(plan, a) for a in alarms} == regions  # each alarm in its NLB's region
        records = layer.by_type("aws:route53/record:Record")
        entries = [r for r in records if r.inputs["name"] == entry_name(deployment.name)]
        assert {r.inputs["setIdentifier"] for r in entries} == regions
        assert {r.inputs["healthCheckId"] for r in entries} == {f"{c.name}-id" for c in checks}
        hosts = {r.inputs["name"] for r in records} - {entry_name(deployment.name)}
        assert hosts == {regional_host(deployment.name, region) for region in regions}
    else:
        (zone,) = layer.by_type("gcp:dns/managedZone:ManagedZone")
        assert zone.inputs["dnsName"] == f"{private_zone(deployment.name)}."
        assert zone.inputs["visibility"] == "private"
        assert len(zone.inputs["privateVisibilityConfig"]["networks"]) == len(regions)
        records = layer.by_type("gcp:dns/recordSet:RecordSet")
        (entry,) = [r for r in records if r.inputs["name"] == f"{entry_name(deployment.name)}."]
        geos = entry.inputs["routingPolicy"]["geos"]
        assert {g["location"] for g in geos} == regions
        targets = [g["healthCheckedTargets"]["internalLoadBalancers"] for g in geos]
        assert all(len(t) == 1 for t in targets)
        assert {t[0]["region"] for t in targets} == regions
        hosts = {r.inputs["name"] for r in records} - {entry.inputs["name"]}
        assert hosts == {f"{regional_host(deployment.name, region)}." for region in regions}


def test_the_model_is_built_once_and_replicated_to_every_region(case: tuple[Deployment, Plan]) -> None:
    deployment, plan = case
    primary, *others = deployment.per_region
    for regional in deployment.per_region:
        jobs = [
            r
            for r in plan.of_stack(deployment.stack_name(regional.region)).by_type("kubernetes:batch/v1:Job")
            if r.name.endswith("-build")
        ]
        assert len(jobs) == (1 if regional is primary else 0), regional.region
    source = plan.of_stack(deployment.stack_name(primary.region))
    if deployment.cloud == "aws":
        (replication,) = source.by_type("aws:s3/bucketReplicationConfig:BucketReplicationConfig")
        rules = replication.inputs["rules"]
        assert len(rules) == len(others)
        for rule, regional in zip(rules, others, strict=True):
            assert rule["filter"] == {"prefix": "artifacts/"}
            assert rule["deleteMarkerReplication"] == {"status": "Disabled"}
            assert rule["destination"]["bucket"] == f"arn:aws:s3:::byoc-{regional.name}-artifacts-123456789012"
            # encrypted with the destination region's own artifact key
            key = rule["destination"]["encryptionConfiguration"]["replicaKmsKeyId"]
            assert key == f"arn:aws:kms:{regional.region}:123456789012:alias/byoc/{regional.name}/artifacts"
        for regional in others:
            assert not plan.of_stack(deployment.stack_name(regional.region)).by_type(
                "aws:s3/bucketReplicationConfig:BucketReplicationConfig"
            )
    else:
        jobs = source.by_type("gcp:storage/transferJob:TransferJob")
        sinks = {j.inputs["replicationSpec"]["gcsDataSink"]["bucketName"] for j in jobs}
        assert sinks == {f"byoc-{regional.name}-artifacts-123456789012" for regional in others}
        assert all(j.inputs["replicationSpec"]["objectConditions"]["includePrefixes"] == ["artifacts/"] for j in jobs)


def test_a_one_region_deployment_has_no_global_layer_and_no_spill_over() -> None:
    plan = rendered(region="eu-west-2")
    assert plan.stacks() == ["test"]
    command = gateway_command(plan)
    assert "--peer-region" not in command and "--region" not in command
    assert not plan.by_type("aws:s3/bucketReplicationConfig:BucketReplicationConfig")
    assert len([r for r in plan.by_type("kubernetes:batch/v1:Job") if r.name.endswith("-build")]) == 1


def test_gateway_load_balancers_answer_peers_and_report_the_gateways_health(case: tuple[Deployment, Plan]) -> None:
    """AWS: an internal NLB (reached over the peering as any VPC address is). GCP: an internal load balancer with
    global access (peers and clients of other regions), externalTrafficPolicy Local and GKE subsetting, so its
    backends are the nodes of ready gateway pods: the health Cloud DNS's entry name fails over on."""
    deployment, plan = case
    for region in deployment.region_names:
        stack = plan.of_stack(deployment.stack_name(region))
        (service,) = [r for r in stack.by_type("kubernetes:core/v1:Service") if r.name.endswith("-gateway-service")]
        annotations = service.inputs["metadata"]["annotations"]
        if deployment.cloud == "aws":
            assert annotations["service.beta.kubernetes.io/aws-load-balancer-internal"] == "true"
        else:
            assert annotations["networking.gke.io/load-balancer-type"] == "Internal"
            assert annotations["networking.gke.io/internal-load-balancer-allow-global-access"] == "true"
            assert service.inputs["spec"]["externalTrafficPolicy"] == "Local"
            (cluster,) = stack.by_type("gcp:container/cluster:Cluster")
            assert cluster.inputs["enableL4IlbSubsetting"] is True


def test_docs_resource_counts_per_stack() -> None:
    """docs/multi-region.md's Numbers table is what `byoc plan` of examples/byoc.yaml records, per stack."""
    row = re.compile(
        r"^\| `byoc plan -f examples/byoc.yaml(?P<flags>[^`]*)` "
        r"\| (?P<primary>\d+) \| (?P<second>\d+) \| (?P<layer>\d+) \|$",
        re.MULTILINE,
    )
    rows = list(row.finditer((ROOT / "docs" / "multi-region.md").read_text()))
    assert len(rows) == 2, "the Numbers table of docs/multi-region.md was not found"
    for found in rows:
        result = run_byoc("plan", "-f", "examples/byoc.yaml", *found["flags"].split(), "-o", "json")
        assert result.returncode == 0, result.stderr
        plan = json.loads(result.stdout)
        stacks = [r["stack"] for r in plan["placement"]["regions"]] + [plan["placement"]["global_stack"]]
        counted = [sum(r["stack"] == stack for r in plan["resources"]) for stack in stacks]
        written = [int(found[key]) for key in ("primary", "second", "layer")]
        assert counted == written, f"docs/multi-region.md row {found['flags'] or '(aws)'}: write {counted}"


def test_every_regional_stack_passes_every_check(case: tuple[Deployment, Plan]) -> None:
    """Each region's foundation, judged alone as the evidence pack judges a stack, fails no check: the replication's
    grants (the primary's) reach no batch file, the peer rules open nothing wide."""
    from compliance.evaluate import evaluate, graph_from_plan
    from compliance.model import Status

    deployment, plan = case
    for regional in deployment.per_region:
        document = regional.plan_document()
        document["resources"] = [r.as_dict() for r in plan.of_stack(regional.name).resources]
        findings = evaluate(graph_from_plan(document))
        failed = [(f.check.id, f.resource.name) for f in findings if f.status in (Status.FAIL, Status.ERROR)]
        assert failed == [], regional.region


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_pulumi_project_runs_each_regional_stack_and_the_global_layer_by_name(cloud: str, tmp_path: Path) -> None:
    """`pulumi up -C stacks/<cloud>` on a stack named as byoc names it runs what `byoc plan` records for that stack;
    a stack of another name is refused, naming the stacks."""
    import runpy

    import pulumi

    from byoc.engines.offline import render, run_offline
    from byoc.errors import ByocError
    from byoc.resolve import resolve
    from byoc.spec import load_spec
    from stacks.aws.program import program as aws_program
    from stacks.multi_region import stack_program

    spec = tmp_path / "byoc.yaml"
    spec.write_text((ROOT / "examples" / "byoc.yaml").read_text())
    deployment = resolve(load_spec(spec, {"cloud": cloud}))
    plan = render(deployment)
    assert plan is not None

    def via_main(_: Any) -> dict[str, Any]:
        pulumi.runtime.set_config("byoc:spec", str(spec))
        runpy.run_path(str(ROOT / "stacks" / cloud / "__main__.py"), run_name="__main__")
        return {}

    secondary = deployment.per_region[1]
    for seen_as, stack in ((secondary, secondary.name), (deployment, deployment.stack_name())):
        from_main = run_offline(seen_as, via_main, stack)
        # __main__ also exports the provider versions it checked (no resource)
        assert from_main.counts() == plan.of_stack(stack).counts(), stack
    with pytest.raises(ByocError, match="demo-global"):
        stack_program(deployment, "demo", aws_program, "stacks.aws.global_layer:program")


@pytest.fixture(scope="module")
def peer_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA certificate, standing in for the gateway TLS Secret's ca.crt."""
    import subprocess

    folder = tmp_path_factory.mktemp("peer-ca")
    cert, key = folder / "ca.crt", folder / "ca.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)),
            *("-days", "1", "-subj", "/CN=byoc test CA"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert


def test_the_gateway_accepts_the_rendered_spill_over_flags(case: tuple[Deployment, Plan], peer_ca: Path) -> None:
    """The flags each region's gateway is started with pass the gateway's own residency rules (runtime/serve:
    peers known, of this cloud, inside the set, not itself, each once, the CA readable)."""
    from runtime.serve.config import GatewayConfig, parse_peer_region

    deployment, plan = case
    for region in deployment.region_names:
        command = gateway_command(plan.of_stack(deployment.stack_name(region)))
        config = GatewayConfig(
            region=flag_values(command, "--region")[0],
            residency=flag_values(command, "--residency")[0],
            peer_regions=tuple(parse_peer_region(p) for p in flag_values(command, "--peer-region")),
            peer_ca_file=peer_ca,
        )
        allowed = config.residency_regions()
        assert {peer.region for peer in config.peer_regions} <= allowed
        assert region not in allowed
