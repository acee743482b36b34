"""The build identity reads every source the build reads (model, addons, draft model), in any bucket, with exactly
the read grant each needs: on AWS the builder role's policy, on Google Cloud the builder account's bucket bindings.
The LoRA example (examples/lora-bf16.yaml) reads its addon from a bucket of its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from compliance.checks.common import as_list, statements
from compliance.evaluate import evaluate, graph_from_plan
from compliance.model import Status
from tests.conftest import ROOT, deploy, refused, run_byoc
from tests.stacks.plans import graph

LORA = ROOT / "examples" / "lora-bf16.yaml"
BUCKET_MEMBER = "gcp:storage/bucketIAMMember:BucketIAMMember"


def lora(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(LORA.read_text())
    spec.update(overrides)
    return spec


def builder_statements(spec: dict[str, Any]) -> list[dict[str, Any]]:
    policies = [
        p for p in graph(**spec).by_type("aws:iam/rolePolicy:RolePolicy") if p.inputs.get("name") == "byoc-builder"
    ]
    assert len(policies) == 1
    return statements(json.loads(policies[0].inputs["policy"]))


def source_grants(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The builder's bindings on buckets other than the deployment's own."""
    return {
        m.name: m.inputs
        for m in graph(**spec).by_type(BUCKET_MEMBER)
        if m.inputs["member"].startswith("serviceAccount:byoc-support-bot-builder@")
        and not m.inputs["bucket"].startswith("byoc-")
    }


def test_lora_example_on_aws_reads_its_addon_from_its_own_bucket() -> None:
    spec = lora()
    assert spec["cloud"] == "aws" and spec["addons"][0]["source"] == "s3://my-adapters/support-tone/"
    builder = builder_statements(spec)
    outside = [
        s
        for s in builder
        if any("my-adapters" in str(r) for r in as_list(s["Resource"]))
        or not any("byoc-support-bot-" in str(r) or ":kms:" in str(r) for r in as_list(s["Resource"]))
    ]
    # exactly: read the adapter's objects, list only its prefix; nothing else outside the deployment's bucket
    assert outside == [
        {
            "Sid": "ReadAddon0Source",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": "arn:aws:s3:::my-adapters/support-tone/*",
        },
        {
            "Sid": "ListAddon0Source",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": "arn:aws:s3:::my-adapters",
            "Condition": {"StringLike": {"s3:prefix": ["support-tone/*", "support-tone"]}},
        },
    ]
    # the evidence pack still finds the workload roles scoped (the addon read is the spec's own source)
    document = deploy(**spec).plan_document()
    document["resources"] = [r.as_dict() for r in graph(**spec).resources]
    scoped = [f for f in evaluate(graph_from_plan(document)) if f.check.id == "iam_workload_roles_scoped_to_prefixes"]
    statuses = {f.resource.name: f.status for f in scoped if f.status != Status.NOT_APPLICABLE}
    assert statuses == {
        "support-bot-builder": Status.PASS,
        "support-bot-serving": Status.PASS,
        # batch.enabled (the default): the gateway's and the batch worker's, scoped to batch/
        "support-bot-gateway": Status.PASS,
        "support-bot-batch-worker": Status.PASS,
    }


def test_every_source_in_a_bucket_gets_its_own_read_on_aws() -> None:
    """Model, addons and draft model: each s3:// one its own read; hf:// ones come through the bucket's mirror."""
    spec = lora(
        model={"id": "llama-3.1-8b-instruct", "source": "s3://acme-models/llama/8b/"},
        addons=[
            {"id": "support-tone", "source": "s3://my-adapters/support-tone/", "rank": 16},
            {"id": "legal", "source": "hf://acme/legal-lora", "rank": 16},  # through the bucket's mirror
            {"id": "whole", "source": "s3://whole-bucket", "rank": 16},
        ],
        speculative={"draft_model": "s3://acme-models/draft/"},
    )
    reads = {s["Sid"]: s["Resource"] for s in builder_statements(spec) if s["Sid"].startswith("Read")}
    assert reads == {
        "ReadSourcesAndAdapters": reads["ReadSourcesAndAdapters"],
        "ReadModelSource": "arn:aws:s3:::acme-models/llama/8b/*",
        "ReadAddon0Source": "arn:aws:s3:::my-adapters/support-tone/*",
        "ReadAddon2Source": "arn:aws:s3:::whole-bucket/*",
        "ReadDraftModelSource": "arn:aws:s3:::acme-models/draft/*",
    }


def test_lora_example_on_gcp_reads_its_addon_from_its_own_bucket() -> None:
    spec = lora(cloud="gcp", addons=[{"id": "support-tone", "source": "gs://my-adapters/support-tone/", "rank": 16}])
    grants = source_grants(spec)
    assert list(grants) == ["support-bot-builder-addon-support-tone-source"]
    grant = grants["support-bot-builder-addon-support-tone-source"]
    assert grant["bucket"] == "my-adapters"
    assert grant["role"] == "roles/storage.objectViewer"  # read only
    assert grant["condition"]["expression"] == (
        'resource.name == "projects/_/buckets/my-adapters" || '
        'resource.name.startsWith("projects/_/buckets/my-adapters/objects/support-tone/")'
    )


def test_every_source_in_a_bucket_gets_its_own_read_on_gcp() -> None:
    spec = lora(
        cloud="gcp",
        model={"id": "llama-3.1-8b-instruct", "source": "gs://acme-models/llama/8b/"},
        addons=[
            {"id": "support-tone", "source": "gs://my-adapters/support-tone/", "rank": 16},
            {"id": "legal", "source": "hf://acme/legal-lora", "rank": 16},
            {"id": "whole", "source": "gs://whole-bucket", "rank": 16},
        ],
        speculative={"draft_model": "gs://acme-models/draft/"},
    )
    grants = source_grants(spec)
    assert {name: g["bucket"] for name, g in grants.items()} == {
        "support-bot-builder-model-source": "acme-models",
        "support-bot-builder-addon-support-tone-source": "my-adapters",
        "support-bot-builder-addon-whole-source": "whole-bucket",
        "support-bot-builder-draft-model-source": "acme-models",
    }
    assert "condition" not in grants["support-bot-builder-addon-whole-source"]  # the whole bucket is the source
    titles = [g["condition"]["title"] for g in grants.values() if "condition" in g]
    assert len(set(titles)) == len(titles)  # same role and member on one bucket: the titles tell bindings apart


@pytest.mark.parametrize(
    ("cloud", "source"), [("gcp", "s3://my-adapters/support-tone/"), ("aws", "gs://my-adapters/support-tone/")]
)
def test_a_source_in_the_other_clouds_store_is_refused(cloud: str, source: str) -> None:
    error = refused(**lora(cloud=cloud, addons=[{"id": "support-tone", "source": source}]))
    assert error.field == "addons[0].source"
    assert "another cloud's object store" in error.message


def test_validate_exits_2_for_the_lora_example_on_gcp(tmp_path: Path) -> None:
    spec = tmp_path / "byoc.yaml"
    spec.write_text(LORA.read_text().replace("cloud: aws", "cloud: gcp"))
    result = run_byoc("validate", "-f", str(spec), timeout=120)
    assert result.returncode == 2
    assert "addons[0].source" in result.stderr and "gs://" in result.stderr
    assert "Traceback" not in result.stderr
