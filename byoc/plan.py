"""The resource graph a Pulumi program declares: what `byoc plan` records and what manifests and compliance read.

It is part of the model floor (no Pulumi import): the offline engine fills it under Pulumi's mocks, and plan.json's
`resources` list is its JSON form (type token, logical name, inputs as the provider receives them, parent,
provider).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A secret the offline engine makes up (an AUTH token a live run generates) stands at PLACEHOLDER_SECRET, and every
# secret input (that one, the kubeconfig) is recorded as SECRET_SHOWN: plan.json and the manifests never hold one.
PLACEHOLDER_SECRET = "offline-placeholder"
SECRET_SHOWN = "[secret]"


@dataclass(frozen=True)
class RecordedResource:
    type: str
    name: str
    id: str
    inputs: dict[str, Any]
    parent: str | None
    provider: str | None
    custom: bool
    urn: str
    stack: str = ""  # the Pulumi stack that declares it: one per region of a multi-region deployment, plus global

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "name": self.name,
            "id": self.id,
            "inputs": self.inputs,
            "parent": self.parent,
            "provider": self.provider,
            "stack": self.stack,
        }


@dataclass
class Plan:
    resources: list[RecordedResource] = field(default_factory=list)

    def by_type(self, type_token: str) -> list[RecordedResource]:
        return [r for r in self.resources if r.type == type_token]

    def stacks(self) -> list[str]:
        """The stacks in the plan, in the order they were recorded (the regions, then the global layer)."""
        return list(dict.fromkeys(r.stack for r in self.resources))

    def of_stack(self, stack: str) -> Plan:
        """The part of the plan one stack declares (one region's foundation, or the global layer)."""
        return Plan([r for r in self.resources if r.stack == stack])

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for resource in self.resources:
            counts[resource.type] = counts.get(resource.type, 0) + 1
        return dict(sorted(counts.items()))
