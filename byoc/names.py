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
