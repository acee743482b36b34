"""Google Cloud: regions, machine types and Cloud KMS key ids (offerings from the offline table)."""

from __future__ import annotations

import re

from byoc.clouds.base import Cloud


class Gcp(Cloud):
    name = "gcp"
    title = "Google Cloud"
    key_pattern = re.compile(
        r"^projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/locations/(?P<region>[a-z0-9-]+)/keyRings/[\w-]+/cryptoKeys/[\w-]+$"
    )
    key_example = "projects/my-project/locations/europe-west4/keyRings/byoc/cryptoKeys/cluster"

    def key_region(self, key: str) -> str | None:
        match = self.key_pattern.match(key)
        return match["region"] if match else None
