"""What every GCP component needs: the deployment, the provider, the project, and the labels."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_gcp as gcp

from byoc.catalogs import load_catalog
from byoc.names import DEPLOYMENT_LABEL, resource_name
from byoc.resolve import Deployment

# A service account id has 6 to 30 characters (IAM docs, "Create service accounts").
ACCOUNT_ID_MAX = 30


@dataclass(frozen=True)
class GcpContext:
    deployment: Deployment
    provider: gcp.Provider
    project: pulumi.Output[str]
    project_number: pulumi.Output[str]
    storage_agent: pulumi.Output[str]  # the Cloud Storage service agent's email

    @property
    def name(self) -> str:
        return self.deployment.name

    @property
    def region(self) -> str:
        return self.deployment.region

    @property
    def platform(self) -> dict[str, Any]:
        gke: dict[str, Any] = load_catalog().kubernetes["gke"]
        return gke

    @property
    def log_retention_days(self) -> int:
        return int(load_catalog().kubernetes["log_retention_days"])

    def labels(self, **extra: str) -> dict[str, str]:
        """Every resource that takes labels carries byoc-deployment=<name>: the live collectors find it by it."""
        return {DEPLOYMENT_LABEL: self.name, "byoc-managed-by": "byoc", **extra}

    def opts(self, parent: pulumi.Resource, **kwargs: Any) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=parent, provider=self.provider, **kwargs)

    def service_agent(self, domain: str) -> pulumi.Output[str]:
        """A Google service agent of this project: service-<project number>@<domain> ("Service agents" docs)."""
        return pulumi.Output.concat("serviceAccount:service-", self.project_number, "@", domain)

    def account_id(self, role: str) -> str:
        """byoc-<name>-<role>, shortened with a stable hash when the name is too long for a service account id."""
        wanted = resource_name(self.name, role)
        if len(wanted) <= ACCOUNT_ID_MAX:
            return wanted
        digest = hashlib.sha256(self.name.encode()).hexdigest()[:4]
        keep = ACCOUNT_ID_MAX - len(f"byoc--{digest}-{role}")
        return f"byoc-{self.name[:keep].rstrip('-')}-{digest}-{role}"

    def bucket_name(self, role: str) -> pulumi.Output[str]:
        """byoc-<name>-<role>-<project number>: globally unique, at most 63 characters (names are 32 at most)."""
        return pulumi.Output.concat(resource_name(self.name, role, ""), self.project_number)


def make_context(deployment: Deployment) -> GcpContext:
    provider = gcp.Provider(
        "gcp",
        region=deployment.region,
        # The project comes from the stack config (gcp:project) or GOOGLE_CLOUD_PROJECT, as for any Pulumi program.
        # A safety net for anything Google creates on our behalf; every resource also sets its labels itself.
        default_labels={DEPLOYMENT_LABEL: deployment.name},
    )
    invoke = pulumi.InvokeOutputOptions(provider=provider)
    project = gcp.organizations.get_project_output(opts=invoke)
    # Reading it also creates the Cloud Storage service agent if the project has none yet.
    storage_agent = gcp.storage.get_project_service_account_output(opts=invoke).email_address
    return GcpContext(
        deployment=deployment,
        provider=provider,
        project=project.project_id.apply(str),
        project_number=project.number,
        storage_agent=storage_agent,
    )
