"""One class per cloud behind one interface (`byoc.clouds.base.Cloud`)."""

from __future__ import annotations

from byoc.clouds.aws import Aws
from byoc.clouds.base import Cloud, Feature, Placement
from byoc.clouds.gcp import Gcp

_CLOUDS: dict[str, Cloud] = {"aws": Aws(), "gcp": Gcp()}


def get_cloud(name: str) -> Cloud:
    return _CLOUDS[name]


__all__ = ["Cloud", "Feature", "Placement", "get_cloud"]
