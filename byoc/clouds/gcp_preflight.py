"""Google Cloud preflight: before anything is created, can this project run the deployment at its peak?

Checks, in order (each an `ok`, `fail` or `unknown` Check; a `fail` stops `byoc up` before any resource exists):
1. credentials: Application Default Credentials (or GOOGLE_OAUTH_ACCESS_TOKEN) and a project, proven by Compute
   `projects.get` (GET /compute/v1/projects/{project}); a disabled Compute Engine API fails here.
2. offering: Compute `acceleratorTypes.aggregatedList` filtered to the machine series' GPU (nvidia-l4,
   nvidia-h100-80gb, ...; byoc/catalogs/kubernetes.yaml gke.accelerators): the zones of the region that offer it.
   GPUs are offered per zone ("GPU regions and zones"), and the GKE node pool is placed only in those.
3. gpu-quota: Compute `regions.get` returns `quotas[]` of {metric, limit, usage}; GPUs are counted per GPU model
   (NVIDIA_L4_GPUS, ...; Spot VMs against the PREEMPTIBLE_ metric). byoc needs GPUs per node x nodes at max
   replicas plus the build Job; free = limit - usage, and the deployment's own GPU nodes (labelled
   byoc-deployment=<name>) are taken out of usage, since a re-run of `up` already counts them in what it needs.
4. gpus-all-regions: the project-wide GPUS_ALL_REGIONS quota from `projects.get` (new projects often have 0).
Where a quota cannot be read (403, the metric missing from the answer), the check is `unknown`, says why, and
byoc goes on.
"""

from __future__ import annotations

from typing import Any

from byoc.catalogs import load_catalog
from byoc.clouds.checks import CapacityNeed, Check, PreflightReport
from byoc.clouds.gcp_api import ApiError, GcpSession, GcpUnavailable
from byoc.names import DEPLOYMENT_LABEL

# Compute Engine quota metric per guest accelerator type (the `metric` of regions.get's quotas[]). Sources: the
# Compute Engine API v1 reference, Quota.metric enum (client library references, e.g. "Quota.Types.Metric" in
# Google.Cloud.Compute.V1), which lists NVIDIA_A100_80GB_GPUS, NVIDIA_H100_GPUS and NVIDIA_L4_GPUS and their
# PREEMPTIBLE_ forms; "GPU quota" in "Allocation quotas" (cloud.google.com/compute/resource-usage#gpu_quota).
# NOT confirmed in a Google reference read for this file: NVIDIA_H100_MEGA_GPUS, NVIDIA_H200_GPUS and
# NVIDIA_B200_GPUS (the enum pages reached here predate them). The names agree across independent public code that
# reads regions.get: several quota-check scripts, a Go provisioner's accelerator -> quota metric map
# (nvidia-h100-mega-80gb -> NVIDIA_H100_MEGA_GPUS), and a published audit listing NVIDIA_H200_GPUS and
# NVIDIA_B200_GPUS with their PREEMPTIBLE_ forms as the missing metrics of a3-ultragpu-8g and a4-highgpu-8g.
# If a project's answer has no such metric the check says so and is `unknown`, never `ok`.
GPU_QUOTA_METRICS: dict[str, str] = {
    "nvidia-l4": "NVIDIA_L4_GPUS",
    "nvidia-a100-80gb": "NVIDIA_A100_80GB_GPUS",
    "nvidia-h100-80gb": "NVIDIA_H100_GPUS",
    "nvidia-h100-mega-80gb": "NVIDIA_H100_MEGA_GPUS",  # unconfirmed, see above
    "nvidia-h200-141gb": "NVIDIA_H200_GPUS",  # unconfirmed
    "nvidia-b200": "NVIDIA_B200_GPUS",  # unconfirmed
}
ALL_REGIONS_METRIC = "GPUS_ALL_REGIONS"  # project-level, projects.get quotas[]


def accelerator_for(machine_type: str) -> str | None:
    """a3-highgpu-1g -> nvidia-h100-80gb (the machine series' guest accelerator, from the catalog)."""
    series = machine_type.rsplit("-", 1)[0]
    found = load_catalog().kubernetes["gke"]["accelerators"].get(series)
    return str(found) if found else None


def quota_metric(accelerator: str, purchase_option: str) -> str | None:
    metric = GPU_QUOTA_METRICS.get(accelerator)
    if metric is None:
        return None
    return f"PREEMPTIBLE_{metric}" if purchase_option == "spot" else metric


