"""Benchmark of byoc's front door: `byoc --help` and `byoc plan` of the example spec, as a new user runs them.

    python scripts/bench_front_door.py [--runs 7] [--plan-runs 5]

Prints JSON: wall-clock median and min of each command (a fresh process each run, as a user starts it), the load
average while it ran (other work on the machine slows every figure), and where a plan's time goes: CPU seconds of
each import and step, measured in one separate process. docs/performance.md ("The front door") carries the figures.
Targets (issue 11): --help under 0.3 s, plan under 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "byoc.yaml"

PHASES = r"""
import json, sys, tempfile, time
from pathlib import Path
phases = {}
mark = time.process_time()
def lap(name):
    global mark
    now = time.process_time(); phases[name] = round(now - mark, 3); mark = now
from byoc.resolve import resolve
from byoc.spec import load_spec
lap("import byoc (spec, catalogs, rules)")
deployment = resolve(load_spec(Path(sys.argv[1])))
lap("resolve")
import pulumi, pulumi_aws as aws, pulumi_kubernetes as k8s
lap("import pulumi, pulumi_aws, pulumi_kubernetes (top level)")
for module, cls in [("ec2", "Vpc"), ("eks", "Cluster"), ("s3", "Bucket"), ("iam", "Role"), ("cloudtrail", "Trail"),
                    ("cloudwatch", "LogGroup"), ("kms", "Key"), ("sqs", "Queue"), ("ebs", "EncryptionByDefault")]:
    getattr(getattr(aws, module), cls)
lap("import pulumi_aws submodules the program uses")
k8s.core.v1.Namespace; k8s.helm.v3.Release; k8s.apps.v1.Deployment; k8s.storage.v1.StorageClass
k8s.networking.v1.NetworkPolicy; k8s.batch.v1.Job; k8s.autoscaling.v2.HorizontalPodAutoscaler
k8s.policy.v1.PodDisruptionBudget; k8s.apiextensions.CustomResource
lap("import pulumi_kubernetes classes the program uses")
from byoc.engines import program_for
from byoc.engines.offline import run_offline
graph = run_offline(deployment, program_for(deployment))
lap("run the program under Pulumi's mocks")
from byoc.manifests import write_helm_releases, write_manifests
out = Path(tempfile.mkdtemp())
write_manifests(graph, out / "manifests"); write_helm_releases(graph, out / "helm.yaml")
lap("render manifests")
import compliance.reports, trestle.oscal.common, trestle.oscal.component, trestle.oscal.assessment_results
lap("import the evidence pack's modules (compliance-trestle OSCAL models)")
from byoc.commands.plan import write_evidence_pack
document = deployment.plan_document(); document["resources"] = [r.as_dict() for r in graph.resources]
write_evidence_pack(document, out / "compliance")
lap("evaluate the checks and write the evidence pack")
print(json.dumps(phases))
"""


def timed(command: list[str], runs: int) -> dict[str, float]:
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True, cwd=ROOT)
        walls.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(walls), 3), "min_s": round(min(walls), 3), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--plan-runs", type=int, default=5)
    args = parser.parse_args()
    byoc = str(Path(sys.executable).with_name("byoc"))
    if not Path(byoc).exists():
        byoc = "byoc"
    out = tempfile.mkdtemp(prefix="byoc-bench-")
    load_before = os.getloadavg()[0]
    help_ = timed([byoc, "--help"], args.runs)
    plan = timed([byoc, "plan", "-f", str(EXAMPLE), "--out", out], args.plan_runs)
    phases = json.loads(
        subprocess.run(
            [sys.executable, "-c", PHASES, str(EXAMPLE)], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout
    )
    result = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "loadavg_1m": round(load_before, 2)},
        "byoc --help": {**help_, "target_s": 0.3},
        "byoc plan -f examples/byoc.yaml": {**plan, "target_s": 3.0},
        "plan_cpu_seconds_by_phase (one process, sequential)": phases,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
