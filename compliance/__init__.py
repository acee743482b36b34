"""Control catalogs, checks over the resource graph and the live account, and report writers."""
