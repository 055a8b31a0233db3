"""Every decision on a request's path, free of any HTTP framework: which endpoint (routing), who
may call it (auth), whether it is admitted, held or refused (pipeline, hold), which replica takes
it (balancer), what is pending (pending), which headers cross the proxy and when a failed attempt
is retried (forwarding), the errors and their one mapping to HTTP (errors), the connection cap
(cap), the metrics (metrics), the route table the control plane fills (control) and the
configuration (config). The servers above it (proxy/raw/, proxy/management/) only speak HTTP."""
