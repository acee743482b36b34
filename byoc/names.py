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
