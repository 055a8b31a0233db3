"""The one root of endpointd's own errors, and with it the one error-to-status table: each error
says in `status` the HTTP status a caller gets when it reaches one. 500 (the default) is an internal
error: its sentence is logged, not shown. The proxy's refusals (proxy/core/errors.py) add a metric
label and headers; the management API (autoscaler/api/base.py) answers `{"error": str(error)}`.

    EndpointdError                           500  anything unforeseen that reaches a caller
      400  WireError, HardwareError, PresetError, RootsError, SuggestError, SealingError,
           ArtifactError, QueryError, api.base.Invalid, proxy BadRequest, EndpointPaused
      401  api.base.Unauthenticated, proxy Unauthorized          403  both Forbiddens
      404  store.NotFound, api.base.NotFound, proxy NotFound     409  store.Conflict, api.base.Conflict
      429  FollowersFull        502  HubUnreachable, UpstreamFailed       503/504  proxy Unavailable,
      UpstreamTimeout (the proxy's 408, 413, 431: proxy/core/errors.py)

The rest keep 500: they stop a command or a start (the CLI prints the sentence), or are caught and
turned into a refusal where they happen (a CatalogError is a 404 or a 400 depending on the call).

A leaf: it imports nothing, so that engines/, proxy/ and autoscaler/ may all import it. It lives in
engines/, the package with the most errors of its own; this module is the only thing proxy/ imports
from engines/ (placed in proxy/, it would be imported from a dozen engines/ modules).
"""


class EndpointdError(Exception):
    status = 500
