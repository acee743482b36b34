"""What runs inside the cluster: model build (runtime.build) and serving (runtime.serve)."""
