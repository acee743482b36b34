"""Every check, registered when its module is imported (one module per cloud, plus Kubernetes), then given its
controls from the mapping files (compliance/catalogs/mappings/<framework>_<provider>.yaml): a check id or control id
there that does not exist, or a check no file maps, raises compliance.model.MappingError here, at import.
"""

from __future__ import annotations

from compliance.checks import aws, batch, gcp, kubernetes
from compliance.model import REGISTRY, Check, bind_controls

bind_controls(REGISTRY)

__all__ = ["all_checks", "aws", "batch", "checks_for", "gcp", "kubernetes"]


def all_checks() -> list[Check]:
    return list(REGISTRY)


def checks_for(cloud: str | None) -> list[Check]:
    """The checks that judge a deployment on `cloud`: its own and the Kubernetes ones (None: every check).

    The one count of checks: a plan, a live report and `byoc compliance checks` all count these.
    """
    return [c for c in REGISTRY if cloud is None or c.cloud in (cloud, "kubernetes")]
