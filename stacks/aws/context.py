"""What every AWS component needs: the deployment, the provider, the account, and the tags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from byoc.catalogs import load_catalog
from byoc.names import DEPLOYMENT_TAG
from byoc.resolve import Deployment


@dataclass(frozen=True)
class AwsContext:
    deployment: Deployment
    provider: aws.Provider
    account_id: pulumi.Output[str]
    partition: pulumi.Output[str]
    caller_arn: pulumi.Output[str]
    zones: pulumi.Output[list[str]]

    @property
    def name(self) -> str:
        return self.deployment.name

    @property
    def region(self) -> str:
        return self.deployment.region

    @property
    def log_retention_days(self) -> int:
        return int(load_catalog().kubernetes["log_retention_days"])

    def tags(self, **extra: str) -> dict[str, str]:
        """Every resource carries byoc:deployment=<name>: the live compliance collectors find resources by it."""
        return {DEPLOYMENT_TAG: self.name, "byoc:managed-by": "byoc", **extra}

    def opts(self, parent: pulumi.Resource, **kwargs: Any) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=parent, provider=self.provider, **kwargs)

    def arn(self, service: str, resource: str, region: bool = True) -> pulumi.Output[str]:
        """arn:<partition>:<service>:<region>:<account>:<resource>."""
        where = self.region if region else ""
        return pulumi.Output.concat(
            "arn:", self.partition, ":", service, ":", where, ":", self.account_id, ":", resource
        )

    def service_principal(self, service: str) -> str:
        return f"{service}.amazonaws.com"


def make_context(deployment: Deployment) -> AwsContext:
    provider = aws.Provider(
        "aws",
        region=deployment.region,
        # A safety net for anything AWS creates on our behalf; every resource also sets its tags itself.
        default_tags=aws.ProviderDefaultTagsArgs(tags={DEPLOYMENT_TAG: deployment.name}),
    )
    invoke = pulumi.InvokeOutputOptions(provider=provider)
    identity = aws.get_caller_identity_output(opts=invoke)
    partition = aws.get_partition_output(opts=invoke).partition
    # An assumed role's STS ARN is not what EKS access entries take; the session context gives the IAM role.
    issuer = aws.iam.get_session_context_output(arn=identity.arn, opts=invoke).issuer_arn
    zones = aws.get_availability_zones_output(
        state="available",
        # Local Zones and Wavelength Zones have no GPU instances and no EKS control plane.
        filters=[aws.GetAvailabilityZonesFilterArgs(name="opt-in-status", values=["opt-in-not-required"])],
        opts=invoke,
    ).names
    return AwsContext(
        deployment=deployment,
        provider=provider,
        account_id=identity.account_id,
        partition=partition,
        caller_arn=issuer,
        zones=zones,
    )


def policy(statements: list[dict[str, Any]]) -> pulumi.Output[str]:
    """An IAM policy document whose values may be Outputs."""
    return pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": statements})


def trust(service: str, actions: tuple[str, ...] = ("sts:AssumeRole",), **condition: Any) -> pulumi.Output[str]:
    statement: dict[str, Any] = {"Effect": "Allow", "Principal": {"Service": service}, "Action": list(actions)}
    if condition:
        statement["Condition"] = condition
    return policy([statement])
