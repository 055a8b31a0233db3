"""Data-plane worker processes: `workers` processes serve the same port (SO_REUSEPORT), the
control plane stays in the main one.

    channel.py   length-prefixed JSON messages over a unix socket
    codec.py     route entries, identities, counts, metrics and answers as JSON
    hub.py       the main process's side: routes out; token checks, wakes, counts, answers in;
                 /metrics merged; connections handed over for the management API
    remote.py    a worker's side: a ControlPlane fed by the hub, and what it reports back
    handoff.py   passing a client connection (its socket and the bytes read) to the main process
    worker.py    a worker process: `python -m proxy.workers.worker SOCKET_DIR`
    spawn.py     starting, watching and stopping the workers from the main process
"""