def preflight(need: CapacityNeed) -> PreflightReport:
    region = need.region
    checks: list[Check] = []
    skipped = "skipped: the project could not be reached"

    # 1. credentials --------------------------------------------------------------------------------------------
    project_doc: dict[str, Any] | None = None
    try:
        session = GcpSession()
    except GcpUnavailable as exc:
        checks.append(Check("credentials", "fail", exc.detail, exc.hint))
        return _stop(region, checks, skipped)
    who = f" as {session.account}" if session.account else ""
    base = {"project": session.project, "credentials": session.source}
    try:
        project_doc = session.call("GET", "compute", f"/projects/{session.project}")
        checks.append(
            Check(
                "credentials",
                "ok",
                f"project {session.project} (number {project_doc.get('id', '?')}){who}, from {session.source}",
                data=base,
            )
        )
    except ApiError as exc:
        if exc.status == 0:
            checks.append(Check("credentials", "fail", f"cannot reach Compute Engine: {exc}", "check the network"))
        elif exc.service_disabled:
            checks.append(
                Check(
                    "credentials",
                    "fail",
                    f"the Compute Engine API is not enabled in {session.project}: {exc}",
                    f"gcloud services enable compute.googleapis.com container.googleapis.com --project "
                    f"{session.project}",
                    data=base,
                )
            )
        elif exc.status == 401:
            checks.append(
                Check(
                    "credentials",
                    "fail",
                    f"Google refused the credentials: {exc}",
                    "refresh them: gcloud auth application-default login",
                    data=base,
                )
            )
        else:  # authenticated, but not allowed to read the project: the other checks may still answer
            checks.append(
                Check(
                    "credentials",
                    "unknown",
                    f"credentials for {session.project}{who} found, but Compute projects.get answered {exc}",
                    "grant roles/compute.viewer (compute.projects.get) to see the project-wide GPU quota",
                    data=base,
                )
            )
        if checks[-1].status == "fail":
            return _stop(region, checks, skipped)

    accelerator = accelerator_for(need.instance_type)
    gpus = int(load_catalog().instances["gcp"][need.instance_type].gpus)
    needed = gpus * need.instances
    sizing = f"{need.instances} x {need.instance_type} at {gpus} GPU(s); {need.why}"

    # 2. offering -----------------------------------------------------------------------------------------------
    checks.append(_offering_check(session, need, accelerator, gpus))

    # 3. regional GPU quota, 4. project-wide -------------------------------------------------------------------
    own = _own_gpus(session, need, accelerator)
    metric = quota_metric(accelerator or "", need.purchase_option)
    if metric is None:
        checks.append(Check("gpu-quota", "unknown", f"byoc knows no quota metric for the GPU of {need.instance_type}"))
    else:
        try:
            quotas = session.call("GET", "compute", f"/projects/{session.project}/regions/{region}").get("quotas", [])
            checks.append(
                _quota_check(
                    "gpu-quota", quotas, metric, f"{metric} in {region}", needed, own, sizing, need, session.project
                )
            )
        except ApiError as exc:
            checks.append(_unreadable("gpu-quota", f"{metric} in {region}", exc, needed, sizing, metric))
    if project_doc is None:
        checks.append(
            Check(
                "gpus-all-regions",
                "unknown",
                f"could not read {ALL_REGIONS_METRIC}: projects.get was refused (see credentials); byoc needs "
                f"{needed} GPUs ({sizing})",
                "check the quota in the console (IAM & Admin > Quotas & System Limits); byoc goes on",
                data={"metric": ALL_REGIONS_METRIC, "gpus_needed": needed},
            )
        )
    else:
        checks.append(
            _quota_check(
                "gpus-all-regions",
                project_doc.get("quotas", []),
                ALL_REGIONS_METRIC,
                f"{ALL_REGIONS_METRIC} (project-wide)",
                needed,
                own,
                sizing,
                need,
                session.project,
            )
        )
    return PreflightReport("gcp", region, tuple(checks))


def _stop(region: str, checks: list[Check], skipped: str) -> PreflightReport:
    checks += [
        Check("offering", "unknown", skipped),
        Check("gpu-quota", "unknown", skipped),
        Check("gpus-all-regions", "unknown", skipped),
    ]
    return PreflightReport("gcp", region, tuple(checks))


