"""AWS preflight: before anything is created, can this account run the deployment at its peak?

Checks, in order (each an `ok`, `fail` or `unknown` Check; a `fail` stops `byoc up` before any resource exists):
1. credentials: STS GetCallerIdentity (which account, as whom).
2. offering: EC2 DescribeInstanceTypeOfferings by availability zone: the zones of the region that offer the
   instance type (a region-level offering in a catalog can hide zones that do not).
3. GPU quota: EC2 counts running instances against vCPU quotas per instance family and purchase option. byoc
   needs vCPUs(instance type, from EC2 DescribeInstanceTypes) x instances at max replicas plus the build Job, on
   top of what already runs in that family (EC2 DescribeInstances). The quota is read with Service Quotas
   GetServiceQuota; where no value was ever applied to the account, GetAWSDefaultServiceQuota gives the default.
   Where neither can be read (AccessDenied, an endpoint without Service Quotas), the check is `unknown`, says so,
   and byoc goes on.

Endpoints follow boto3's usual configuration (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_SERVICE_QUOTAS, ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from byoc.clouds.checks import CapacityNeed, Check, PreflightReport
from byoc.names import DEPLOYMENT_TAG

if TYPE_CHECKING:
    from botocore.config import Config

# EC2 vCPU quotas per instance family and purchase option, service code "ec2". Source: AWS Service Quotas console
# and the Amazon EC2 User Guide, "Amazon EC2 service quotas" (On-Demand Instance and Spot Instance vCPU limits).
# New accounts often have 0 for P and G instances.
EC2_VCPU_QUOTAS: dict[tuple[str, str], tuple[str, str]] = {
    ("P", "on-demand"): ("L-417A185B", "Running On-Demand P instances"),
    ("P", "spot"): ("L-7212CCBC", "All P Spot Instance Requests"),
    ("G", "on-demand"): ("L-DB2E81BA", "Running On-Demand G and VT instances"),
    ("G", "spot"): ("L-3819A6DF", "All G and VT Spot Instance Requests"),
}


def quota_family(instance_type: str) -> str:
    """The quota family of an instance type: P (p4d, p5, p6-b200), G (g6, g6e; VT shares G's quota)."""
    family = instance_type.split(".", 1)[0].upper()
    return "G" if family.startswith(("G", "VT")) else family[:1]


def _config(attempts: int) -> Config:
    from botocore.config import Config

    return Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": attempts, "mode": "standard"})


def _error(exc: Exception) -> tuple[str, str]:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "error"))
        message = str(error.get("Message", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status and int(status) >= 500 and "<" in message:
            message = f"HTTP {status}"  # an HTML error page says nothing useful
        return code, message.strip()[:300]
    return type(exc).__name__, str(exc)[:300]


def preflight(need: CapacityNeed) -> PreflightReport:
    import boto3
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    region = need.region
    checks: list[Check] = []
    skipped = "skipped: the account could not be reached"

    # 1. credentials --------------------------------------------------------------------------------------------
    try:
        identity = boto3.client("sts", region_name=region, config=_config(2)).get_caller_identity()
        checks.append(
            Check(
                "credentials",
                "ok",
                f"account {identity['Account']} as {identity['Arn']}",
                data={"account": identity["Account"], "arn": identity["Arn"]},
            )
        )
    except NoCredentialsError:
        checks.append(
            Check(
                "credentials",
                "fail",
                "no AWS credentials found",
                "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (in CI: an OIDC role)",
            )
        )
    except (EndpointConnectionError, ConnectTimeoutError) as exc:
        checks.append(Check("credentials", "fail", f"cannot reach STS: {exc}", "check the network or AWS_ENDPOINT_URL"))
    except (ClientError, BotoCoreError) as exc:
        code, message = _error(exc)
        checks.append(
            Check("credentials", "fail", f"STS refused the credentials: {code}: {message}", "refresh the credentials")
        )
    if checks[-1].status == "fail":
        checks += [Check("offering", "unknown", skipped), Check("gpu-quota", "unknown", skipped)]
        return PreflightReport("aws", region, tuple(checks))

    ec2 = boto3.client("ec2", region_name=region, config=_config(2))
    instance_type = need.instance_type

    # 2. offering -----------------------------------------------------------------------------------------------
    try:
        pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
            LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [instance_type]}]
        )
        zones = sorted({o["Location"] for page in pages for o in page.get("InstanceTypeOfferings", [])})
        if zones:
            checks.append(
                Check(
                    "offering",
                    "ok",
                    f"{instance_type} is offered in {len(zones)} zone(s) of {region}: {', '.join(zones)}",
                    data={"instance_type": instance_type, "zones": zones},
                )
            )
        else:
            checks.append(
                Check(
                    "offering",
                    "fail",
                    f"{instance_type} is not offered in any zone of {region}",
                    "choose another region (`byoc regions --cloud aws --refresh`) or shape (`byoc shapes`)",
                    data={"instance_type": instance_type, "zones": []},
                )
            )
    except (ClientError, BotoCoreError) as exc:
        code, message = _error(exc)
        checks.append(
            Check("offering", "unknown", f"could not read EC2 offerings: {code}: {message}", "allow ec2:Describe*")
        )

    # 3. GPU quota ----------------------------------------------------------------------------------------------
    checks.append(_quota_check(need, ec2))
    return PreflightReport("aws", region, tuple(checks))


