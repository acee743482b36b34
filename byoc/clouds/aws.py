"""Amazon Web Services: regions, instance types, KMS key ARNs and the live EC2 offerings."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from byoc.catalogs import InstanceType
from byoc.clouds.base import Cloud
from byoc.clouds.checks import CapacityNeed, PreflightReport, SweepReport, SweepTarget
from byoc.errors import ByocError, ByocFailure, ByocWarning
from byoc.sizing import NodeAllocatable, eks_allocatable

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client


class Aws(Cloud):
    name = "aws"
    title = "AWS"
    key_pattern = re.compile(r"^arn:aws[a-z-]*:kms:(?P<region>[a-z0-9-]+):[0-9]{12}:(key|alias)/[A-Za-z0-9/_-]+$")
    key_example = "arn:aws:kms:eu-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    stack_program = "stacks.aws.program:program"
    provider_sdk = "pulumi-aws"
    node_pool_fallbacks = True  # the NodePool allows every type of placement.instance_types
    object_store_scheme = "s3://"
    # EKS: publicAccessCidrs takes at most 40 blocks and refuses private (RFC 1918) ranges (EKS User Guide,
    # "Cluster API server endpoint"; the API answers InvalidParameterException).
    allowed_cidrs_max = 40
    allowed_cidrs_private = False
    private_allowlist_reason = (
        "EKS refuses private ranges in publicAccessCidrs; private networks reach the private endpoint in the VPC"
    )

    unsupported_fields: ClassVar[dict[str, str]] = {
        "access.security_group": "it turns on GKE's Google Groups for RBAC; on EKS people reach the cluster through "
        "access entries (docs/aws-foundation.md)",
    }

    def key_region(self, key: str) -> str | None:
        match = self.key_pattern.match(key)
        return match["region"] if match else None

    def node_allocatable(self, instance: InstanceType) -> NodeAllocatable:
        # nodeadm's kubelet reservations on the memory Karpenter assumes for a type it has not seen yet: a pod that
        # does not fit by Karpenter's reckoning gets no node of that type
        return eks_allocatable(instance)

    # Karpenter's EC2NodeClass amiSelectorTerms alias: family@version, the version an amazon-eks-ami release tag
    # (vYYYYMMDD) for AL2023 or a Bottlerocket release (v1.x.y); Karpenter picks the NVIDIA variant for GPU
    # instance types (karpenter.sh/docs/concepts/nodeclasses). EKS 1.33+ has no AL2 AMIs.
    node_image_pattern = re.compile(
        r"^(?P<family>al2023|bottlerocket)@(?P<version>latest|v[0-9]{8}|v[0-9]+\.[0-9]+\.[0-9]+)$"
    )

    def node_image(self, requested: str | None) -> tuple[str | None, list[ByocWarning]]:
        image = requested or str(self.catalog.kubernetes["eks"]["ami_alias"])
        match = self.node_image_pattern.match(image)
        if not match:
            raise ByocError(
                "node_image",
                f"{image!r} is not a Karpenter AMI alias byoc can use on EKS "
                f"{self.catalog.kubernetes['eks']['version']}",
                "write family@version: al2023@v20260512 (an amazon-eks-ami release), bottlerocket@v1.x.y, or "
                "al2023@latest; AL2 has no AMIs for EKS 1.33 and later",
            )
        warnings = []
        if match["version"] == "latest":
            warnings.append(
                ByocWarning(
                    "node_image",
                    f"{image} follows every AMI release: each one drift-replaces every GPU node (a model reload "
                    "each; with one replica, an outage)",
                    f"pin a dated alias such as {self.catalog.kubernetes['eks']['ami_alias']}",
                )
            )
        return image, warnings

    def provider_managed_key(self, key: str) -> str | None:
        # AWS-managed keys (alias/aws/<service>) have a key policy only AWS controls: no grants for EKS
        # (cluster-api-provider-aws#2432), no use by CloudTrail or CloudWatch Logs, no rotation settings of yours.
        # The evidence pack fails every customer-managed-key check on one.
        if key.startswith("alias/aws/") or ":alias/aws/" in key:
            alias = key.split("alias/", 1)[1]
            return (
                f"alias/{alias} is an AWS-managed key: its key policy is AWS's, so EKS cannot be granted it and "
                "CloudTrail, CloudWatch Logs and the artifact bucket cannot use it as a customer-managed key"
            )
        return None

    def account_identity(self, region: str, field: str) -> str:
        """The AWS account the credential chain reaches (STS GetCallerIdentity), before any live collection.

        Raises:
            ByocFailure: naming `field`: no credentials found, the endpoint unreachable, or STS refusing them.
        """
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

        config = Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2, "mode": "standard"})
        try:
            return str(boto3.client("sts", region_name=region, config=config).get_caller_identity()["Account"])
        except NoCredentialsError:
            raise ByocFailure(
                field,
                "no AWS credentials found",
                "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or run in a role), then run it again",
            ) from None
        except EndpointConnectionError as exc:
            raise ByocFailure(field, f"cannot reach AWS STS ({exc})", "check the network or AWS_ENDPOINT_URL") from None
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise ByocFailure(
                field,
                f"AWS refused the credentials: {error.get('Code', 'error')}: {error.get('Message', '')}".strip(),
                "check that the credentials are current (aws sts get-caller-identity)",
            ) from None
        except BotoCoreError as exc:
            raise ByocFailure(field, f"AWS credentials could not be used: {exc}", "check the AWS profile") from None

    def live_offerings(self, regions: Iterable[str]) -> dict[str, frozenset[str] | str]:
        """EC2 DescribeInstanceTypeOfferings per region (AWS_ENDPOINT_URL and the usual credential chain apply)."""
        import boto3
        from botocore.config import Config
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        wanted = sorted(self.instance_types)
        config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})
        result: dict[str, frozenset[str] | str] = {}
        for region in regions:
            client: EC2Client = boto3.client("ec2", region_name=region, config=config)
            try:
                offered: set[str] = set()
                pages = client.get_paginator("describe_instance_type_offerings").paginate(
                    LocationType="region", Filters=[{"Name": "instance-type", "Values": wanted}]
                )
                for page in pages:
                    offered.update(o["InstanceType"] for o in page.get("InstanceTypeOfferings", []))
                result[region] = frozenset(offered)
            except NoCredentialsError:
                raise ByocFailure(
                    "--refresh",
                    "no AWS credentials found",
                    "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or drop --refresh",
                ) from None
            except (EndpointConnectionError, ConnectTimeoutError) as exc:
                # The endpoint is down or unreachable: every other region would wait out the same timeouts.
                raise ByocFailure(
                    "--refresh", f"cannot reach the EC2 API ({exc})", "check the network or AWS_ENDPOINT_URL"
                ) from None
            except ClientError as exc:
                error = exc.response.get("Error", {})
                result[region] = f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
            except BotoCoreError as exc:
                result[region] = f"{type(exc).__name__}: {exc}"
        return result

    def preflight(self, need: CapacityNeed) -> PreflightReport:
        """STS identity, EC2 zone offerings and the EC2 vCPU quota (byoc/clouds/aws_preflight.py)."""
        from byoc.clouds.aws_preflight import preflight

        return preflight(need)

    def sweep(self, target: SweepTarget, delete: bool, **options: Any) -> SweepReport:
        """Tagged instances, load balancers, launch templates, ENIs, volumes, security groups
        (byoc/clouds/aws_sweep.py)."""
        from byoc.clouds.aws_sweep import sweep

        return sweep(target, delete, **options)
