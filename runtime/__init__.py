"""What runs inside the cluster: model build (runtime.model_build) and serving (runtime.serve)."""
