"""endpointd's inference toolkit (engines/toolkit/Dockerfile): server.py serves, handlers.py loads, tasks.py decides."""
