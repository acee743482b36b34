"""Kubernetes serving workloads, the same on every cloud (ServingStack)."""
