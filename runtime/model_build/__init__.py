"""Model build for a deployment shape: the pure build plan (plan.py) and the builder that runs it."""
