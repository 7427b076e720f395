"""The HTTP API: submit folder jobs, follow them, query results and models."""
