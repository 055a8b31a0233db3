"""Data-plane worker processes: `workers` processes serve the same port (SO_REUSEPORT), the
control plane stays in the main one.

    messages.py  what the processes tell each other: one frozen dataclass per kind
    codec.py     those messages as JSON and back (the one place that knows their wire shape)
    channel.py   length-prefixed messages over a unix socket; a broken peer closes it
    families.py  metric families as data, and every process's added up for /metrics
    hub.py       the main process's side: routes out; token checks, wakes, counts, answers in;
                 /metrics merged; connections handed over for the management API
    remote.py    a worker's side: a ControlPlane fed by the hub, and what it reports back
    handoff.py   passing a client connection (its socket and the bytes read) to the main process
    worker.py    a worker process: `python -m proxy.workers.worker SOCKET_DIR`
    spawn.py     starting, watching and stopping the workers from the main process
"""
