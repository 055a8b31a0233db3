"""The data plane on raw asyncio protocols (uvloop) and httptools, on both sides: client.py (one
client connection, and the hand-off of non-data-plane requests to aiohttp), exchange.py (one
proxied request, as callbacks), upstream.py (keep-alive pools to replicas), wire.py (bytes),
server.py (what a listener's connections share). The decisions stay in proxy/core/pipeline.py and
proxy/core/forwarding.py."""
