"""The CLI's way to a running `endpointd serve`: its management API over HTTP, with a token.

The server is `--url` (or ENDPOINTD_URL), else this machine's `http(s)://HOST:PORT` from the same
settings `serve` reads. The token is `--token`, else ENDPOINTD_TOKEN, else the admin token
(ENDPOINTD_ADMIN_TOKEN, or the file `serve` wrote into the data directory).
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engines.errors import EndpointdError

TIMEOUT_S = 30.0


class ClientError(EndpointdError):
    """The server could not be reached or refused; the message says what it answered."""


class Client:
    def __init__(self, url: str, token: str | None, no_token: str = "") -> None:
        """`no_token`: why no token was found, said instead of sending a call that needs one."""
        self.url = url.rstrip("/")
        self.token = token
        self._no_token = no_token or "no token: pass --token (or set ENDPOINTD_TOKEN)"
        # The server's own certificate may be self-signed: this is a tool for its operator.
        self._context = ssl._create_unverified_context() if self.url.startswith("https:") else None

    @classmethod
    def from_settings(cls, url: str | None, token: str | None, *, host: str, port: int, tls: bool, data_dir: str) -> Client:
        url = url or os.environ.get("ENDPOINTD_URL") or f"{'https' if tls else 'http'}://{host}:{port}"
        token = token or os.environ.get("ENDPOINTD_TOKEN") or os.environ.get("ENDPOINTD_ADMIN_TOKEN")
        no_token = ""
        if not token:
            path = Path(data_dir).absolute() / "admin-token"
            try:
                token = path.read_text().strip()
            except OSError:
                where = "there is no data dir" if not path.parent.is_dir() else "the data dir has no admin token"
                no_token = (f"found no token: no --token, ENDPOINTD_TOKEN or ENDPOINTD_ADMIN_TOKEN, and {where} at "
                            f"{path.parent}; pass --data-dir (the directory `endpointd serve` uses) or --token")
        return cls(url, token, no_token)

    def _open(self, method: str, path: str, params: dict[str, Any] | None, body: Any = None, timeout: float | None = TIMEOUT_S):
        if not self.token:  # every management route needs one: say why there is none, not the server's 401
            raise ClientError(self._no_token)
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(f"{self.url}{path}{'?' + query if query else ''}", data=data,
                                         headers=headers, method=method)
        try:
            return urllib.request.urlopen(request, timeout=timeout, context=self._context)
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read()).get("error")
            except ValueError:
                message = None
            raise ClientError(f"{method} {path}: {error.code} {message or error.reason}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ClientError(f"cannot reach endpointd at {self.url} ({reason}); is `endpointd serve` running? "
                              "(--url or ENDPOINTD_URL to point elsewhere)") from None

    def json(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None) -> Any:
        with self._open(method, path, params, body) as response:
            return json.loads(response.read())

    def text(self, path: str, params: dict[str, Any] | None = None) -> str:
        with self._open("GET", path, params) as response:
            return response.read().decode()

    def events(self, path: str, params: dict[str, Any] | None = None) -> Iterator[str]:
        """The `data:` payloads of a Server-Sent Events stream, as they come, until it ends."""
        with self._open("GET", path, params, timeout=None) as response:
            for raw in response:
                line = raw.decode(errors="replace").rstrip("\r\n")
                if line.startswith("data:"):
                    yield line[5:].removeprefix(" ")
