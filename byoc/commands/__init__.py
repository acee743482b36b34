"""Command groups of the `byoc` CLI beyond the planning commands in byoc/cli.py, one module each.

Each module has `register(app)`, imports only typer and byoc.commands.common at module level, and imports what its
commands need inside them, so that `byoc --help` stays instant.
"""
