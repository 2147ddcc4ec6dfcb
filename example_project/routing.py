"""Channel routing of the example project (filled in by the worker issue)."""

channel_routing = []
