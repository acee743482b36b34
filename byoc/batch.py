"""Batch inference as the clouds and the cluster render it: where batch files live in the artifact bucket, how long
the bucket's lifecycle rule lets them stay, and what the batch worker runs with. Written once here; stacks/aws,
stacks/gcp, stacks/k8s/batch.py and the compliance checks read it.

The gateway serves OpenAI's Files and Batches API (runtime/serve/batch/) and a worker in the cluster runs the
batches through the gateway (runtime/serve/batch/worker.py). Both keep every file under BATCH_PREFIX of the
deployment's artifact bucket, encrypted with the deployment's customer-managed key, and delete each at its expiry
(spec `batch.retention_hours`). The bucket's lifecycle rule on the prefix is the backstop for what they leave
(a worker down at the time, a crash mid-delete): `expiry_days`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from byoc.sizing import Resources

# The prefix of the artifact bucket that holds batch input, output and error files and batch records
# (runtime/serve/batch/layout.py describes what lies under it). No trailing wildcard: S3 and GCS prefixes as such.
BATCH_PREFIX = "batch/"
# The Kubernetes service accounts that get cloud identities for batch (byoc.resolve.Deployment.service_accounts):
# the gateway (Files API: writes uploads, reads results, deletes at DELETE /v1/files) and the worker.
GATEWAY_ROLE = "gateway"
WORKER_ROLE = "batch-worker"
WORKER_SERVICE_ACCOUNT = "byoc-batch-worker"
GATEWAY_SERVICE_ACCOUNT = "byoc-gateway"
# One worker: it takes no lease on a batch (two would send the same lines twice), so its Deployment is Recreate.
WORKER_REPLICAS = 1
# The worker is I/O bound (HTTP to the gateway, object reads and writes); it assembles an output file in memory
# before one atomic PutObject (Store.write_bytes), and OpenAI's largest input file is 200 MB, hence 1 GiB.
WORKER_REQUESTS = Resources(cpu_m=250, memory_mib=512)
WORKER_LIMITS = Resources(cpu_m=1000, memory_mib=1024)
WORKER_SCRATCH_MIB = 1024
# Lifecycle rules count whole days; S3 and GCS both take a noncurrent-version delete after 1 day at the least.
NONCURRENT_DAYS = 1
ABORT_MULTIPART_DAYS = 1


def expiry_days(retention_hours: int) -> int:
    """The bucket's lifecycle expiry on BATCH_PREFIX, in days: the retention rounded up to whole days, plus one
    (S3 and GCS lifecycle rules count days from an object's creation and act within about a day of that; the
    worker deletes at the retention itself, this only catches what it left). 24 h -> 2 days, 720 h -> 31 days."""
    return math.ceil(retention_hours / 24) + 1


@dataclass(frozen=True)
class BatchPlan:
    """What batch adds to a deployment (plan.json `batch`)."""

    enabled: bool
    retention_hours: int

    @property
    def expiry_days(self) -> int:
        return expiry_days(self.retention_hours)

    def as_dict(self) -> dict[str, Any]:
        if not self.enabled:
            return {"enabled": False, "retention_hours": self.retention_hours}
        return {
            "enabled": True,
            "retention_hours": self.retention_hours,
            "prefix": BATCH_PREFIX,
            # the bucket's lifecycle rule on the prefix: the backstop to the worker's own deletes
            "expiry_days": self.expiry_days,
            "worker": {
                "replicas": WORKER_REPLICAS,
                "service_account": WORKER_SERVICE_ACCOUNT,
                # CPU only: the worker sends lines through the gateway, the GPUs it uses are the serving pods'
                "requests": WORKER_REQUESTS.quantities(),
                "limits": WORKER_LIMITS.quantities(),
            },
        }
