"""Live evidence collectors: the deployment as it exists in the account, in the plan graph shape."""
