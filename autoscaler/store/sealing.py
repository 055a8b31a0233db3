"""Secrets at rest: an endpoint's `model.secrets` values and registry passwords are sealed with
Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`) before the spec is stored, so that a
copied database or backup does not leak them. The key is a file in the data directory (0600),
made at first start; without it the sealed values cannot be read, so back it up with the store.

A sealed value is stored as `{"sealed": "<Fernet token>"}` in place of the string: a plain
string, as an older store holds, is read as is and sealed by the next write (`needs_sealing`
finds such specs, so a start migrates them at once).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from engines.errors import EndpointdError

KEY_FILE = "secrets.key"
SEALED = "sealed"


class SealingError(EndpointdError):
    status = 400


def _secret_slots(spec: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(container, key) of every secret value in a stored spec."""
    model = spec.get("model") or {}
    slots = [(model["secrets"], name) for name in (model.get("secrets") or {})]
    for options in (model.get("image") or {}).values():
        credentials = options.get("credentials") if isinstance(options, dict) else None
        if isinstance(credentials, dict) and "password" in credentials:
            slots.append((credentials, "password"))
    return slots


class Sealer:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def open(cls, data_dir: Path) -> Sealer:
        """The data directory's key, made (0600, whatever the umask) when there is none."""
        path = data_dir / KEY_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
        os.chmod(path, 0o600)
        return cls(path.read_bytes().strip())

    def seal(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A copy of the stored spec with every secret value sealed."""
        sealed = copy.deepcopy(spec)
        for holder, key in _secret_slots(sealed):
            value = holder[key]
            if isinstance(value, str):
                holder[key] = {SEALED: self._fernet.encrypt(value.encode()).decode()}
        return sealed

    def unseal(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A copy of the stored spec with every sealed value back in plain text."""
        plain = copy.deepcopy(spec)
        for holder, key in _secret_slots(plain):
            value = holder[key]
            if isinstance(value, dict) and SEALED in value:
                try:
                    holder[key] = self._fernet.decrypt(value[SEALED].encode()).decode()
                except InvalidToken:
                    raise SealingError(
                        f"a secret of endpoint {spec.get('name')!r} was sealed with another key than "
                        f"this data directory's {KEY_FILE}; restore that key file"
                    ) from None
        return plain


def needs_sealing(spec: dict[str, Any]) -> bool:
    return any(isinstance(holder[key], str) for holder, key in _secret_slots(spec))
