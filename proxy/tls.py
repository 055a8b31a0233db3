"""TLS for the listeners: the server's SSL context from `tls_cert` and `tls_key`, checked at start
with errors that name the key and the file."""

from __future__ import annotations

import ssl

from engines.errors import EndpointdError

from .core.config import ProxyConfig


class TlsConfigError(EndpointdError, ValueError):
    """The TLS settings cannot be used; the sentence names the keys and files."""


def server_context(config: ProxyConfig) -> ssl.SSLContext | None:
    """The listeners' SSL context, or None for plain HTTP (neither key set)."""
    cert, key = config.tls_cert, config.tls_key
    if not cert and not key:
        return None
    if not cert or not key:
        missing, given = ("proxy.tls_key", "proxy.tls_cert") if cert else ("proxy.tls_cert", "proxy.tls_key")
        raise TlsConfigError(f"{given} is set but {missing} is not: set both (HTTPS) or neither (HTTP)")
    for name, path in (("proxy.tls_cert", cert), ("proxy.tls_key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as error:
            raise TlsConfigError(f"{name} = {path!r} cannot be read: {error.strerror}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as error:
        raise TlsConfigError(
            f"proxy.tls_cert = {cert!r} and proxy.tls_key = {key!r} are not a PEM certificate chain and its "
            f"private key ({error.reason or error})"
        ) from None
    except OSError as error:  # e.g. a directory given for a file
        raise TlsConfigError(f"proxy.tls_cert = {cert!r} or proxy.tls_key = {key!r} cannot be read: {error}") from None
    return context
