"""The aiohttp side of a listener, for everything that is not the data plane: `/metrics` and the
answer to what no route takes (app.py), and aiohttp's connections under the same cap, timeouts
and JSON errors as the raw server's (connections.py). The raw server hands a connection here for
a management request and takes it back at the connection's next request."""
