"""Every check, registered when its module is imported (one module per cloud, plus Kubernetes)."""

from __future__ import annotations

from compliance.checks import aws, gcp, kubernetes
from compliance.model import REGISTRY, Check

__all__ = ["all_checks", "aws", "gcp", "kubernetes"]


def all_checks() -> list[Check]:
    return list(REGISTRY)