def _offering_check(session: GcpSession, need: CapacityNeed, accelerator: str | None, gpus: int) -> Check:
    region = need.region
    if accelerator is None:
        return Check("offering", "unknown", f"byoc knows no GPU type for {need.instance_type}")
    base: dict[str, Any] = {"instance_type": need.instance_type, "accelerator": accelerator}
    try:
        found = session.pages(
            "compute",
            f"/projects/{session.project}/aggregated/acceleratorTypes",
            "acceleratorTypes",
            {"filter": f'name = "{accelerator}"'},
        )
    except ApiError as exc:
        return Check(
            "offering",
            "unknown",
            f"could not read Compute accelerator types: {exc}",
            "grant roles/compute.viewer (compute.acceleratorTypes.list)",
            data=base,
        )
    # a zone's name is its region's and a letter: europe-west4-a
    zones = sorted(
        str(a["zone"]).rsplit("/", 1)[-1]
        for a in found
        if a.get("name") == accelerator
        and str(a.get("zone", "")).rsplit("/", 1)[-1].startswith(f"{region}-")
        and int(a.get("maximumCardsPerInstance", gpus)) >= gpus
    )
    base["zones"] = zones
    if zones:
        return Check(
            "offering",
            "ok",
            f"{accelerator} ({need.instance_type}) is offered in {len(zones)} zone(s) of {region}: {', '.join(zones)}",
            data=base,
        )
    return Check(
        "offering",
        "fail",
        f"{accelerator} ({need.instance_type}) is not offered in any zone of {region}",
        "choose another region or shape (`byoc shapes`)",
        data=base,
    )


def _own_gpus(session: GcpSession, need: CapacityNeed, accelerator: str | None) -> int:
    """GPUs of the deployment's own running VMs in the region (labelled through the node pool's resource_labels):
    they count in Compute's usage and again in what byoc needs. 0 where they cannot be listed."""
    if not need.deployment or accelerator is None:
        return 0
    try:
        instances = session.pages(
            "compute",
            f"/projects/{session.project}/aggregated/instances",
            "instances",
            {"filter": f"labels.{DEPLOYMENT_LABEL} = {need.deployment}"},
        )
    except ApiError:
        return 0
    total = 0
    for instance in instances:
        zone = str(instance.get("zone", instance.get("_scope", ""))).rsplit("/", 1)[-1]
        if not zone.startswith(f"{need.region}-") or instance.get("status") not in (
            "PROVISIONING",
            "STAGING",
            "RUNNING",
        ):
            continue
        for card in instance.get("guestAccelerators", []):
            if str(card.get("acceleratorType", "")).rsplit("/", 1)[-1] == accelerator:
                total += int(card.get("acceleratorCount", 0))
    return total


def _quota_check(
    name: str,
    quotas: list[dict[str, Any]],
    metric: str,
    where: str,
    needed: int,
    own: int,
    sizing: str,
    need: CapacityNeed,
    project: str,
) -> Check:
    base: dict[str, Any] = {"metric": metric, "gpus_needed": needed, "purchase_option": need.purchase_option}
    entry = next((q for q in quotas if q.get("metric") == metric), None)
    if entry is None:
        return Check(
            name,
            "unknown",
            f"the answer has no quota {where} (byoc's metric name may be wrong for this GPU, or the project has "
            f"none); byoc needs {needed} GPUs ({sizing})",
            "check the GPU quota in the console (IAM & Admin > Quotas & System Limits); byoc goes on",
            data=base,
        )
    limit = int(float(entry.get("limit", 0)))
    usage = int(float(entry.get("usage", 0)))
    others = max(usage - own, 0)
    free = limit - others
    base |= {"limit": limit, "usage": usage, "own_usage": own, "free": free}
    in_use = f", {others} in use by others" if others else ""
    mine = f" ({own} of the usage are this deployment's own nodes)" if own else ""
    summary = f"quota {where} is {limit} GPUs{in_use}{mine}; byoc needs {needed} ({sizing})"
    if free >= needed:
        return Check(name, "ok", summary, data=base)
    desired = others + needed
    location = "" if metric == ALL_REGIONS_METRIC else f", region {need.region}"
    return Check(
        name,
        "fail",
        f"{summary}: short by {needed - max(free, 0)} GPUs (free {max(free, 0)})",
        f"request {metric} of at least {desired} for project {project}{location}: console, IAM & Admin > Quotas & "
        f"System Limits, metric compute.googleapis.com/{metric.lower()}",
        data=base | {"desired_value": desired},
    )


def _unreadable(name: str, where: str, exc: ApiError, needed: int, sizing: str, metric: str) -> Check:
    return Check(
        name,
        "unknown",
        f"could not read quota {where}: {exc}. byoc needs {needed} GPUs ({sizing})",
        "grant roles/compute.viewer (compute.regions.get), or check the quota in the console; byoc goes on",
        data={"metric": metric, "gpus_needed": needed},
    )
