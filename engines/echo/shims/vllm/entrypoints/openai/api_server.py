"""`python3 -m vllm.entrypoints.openai.api_server ...`, as endpointd's vLLM preset starts vLLM: in the
echo image, the echo engine with vLLM's personality (engines/echo/server.py)."""

import sys

import server

sys.exit(server.main(server.VLLM, sys.argv[1:]))
