"""Live collectors against a moto server on 127.0.0.1 seeded with compliant and non-compliant tagged resources, a
service that answers AccessDenied, and drift between a plan and the account."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer

from tests.conftest import ROOT

REGION = "eu-west-2"
NAME = "live"
TAGS = [{"Key": "byoc:deployment", "Value": NAME}]
SECURE = {"Bool": {"aws:SecureTransport": "false"}}


def env(endpoint: str, **extra: str) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    values |= {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        **extra,
    }
    return values


def seed(endpoint: str) -> dict[str, str]:
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)

    def client(service: str) -> Any:
        return session.client(service, endpoint_url=endpoint)

    kms = client("kms")
    good_key = kms.create_key(
        Description="platform",
        Tags=[{"TagKey": "byoc:deployment", "TagValue": NAME}, {"TagKey": "byoc:key", "TagValue": "platform"}],
    )["KeyMetadata"]
    kms.enable_key_rotation(KeyId=good_key["KeyId"])
    kms.create_key(
        Description="stale",
        Tags=[{"TagKey": "byoc:deployment", "TagValue": NAME}, {"TagKey": "byoc:key", "TagValue": "stale"}],
    )
    kms.create_key(Description="someone else's")  # untagged: out of scope

    s3 = client("s3")
    where = {"LocationConstraint": REGION}
    s3.create_bucket(Bucket="byoc-live-access-logs", CreateBucketConfiguration=where)
    s3.put_bucket_tagging(
        Bucket="byoc-live-access-logs", Tagging={"TagSet": [*TAGS, {"Key": "byoc:bucket", "Value": "access-logs"}]}
    )
    s3.put_bucket_encryption(
        Bucket="byoc-live-access-logs",
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    s3.create_bucket(Bucket="byoc-live-artifacts", CreateBucketConfiguration=where)
    s3.put_bucket_tagging(
        Bucket="byoc-live-artifacts", Tagging={"TagSet": [*TAGS, {"Key": "byoc:bucket", "Value": "artifacts"}]}
    )
    s3.put_bucket_encryption(
        Bucket="byoc-live-artifacts",
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {
                        "SSEAlgorithm": "aws:kms",
                        "KMSMasterKeyID": good_key["Arn"],
                    },
                    "BucketKeyEnabled": True,
                }
            ]
        },
    )
    s3.put_bucket_versioning(Bucket="byoc-live-artifacts", VersioningConfiguration={"Status": "Enabled"})
    s3.put_public_access_block(
        Bucket="byoc-live-artifacts",
        PublicAccessBlockConfiguration=dict.fromkeys(
            ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
        ),
    )
    s3.put_bucket_ownership_controls(
        Bucket="byoc-live-artifacts", OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    )
    arn = "arn:aws:s3:::byoc-live-artifacts"
    s3.put_bucket_policy(
        Bucket="byoc-live-artifacts",
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "DenyInsecureTransport",
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:*",
                        "Resource": [arn, f"{arn}/*"],
                        "Condition": SECURE,
                    },
                    {
                        "Sid": "DenyPutsWithoutKms",
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:PutObject",
                        "Resource": f"{arn}/*",
                        "Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}},
                    },
                ],
            }
        ),
    )
    s3.put_bucket_policy(
        Bucket="byoc-live-access-logs",
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "S3ServerAccessLogDelivery",
                        "Effect": "Allow",
                        "Principal": {"Service": "logging.s3.amazonaws.com"},
                        "Action": ["s3:PutObject"],
                        "Resource": "arn:aws:s3:::byoc-live-access-logs/*",
                    }
                ],
            }
        ),
    )
    s3.put_bucket_logging(
        Bucket="byoc-live-artifacts",
        BucketLoggingStatus={"LoggingEnabled": {"TargetBucket": "byoc-live-access-logs", "TargetPrefix": "artifacts/"}},
    )
    s3.create_bucket(Bucket="byoc-live-scratch", CreateBucketConfiguration=where)  # no guard at all
    s3.put_bucket_tagging(Bucket="byoc-live-scratch", Tagging={"TagSet": TAGS})
    s3.create_bucket(Bucket="unrelated", CreateBucketConfiguration=where)

    s3.create_bucket(Bucket="byoc-live-audit-trail", CreateBucketConfiguration=where)
    trail = client("cloudtrail")
    trail.create_trail(
        Name="byoc-live",
        S3BucketName="byoc-live-audit-trail",
        IsMultiRegionTrail=True,
        EnableLogFileValidation=True,
        KmsKeyId=good_key["Arn"],
        IncludeGlobalServiceEvents=True,
        TagsList=TAGS,
    )

    logs = client("logs")
    logs.create_log_group(logGroupName=f"/byoc/{NAME}/vpc-flow-logs", kmsKeyId=good_key["Arn"])
    logs.put_retention_policy(logGroupName=f"/byoc/{NAME}/vpc-flow-logs", retentionInDays=365)
    logs.create_log_group(logGroupName=f"/aws/eks/byoc-{NAME}/cluster")  # no key, no retention

    ec2 = client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16", TagSpecifications=[{"ResourceType": "vpc", "Tags": TAGS}])["Vpc"]
    ec2.create_flow_logs(
        ResourceIds=[vpc["VpcId"]],
        ResourceType="VPC",
        TrafficType="ALL",
        LogDestinationType="cloud-watch-logs",
        LogGroupName=f"/byoc/{NAME}/vpc-flow-logs",
        DeliverLogsPermissionArn="arn:aws:iam::123456789012:role/flow",
    )
    ec2.create_launch_template(
        LaunchTemplateName="byoc-live-system-nodes",
        LaunchTemplateData={
            "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
            "BlockDeviceMappings": [
                {"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": True, "KmsKeyId": good_key["Arn"], "VolumeSize": 50}}
            ],
        },
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": TAGS}],
    )

    iam = client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "pods.eks.amazonaws.com"},
                "Action": ["sts:AssumeRole", "sts:TagSession"],
            }
        ],
    }
    iam.create_role(RoleName=f"byoc-{NAME}-serving", AssumeRolePolicyDocument=json.dumps(trust), Tags=TAGS)
    iam.put_role_policy(
        RoleName=f"byoc-{NAME}-serving",
        PolicyName="byoc-serving",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        ),
    )
    return {"good_key": good_key["KeyId"], "vpc": vpc["VpcId"]}


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, dict[str, str]]]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    seeded = seed(endpoint)
    yield endpoint, seeded
    server.stop()


def report(out: Path, environment: dict[str, str], *extra: str) -> tuple[subprocess.CompletedProcess[str], list[Any]]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "byoc",
            "compliance",
            "report",
            "--live",
            "--cloud",
            "aws",
            "--region",
            REGION,
            "--deployment",
            NAME,
            "--out",
            str(out),
            "--output",
            "json",
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=environment,
        timeout=300,
    )
    found = json.loads((out / "findings.json").read_text()) if (out / "findings.json").exists() else []
    return result, found


def by(found: list[Any], check_id: str) -> dict[str, str]:
    return {f["resource"]["name"]: f["status"] for f in found if f["check_id"] == check_id}


def test_live_findings_follow_what_exists(moto: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    endpoint, seeded = moto
    result, found = report(tmp_path / "live", env(endpoint))
    assert result.returncode == 1, result.stderr  # the non-compliant resources fail
    assert by(found, "kms_cmk_rotation_enabled") == {"platform": "PASS", "stale": "FAIL"}
    assert by(found, "s3_bucket_kms_encryption") == {
        "byoc-live-artifacts": "PASS",
        "byoc-live-scratch": "FAIL",
        "byoc-live-access-logs": "NOT_APPLICABLE",
    }
    assert by(found, "s3_bucket_versioning_enabled")["byoc-live-scratch"] == "FAIL"
    assert by(found, "s3_bucket_level_public_access_block") == {
        "byoc-live-artifacts": "PASS",
        "byoc-live-scratch": "FAIL",
        "byoc-live-access-logs": "FAIL",
    }
    assert by(found, "s3_bucket_secure_transport_policy")["byoc-live-artifacts"] == "PASS"
    assert by(found, "s3_bucket_deny_unencrypted_puts")["byoc-live-artifacts"] == "PASS"
    assert by(found, "s3_bucket_server_access_logging_enabled")["byoc-live-artifacts"] == "PASS"
    assert "unrelated" not in by(found, "s3_bucket_versioning_enabled")
    assert by(found, "cloudtrail_multi_region_enabled") == {"byoc-live": "PASS"}
    assert by(found, "cloudtrail_log_file_validation_enabled") == {"byoc-live": "PASS"}
    assert by(found, "cloudtrail_kms_encryption_enabled") == {"byoc-live": "PASS"}
    retention = by(found, "cloudwatch_log_group_retention_policy_specific_days_enabled")
    assert retention == {f"/byoc/{NAME}/vpc-flow-logs": "PASS", f"/aws/eks/byoc-{NAME}/cluster": "FAIL"}
    assert by(found, "vpc_flow_logs_enabled") == {seeded["vpc"]: "PASS"}
    assert set(by(found, "ec2_launch_template_imdsv2_required").values()) == {"PASS"}
    assert set(by(found, "ec2_launch_template_ebs_encrypted").values()) == {"PASS"}
    assert by(found, "iam_role_trust_confused_deputy_protection") == {f"byoc-{NAME}-serving": "FAIL"}
    assert set(by(found, "iam_inline_policy_no_administrative_privileges").values()) == {"FAIL"}
    assert set(by(found, "data_residency_region").values()) == {"PASS"}
    assert all(f["resource"]["source"] == "live" for f in found)


def test_access_denied_becomes_error_and_the_report_is_still_written(
    moto: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    endpoint, _ = moto

    class Denied(BaseHTTPRequestHandler):
        body = json.dumps({"__type": "AccessDeniedException", "message": "not authorized to cloudtrail"}).encode()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(400)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Denied)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        denied = f"http://127.0.0.1:{server.server_address[1]}"
        result, found = report(tmp_path / "denied", env(endpoint, AWS_ENDPOINT_URL_CLOUDTRAIL=denied))
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    trail = [f for f in found if f["check_id"] == "cloudtrail_multi_region_enabled"]
    assert [f["status"] for f in trail] == ["ERROR"]
    assert "AccessDenied" in trail[0]["reason"]
    assert by(found, "kms_cmk_rotation_enabled")["platform"] == "PASS"  # other services still read
    assert (tmp_path / "denied" / "report.html").exists()
    assert (tmp_path / "denied" / "oscal" / "assessment-results.json").exists()


def test_drift_between_the_plan_and_the_account(moto: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    endpoint, _ = moto
    spec = yaml.safe_load((ROOT / "examples" / "byoc.yaml").read_text())
    spec |= {"name": NAME, "region": REGION}
    (tmp_path / "byoc.yaml").write_text(yaml.safe_dump(spec))
    planned = subprocess.run(
        [sys.executable, "-m", "byoc", "plan", "-f", str(tmp_path / "byoc.yaml"), "--out", str(tmp_path / "plan")],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=300,
    )
    assert planned.returncode == 0, planned.stderr
    result, _ = report(tmp_path / "drift", env(endpoint), "--plan", str(tmp_path / "plan" / "plan.json"))
    summary = json.loads(result.stdout)
    drift = {d["check_id"]: d for d in summary["drift"]}
    assert drift["kms_cmk_rotation_enabled"]["declared"] == "PASS"
    assert drift["kms_cmk_rotation_enabled"]["live"] == "FAIL"
    assert drift["kms_cmk_rotation_enabled"]["resources"] == ["stale"]
    assert "cloudtrail_multi_region_enabled" not in drift  # declared and live agree
    assert "Drift (declared vs live)" in (tmp_path / "drift" / "report.md").read_text()


def test_no_credentials_reports_errors_not_a_traceback(moto: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    endpoint, _ = moto
    environment = env(endpoint)
    del environment["AWS_ACCESS_KEY_ID"], environment["AWS_SECRET_ACCESS_KEY"]
    result, found = report(tmp_path / "nocreds", environment)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert {f["status"] for f in found if f["check_id"].startswith(("kms_", "s3_", "cloudtrail_"))} == {"ERROR"}
