"""Bearer tokens: generated at random, kept only as a SHA-256 hash, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

# Recognisable in a leak: secret scanners and people reading a log can tell what it is.
PREFIX = "epd_"
# 256 bits of randomness, as `secrets` recommends for tokens that guard anything of value.
RANDOM_BYTES = 32
# Ids name a token in listings and `tokens revoke`; with 48 random bits the chance that two of a
# thousand tokens share one is about 2e-9, so no retry loop (the primary key would refuse it).
ID_BYTES = 6
# A listing shows the last characters of a token, so its owner can tell which one it is. Only of
# tokens long enough that those characters are a small share of the secret: an operator-chosen
# ENDPOINTD_ADMIN_TOKEN may be short.
HINT_CHARS = 4
MIN_HINTED_LENGTH = 20


def generate() -> str:
    return PREFIX + secrets.token_urlsafe(RANDOM_BYTES)


def new_id() -> str:
    return secrets.token_hex(ID_BYTES)


def hash_token(token: str) -> str:
    """SHA-256, hex. A fast unsalted hash is right here, unlike for passwords: a generated token
    has 256 random bits, so there is no dictionary to try and a slow hash (bcrypt, scrypt) would
    only slow every request down. The hash is also the lookup key, which a salt would prevent."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def hint(token: str) -> str:
    """What a listing may show of a token: its last characters, or nothing for a short one."""
    return token[-HINT_CHARS:] if len(token) >= MIN_HINTED_LENGTH else ""


def same(given: str, expected: str) -> bool:
    """Whether two secrets are equal, in time that does not depend on where they differ.
    `hmac.compare_digest` refuses non-ASCII `str` (TypeError, a 500 for a client's odd header);
    comparing the encoded bytes answers False instead."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))
