"""Amazon Web Services: regions, instance types, KMS key ARNs and the live EC2 offerings."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from byoc.clouds.base import Cloud
from byoc.clouds.checks import CapacityNeed, PreflightReport, SweepReport, SweepTarget
from byoc.errors import ByocFailure

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client


class Aws(Cloud):
    name = "aws"
    title = "AWS"
    key_pattern = re.compile(r"^arn:aws[a-z-]*:kms:(?P<region>[a-z0-9-]+):[0-9]{12}:(key|alias)/[A-Za-z0-9/_-]+$")
    key_example = "arn:aws:kms:eu-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    stack_program = "stacks.aws.program:program"

    def key_region(self, key: str) -> str | None:
        match = self.key_pattern.match(key)
        return match["region"] if match else None

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
