"""Pulumi programs (ComponentResources) for each cloud and for the Kubernetes serving workloads."""
