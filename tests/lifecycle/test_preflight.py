"""`byoc preflight` (and the preflight inside `byoc up`) against moto on 127.0.0.1 for STS and EC2, and against a
local server speaking the Service Quotas JSON API for the EC2 vCPU quotas, which moto does not answer (its Service
Quotas knows only VPC quotas): enough, short, the AWS default where none was applied, unreadable."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import boto3
import yaml

from tests.conftest import ROOT
from tests.lifecycle.conftest import QuotaServer, StandIn, aws_env, byoc

# llama 8B on h100x1-fp8 in eu-west-2 -> p5.4xlarge (one region: each region of a multi-region deployment gets its
# own report, tests/lifecycle/test_multi_region.py)
EXAMPLE = str(ROOT / "tests" / "lifecycle" / "data" / "byoc-one-region.yaml")
P_ON_DEMAND = "L-417A185B"
NEEDED = 80  # 5 x p5.4xlarge (max_replicas 4 + the build Job) x 16 vCPUs


def preflight(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = byoc("preflight", *(args or ("-f", EXAMPLE)), "--output", "json", env=env)
    assert "Traceback" not in result.stderr, result.stderr
    document = json.loads(result.stdout)
    return result, {c["check"]: c for c in document["checks"]} | {"_doc": document}


def test_enough_quota(moto_endpoint: str, quota_server: QuotaServer) -> None:
    quota_server.applied[P_ON_DEMAND] = 96
    result, checks = preflight(aws_env(moto_endpoint, quota_server.url))
    assert result.returncode == 0
    assert checks["credentials"]["status"] == "ok" and checks["credentials"]["account"] == "123456789012"
    offering = checks["offering"]
    assert offering["status"] == "ok" and offering["instance_type"] == "p5.4xlarge"
    assert offering["zones"] == ["eu-west-2a", "eu-west-2b", "eu-west-2c"]
    quota = checks["gpu-quota"]
    assert quota["status"] == "ok"
    assert (quota["quota_code"], quota["quota_vcpus"], quota["vcpus_needed"]) == (P_ON_DEMAND, 96, NEEDED)
    assert (quota["instances"], quota["vcpus_per_instance"]) == (5, 16)
    assert quota_server.calls == [("GetServiceQuota", P_ON_DEMAND)]


def test_short_quota_names_the_code_and_the_increase(moto_endpoint: str, quota_server: QuotaServer) -> None:
    quota_server.applied[P_ON_DEMAND] = 0  # what new accounts often have
    result, checks = preflight(aws_env(moto_endpoint, quota_server.url))
    assert result.returncode == 1
    quota = checks["gpu-quota"]
    assert quota["status"] == "fail"
    assert "EC2 quota L-417A185B (Running On-Demand P instances) in eu-west-2 is 0 vCPUs" in quota["detail"]
    assert "short by 80 vCPUs" in quota["detail"]
    assert "--quota-code L-417A185B --desired-value 80 --region eu-west-2" in quota["hint"]


def test_running_instances_count_against_the_quota(moto_endpoint: str, quota_server: QuotaServer) -> None:
    ec2 = boto3.client(
        "ec2", endpoint_url=moto_endpoint, region_name="eu-west-2", aws_access_key_id="t", aws_secret_access_key="t"
    )
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    running = ec2.run_instances(ImageId=image, InstanceType="p5.48xlarge", MinCount=1, MaxCount=1)["Instances"]
    own = [{"ResourceType": "instance", "Tags": [{"Key": "byoc:deployment", "Value": "demo"}]}]
    # the deployment's own node: a re-run of `up` counts it in what it needs, not in what else runs
    running += ec2.run_instances(
        ImageId=image, InstanceType="p5.4xlarge", MinCount=1, MaxCount=1, TagSpecifications=own
    )["Instances"]
    try:
        quota_server.applied[P_ON_DEMAND] = 256
        result, checks = preflight(aws_env(moto_endpoint, quota_server.url))
        quota = checks["gpu-quota"]
        assert result.returncode == 1
        assert quota["vcpus_in_use"] == 192
        assert "192 vCPUs already run in that family" in quota["detail"] and "short by 16 vCPUs" in quota["detail"]
        assert quota["desired_value"] == 272
    finally:
        ec2.terminate_instances(InstanceIds=[i["InstanceId"] for i in running])


def test_default_quota_where_none_was_applied(moto_endpoint: str, quota_server: QuotaServer) -> None:
    quota_server.defaults[P_ON_DEMAND] = 128
    result, checks = preflight(aws_env(moto_endpoint, quota_server.url))
    assert result.returncode == 0
    quota = checks["gpu-quota"]
    assert quota["status"] == "ok" and quota["quota_vcpus"] == 128
    assert quota["quota_source"] == "AWS default (no value applied to the account)"
    assert quota_server.calls == [("GetServiceQuota", P_ON_DEMAND), ("GetAWSDefaultServiceQuota", P_ON_DEMAND)]


def test_unreadable_quota_says_so_and_goes_on(moto_endpoint: str, quota_server: QuotaServer) -> None:
    quota_server.deny = True
    result, checks = preflight(aws_env(moto_endpoint, quota_server.url))
    assert result.returncode == 0
    quota = checks["gpu-quota"]
    assert quota["status"] == "unknown"
    assert "could not read EC2 quota L-417A185B" in quota["detail"] and "AccessDeniedException" in quota["detail"]
    assert "byoc needs 80 vCPUs" in quota["detail"] and "servicequotas:GetServiceQuota" in quota["hint"]


def test_moto_alone_cannot_answer_ec2_quotas(moto_endpoint: str) -> None:
    result, checks = preflight(aws_env(moto_endpoint))
    assert result.returncode == 0
    assert checks["offering"]["status"] == "ok"
    assert checks["gpu-quota"]["status"] == "unknown"


def test_spot_and_g_family_quota_codes(moto_endpoint: str, quota_server: QuotaServer, tmp_path: Path) -> None:
    spec = yaml.safe_load(Path(EXAMPLE).read_text()) | {"capacity": "spot"}
    (tmp_path / "spot.yaml").write_text(yaml.safe_dump(spec))
    quota_server.applied |= {"L-7212CCBC": 80, "L-DB2E81BA": 0}
    env = aws_env(moto_endpoint, quota_server.url)
    spot, checks = preflight(env, "-f", str(tmp_path / "spot.yaml"))
    assert spot.returncode == 0 and checks["gpu-quota"]["quota_code"] == "L-7212CCBC"
    assert checks["gpu-quota"]["quota_name"] == "All P Spot Instance Requests"
    l4, checks = preflight(env, "-f", EXAMPLE, "--shape", "l4x1-fp8")
    quota = checks["gpu-quota"]
    assert l4.returncode == 1
    assert (quota["quota_code"], quota["quota_name"]) == ("L-DB2E81BA", "Running On-Demand G and VT instances")
    assert checks["_doc"]["need"]["instance_type"] == "g6.xlarge"


def test_no_credentials(moto_endpoint: str) -> None:
    result, checks = preflight(aws_env(moto_endpoint, credentials=False))
    assert result.returncode == 1
    assert checks["credentials"]["status"] == "fail" and checks["credentials"]["detail"] == "no AWS credentials found"
    assert checks["gpu-quota"]["status"] == checks["offering"]["status"] == "unknown"


def test_up_refuses_a_short_quota_before_creating_anything(
    moto_endpoint: str, quota_server: QuotaServer, standin: StandIn, tmp_path: Path
) -> None:
    """stand-in `pulumi` (argument and flow checks only): it must never be asked to run `up`."""
    quota_server.applied[P_ON_DEMAND] = 0
    env = standin.env(aws_env(moto_endpoint, quota_server.url)) | {
        "BYOC_HOME": str(tmp_path / "home"),
        "PULUMI_CONFIG_PASSPHRASE": "test",
    }
    result = byoc("up", "-f", EXAMPLE, "--yes", env=env)
    assert result.returncode == 1
    assert "preflight.gpu-quota:" in result.stderr and "L-417A185B" in result.stderr
    assert not [c for c in standin.commands() if c.startswith("up")]
    status = byoc("status", "--output", "json", env=env)
    assert json.loads(status.stdout) == []
