"""Names that travel beyond byoc: the rule each one follows, written once for the spec, the CLI and the runtime.

Nothing heavy is imported here: the gateway and the CPU engine check names with these at start-up and per request.
"""

from __future__ import annotations

import re

# A DNS-1123 label (Kubernetes object names), from a letter: deployment names and addon ids become parts of
# Kubernetes and cloud resource names.
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_LABEL_MAX = 63  # RFC 1123 label length, as Kubernetes' IsDNS1123Label

ADDON_ID_RULE = (
    f"a DNS-1123 label: lowercase letters, digits and '-', from a letter, at most {DNS_LABEL_MAX} characters"
)


def addon_id_problem(value: str) -> str | None:
    """Why `value` cannot be an addon id (clients send it as `model`; it names the adapter's folder), or None."""
    if len(value) > DNS_LABEL_MAX:
        return f"{value[:DNS_LABEL_MAX]}... is {len(value)} characters long, above {DNS_LABEL_MAX}"
    if not DNS_LABEL.match(value):
        return f"{value!r} is not {ADDON_ID_RULE}"
    return None


# -- the names byoc gives cloud and Kubernetes objects ------------------------------------------------------------
# Written once here: the stacks set them, and the sweeps, preflights, live collectors, `status` and `destroy` find
# what the stacks made by them. A change here is a change of every deployment's names (a replacement of each).
NAME_PREFIX = "byoc"
# The tag key every AWS resource of a deployment carries (stacks/aws/context.py), and Karpenter's nodes with it.
DEPLOYMENT_TAG = "byoc:deployment"
# The GCP label key (a label key takes only lowercase letters, digits, '_' and '-': no ':' as in the AWS tag).
DEPLOYMENT_LABEL = "byoc-deployment"
# The Kubernetes label byoc puts on its nodes (node pools, Karpenter's NodePool template).
KUBERNETES_DEPLOYMENT_LABEL = "byoc.dev/deployment"


def resource_name(deployment: str, *parts: str) -> str:
    """byoc-<deployment>[-<part>...]: the cloud and Kubernetes name of one of a deployment's objects.

    The deployment's own prefix is its cluster's name and its serving namespace (`resource_name(name)`); a part names
    one object in it (`resource_name(name, "serving")` is the serving Deployment, `"audit-logs"` the GCP audit
    bucket)."""
    return "-".join((NAME_PREFIX, deployment, *parts))


def bounded_name(name: str, role: str, limit: int) -> str:
    """byoc-<name>-<role>, shortened with a stable 4-hex digest of the name when longer than `limit` characters (an
    ElastiCache replication group id or a Memorystore instance id takes 40); never ends with or doubles a hyphen."""
    import hashlib

    wanted = resource_name(name, role)
    if len(wanted) <= limit:
        return wanted
    digest = hashlib.sha256(name.encode()).hexdigest()[:4]
    keep = limit - len(f"byoc--{digest}-{role}")
    return resource_name(name[:keep].rstrip("-"), digest, role)


# The direction words of AWS and Google Cloud region ids, as the short codes AWS itself uses in its Availability
# Zone ids and endpoint names (euw2, use1, apse2): one or two letters.
_DIRECTIONS = {
    "north": "n",
    "south": "s",
    "east": "e",
    "west": "w",
    "central": "c",
    "northeast": "ne",
    "northwest": "nw",
    "southeast": "se",
    "southwest": "sw",
}
# Google Cloud's region prefixes, to two letters (europe-west4 -> euw4, asia-northeast1 -> asne1); AWS's are two.
_AREAS = {"europe": "eu", "asia": "as", "australia": "au", "northamerica": "na", "southamerica": "sa", "africa": "af"}


def region_code(region: str) -> str:
    """A region id as a short code for the names of a multi-region deployment's regional resources (at most 5
    characters): eu-west-2 -> euw2, us-east-1 -> use1, ap-southeast-2 -> apse2, europe-west4 -> euw4,
    asia-northeast1 -> asne1, me-central-1 -> mec1. Distinct regions of one cloud get distinct codes.

    Raises:
        ValueError: `region` is not <area>-<direction>[-]<number>.
    """
    match = re.fullmatch(r"([a-z]+)-([a-z]+?)-?(\d+)", region)
    if not match or match.group(2) not in _DIRECTIONS:
        raise ValueError(f"{region!r} is not a region id of the form <area>-<direction>-<n> or <area>-<direction><n>")
    area, direction, number = match.groups()
    return f"{_AREAS.get(area, area[:2])}{_DIRECTIONS[direction]}{number}"
