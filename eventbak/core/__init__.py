"""The sans-I/O core: the event catalogue, the fold and its lifecycle tables,
the log framing, and the upload plan."""