def _vcpus(ec2: Any, instance_types: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for start in range(0, len(instance_types), 100):
        answer = ec2.describe_instance_types(InstanceTypes=instance_types[start : start + 100])
        for item in answer.get("InstanceTypes", []):
            found[item["InstanceType"]] = int(item["VCpuInfo"]["DefaultVCpus"])
    return found


def _quota_check(need: CapacityNeed, ec2: Any) -> Check:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    family = quota_family(need.instance_type)
    known = EC2_VCPU_QUOTAS.get((family, need.purchase_option))
    if known is None:
        return Check("gpu-quota", "unknown", f"byoc knows no vCPU quota for {family} {need.purchase_option} instances")
    code, title = known
    where = f"EC2 quota {code} ({title}) in {need.region}"
    base: dict[str, Any] = {"quota_code": code, "quota_name": title, "purchase_option": need.purchase_option}

    try:
        per_instance = _vcpus(ec2, [need.instance_type])[need.instance_type]
        in_use = _vcpus_in_use(ec2, family, need.purchase_option, need.deployment)
    except (ClientError, BotoCoreError, KeyError) as exc:
        error_code, message = _error(exc)
        return Check(
            "gpu-quota",
            "unknown",
            f"could not count vCPUs for {where}: {error_code}: {message}",
            "allow ec2:DescribeInstanceTypes and ec2:DescribeInstances",
            data=base,
        )
    needed = per_instance * need.instances
    base |= {"vcpus_per_instance": per_instance, "instances": need.instances, "vcpus_needed": needed}
    base["vcpus_in_use"] = in_use

    quotas = boto3.client("service-quotas", region_name=need.region, config=_config(1))
    value: float | None = None
    source = "applied"
    try:
        value = float(quotas.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
    except (ClientError, BotoCoreError) as exc:
        first = _error(exc)
        # NoSuchResource: no value was ever applied to this account; the AWS default holds
        try:
            value = float(quotas.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
            source = "AWS default (no value applied to the account)"
        except (ClientError, BotoCoreError) as again:
            second = _error(again)
            return Check(
                "gpu-quota",
                "unknown",
                f"could not read {where}: {first[0]}: {first[1]}; default: {second[0]}: {second[1]}. byoc needs "
                f"{needed} vCPUs ({need.instances} x {need.instance_type} at {per_instance} vCPUs; {need.why})",
                "allow servicequotas:GetServiceQuota and servicequotas:GetAWSDefaultServiceQuota, or check the "
                "quota in the Service Quotas console; byoc goes on",
                data=base,
            )
    limit = int(value)
    base |= {"quota_vcpus": limit, "quota_source": source}
    free = limit - in_use
    usage = f"; {in_use} vCPUs already run in that family" if in_use else ""
    summary = (
        f"{where} is {limit} vCPUs ({source}){usage}; byoc needs {needed} ({need.instances} x "
        f"{need.instance_type} at {per_instance} vCPUs; {need.why})"
    )
    if free >= needed:
        return Check("gpu-quota", "ok", summary, data=base)
    desired = in_use + needed
    return Check(
        "gpu-quota",
        "fail",
        summary + f": short by {needed - max(free, 0)} vCPUs",
        f"request an increase of {code} to at least {desired}: aws service-quotas request-service-quota-increase "
        f"--service-code ec2 --quota-code {code} --desired-value {desired} --region {need.region}",
        data=base | {"desired_value": desired},
    )


def _vcpus_in_use(ec2: Any, family: str, purchase_option: str, deployment: str) -> int:
    """vCPUs of the running and pending instances that count against the family's quota, except the deployment's
    own (tagged byoc:deployment=<name>: a re-run of `up` already counts them in what it needs)."""
    counts: dict[str, int] = {}
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )
    for page in pages:
        for reservation in page.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
                if deployment and tags.get(DEPLOYMENT_TAG) == deployment:
                    continue
                kind = instance["InstanceType"]
                spot = instance.get("InstanceLifecycle") == "spot"
                if quota_family(kind) == family and spot == (purchase_option == "spot"):
                    counts[kind] = counts.get(kind, 0) + 1
    if not counts:
        return 0
    per = _vcpus(ec2, sorted(counts))
    return sum(per.get(kind, 0) * n for kind, n in counts.items())
