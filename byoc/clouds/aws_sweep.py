"""AWS sweep after `byoc destroy`: what controllers made that Pulumi never saw, found by its tags.

Controllers inside the cluster create cloud resources of their own, and each is known to outlive a teardown:
Karpenter's instances and launch templates, the AWS Load Balancer Controller's NLB and its security groups, the VPC
CNI's network interfaces, the EBS CSI driver's volumes. They carry the deployment's or the cluster's tag, and only
resources carrying one of `owner_tags` are ever touched: an untagged resource in the same VPC never is.

Order (each kind waits for the one before it): instances (terminated and waited for) -> load balancers ->
launch templates -> available network interfaces -> available volumes -> security groups. A deletion refused
because of a dependency (DependencyViolation, ResourceInUse, ...) is retried with exponential backoff.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from byoc.clouds.checks import SweepReport, SweepTarget, SweptResource
from byoc.names import DEPLOYMENT_TAG

# Errors that mean "something still depends on it; try again shortly".
RETRYABLE = frozenset(
    {"DependencyViolation", "ResourceInUse", "InvalidGroup.InUse", "InvalidNetworkInterface.InUse", "VolumeInUse"}
)


def owner_tags(target: SweepTarget) -> list[tuple[str, list[str] | None]]:
    """(tag key, accepted values or None for any) that tie a resource to the deployment or its cluster."""
    cluster = target.cluster
    return [
        (DEPLOYMENT_TAG, [target.deployment]),
        (f"kubernetes.io/cluster/{cluster}", ["owned"]),  # EKS, Karpenter, EBS CSI, the load-balancer controller
        ("eks:eks-cluster-name", [cluster]),  # Karpenter's instances and launch templates
        ("elbv2.k8s.aws/cluster", [cluster]),  # the AWS Load Balancer Controller's NLB and security groups
        ("cluster.k8s.amazonaws.com/name", [cluster]),  # the VPC CNI's network interfaces
    ]


def _tag_filters(target: SweepTarget) -> list[tuple[str, list[dict[str, Any]]]]:
    filters = []
    for key, values in owner_tags(target):
        spec: dict[str, Any] = {"Name": f"tag:{key}", "Values": values}
        if values is None:
            spec = {"Name": "tag-key", "Values": [key]}
        filters.append((key, [spec]))
    return filters


def _matching_tag(tags: list[dict[str, str]] | dict[str, str], target: SweepTarget) -> str | None:
    pairs = tags if isinstance(tags, dict) else {t["Key"]: t["Value"] for t in tags}
    for key, values in owner_tags(target):
        if key in pairs and (values is None or pairs[key] in values):
            return f"{key}={pairs[key]}"
    return None


class Sweeper:
    """Find (and with `delete`, remove) the tagged leftovers of a deployment in its region."""

    def __init__(
        self,
        target: SweepTarget,
        delete: bool,
        attempts: int = 6,
        first_delay_s: float = 2.0,
        wait_s: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
        on_progress: Callable[[str], None] = lambda _: None,
    ) -> None:
        import boto3
        from botocore.config import Config

        config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})
        self.target = target
        self.delete = delete
        self.attempts = attempts
        self.first_delay_s = first_delay_s
        self.wait_s = wait_s
        self.sleep = sleep
        self.on_progress = on_progress
        # typed loosely: the describe calls are chosen by name below
        self.ec2: Any = boto3.client("ec2", region_name=target.region, config=config)
        self.elbv2: Any = boto3.client("elbv2", region_name=target.region, config=config)
        self.report = SweepReport(region=target.region)

    # -- finding -----------------------------------------------------------------------------------------------
    def _ec2_find(self, describe: str, key: str, id_field: str, extra: list[dict[str, Any]]) -> dict[str, str]:
        """{resource id: matching tag} over one EC2 Describe call per owner tag."""
        found: dict[str, str] = {}
        for tag_key, filters in _tag_filters(self.target):
            paginator = self.ec2.get_paginator(describe)
            for page in paginator.paginate(Filters=filters + extra):
                items = page.get(key, [])
                if key == "Reservations":
                    items = [i for r in items for i in r.get("Instances", [])]
                for item in items:
                    # DescribeNetworkInterfaces names the list TagSet; the other calls, Tags
                    tag = _matching_tag(item.get("Tags") or item.get("TagSet") or [], self.target) or tag_key
                    found.setdefault(item[id_field], tag)
        return found

    def find_instances(self) -> dict[str, str]:
        states = {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}
        return self._ec2_find("describe_instances", "Reservations", "InstanceId", [states])

    def find_launch_templates(self) -> dict[str, str]:
        return self._ec2_find("describe_launch_templates", "LaunchTemplates", "LaunchTemplateId", [])

    def find_network_interfaces(self) -> dict[str, str]:
        available = {"Name": "status", "Values": ["available"]}
        return self._ec2_find("describe_network_interfaces", "NetworkInterfaces", "NetworkInterfaceId", [available])

    def find_volumes(self) -> dict[str, str]:
        available = {"Name": "status", "Values": ["available"]}
        return self._ec2_find("describe_volumes", "Volumes", "VolumeId", [available])

    def find_security_groups(self) -> dict[str, str]:
        groups = self._ec2_find("describe_security_groups", "SecurityGroups", "GroupId", [])
        if not groups:
            return groups
        # a VPC's default group can never be deleted, whatever its tags say
        described = self.ec2.describe_security_groups(GroupIds=sorted(groups))["SecurityGroups"]
        return {g["GroupId"]: groups[g["GroupId"]] for g in described if g.get("GroupName") != "default"}

    def find_load_balancers(self) -> dict[str, str]:
        arns = [
            lb["LoadBalancerArn"]
            for page in self.elbv2.get_paginator("describe_load_balancers").paginate()
            for lb in page.get("LoadBalancers", [])
        ]
        found: dict[str, str] = {}
        for start in range(0, len(arns), 20):  # DescribeTags takes at most 20 ARNs
            for description in self.elbv2.describe_tags(ResourceArns=arns[start : start + 20])["TagDescriptions"]:
                tag = _matching_tag(description.get("Tags", []), self.target)
                if tag:
                    found[description["ResourceArn"]] = tag
        return found

    # -- deleting ----------------------------------------------------------------------------------------------
    def _delete(self, kind: str, resource_id: str, tag: str, call: Callable[[str], Any]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        entry = SweptResource(kind=kind, id=resource_id, tag=tag)
        self.report.resources.append(entry)
        if not self.delete:
            return
        delay = self.first_delay_s
        for attempt in range(1, self.attempts + 1):
            try:
                call(resource_id)
                entry.action = "deleted"
                self.on_progress(f"deleted {kind} {resource_id}")
                return
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                message = str(exc.response.get("Error", {}).get("Message", ""))
                if code in RETRYABLE and attempt < self.attempts:
                    self.on_progress(f"{kind} {resource_id}: {code}; retrying in {delay:.0f}s")
                    self.sleep(delay)
                    delay *= 2
                    continue
                entry.action = "failed"
                entry.error = f"{code}: {message}"
                return
            except BotoCoreError as exc:
                entry.action = "failed"
                entry.error = f"{type(exc).__name__}: {exc}"
                return

    def _wait_terminated(self, instance_ids: list[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError, WaiterError

        try:
            self.ec2.get_waiter("instance_terminated").wait(
                InstanceIds=instance_ids,
                WaiterConfig={"Delay": max(1, int(self.first_delay_s)), "MaxAttempts": max(1, int(self.wait_s / 5))},
            )
        except (WaiterError, ClientError, BotoCoreError) as exc:
            self.report.errors.append(f"instances did not all terminate: {exc}")

    def run(self) -> SweepReport:
        """Find every kind in order; with `delete`, remove each before looking at the next."""
        from botocore.exceptions import BotoCoreError, ClientError

        ec2, elbv2 = self.ec2, self.elbv2
        steps: list[tuple[str, Callable[[], dict[str, str]], Callable[[str], Any]]] = [
            ("instance", self.find_instances, lambda i: ec2.terminate_instances(InstanceIds=[i])),
            ("load-balancer", self.find_load_balancers, lambda a: elbv2.delete_load_balancer(LoadBalancerArn=a)),
            ("launch-template", self.find_launch_templates, lambda i: ec2.delete_launch_template(LaunchTemplateId=i)),
            (
                "network-interface",
                self.find_network_interfaces,
                lambda i: ec2.delete_network_interface(NetworkInterfaceId=i),
            ),
            ("volume", self.find_volumes, lambda i: ec2.delete_volume(VolumeId=i)),
            ("security-group", self.find_security_groups, lambda i: ec2.delete_security_group(GroupId=i)),
        ]
        for kind, find, remove in steps:
            try:
                found = find()
            except (ClientError, BotoCoreError) as exc:
                self.report.errors.append(f"could not list {kind}s: {exc}")
                continue
            for resource_id, tag in sorted(found.items()):
                self._delete(kind, resource_id, tag, remove)
            if kind == "instance" and self.delete:
                terminated = [r.id for r in self.report.resources if r.kind == "instance" and r.action == "deleted"]
                if terminated:
                    self._wait_terminated(terminated)
        return self.report


def sweep(target: SweepTarget, delete: bool, **options: Any) -> SweepReport:
    return Sweeper(target, delete, **options).run()
