"""AWS foundation: Network, Keys, Cluster, GpuCapacity, ArtifactStore, AuditTrail, Identities (Pulumi components)."""
