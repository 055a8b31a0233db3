"""`python3 -m sglang.launch_server ...`, as endpointd's sGLang preset starts SGLang: in the echo
image, the echo engine with SGLang's personality (engines/echo/server.py)."""

import sys

import server

sys.exit(server.main(server.SGLANG, sys.argv[1:]))
