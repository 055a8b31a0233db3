"""A serve's first steps in its data directory: the instance id its containers are labelled
with, the admin token, and the secrets an older endpointd stored in plain text sealed."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from autoscaler.store.sealing import Sealer, needs_sealing
from autoscaler.store.store import Store

log = logging.getLogger("endpointd")

ADMIN_TOKEN_FILE = "admin-token"
INSTANCE_FILE = "instance-id"
STORE_FILE = "endpointd.db"


def instance_id(data_dir: Path) -> str:
    """A stable id of this endpointd (its data directory), made once and kept there."""
    path = data_dir / INSTANCE_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(8) + "\n")
    return path.read_text().strip()


async def seal_plain_secrets(store: Store, sealer: Sealer) -> None:
    """Migrate a store from before sealing: seal every secret still in plain text, then compact
    so that the plain text is gone from the WAL and free pages too."""
    migrated = 0
    for record in await store.list_endpoints():
        if needs_sealing(record.spec):
            await store.update_intent(record.namespace, record.name, record.generation, spec=sealer.seal(record.spec))
            migrated += 1
    if migrated:
        await store.compact()
        log.info("sealed the secrets of %d endpoint(s) that an older endpointd stored in plain text", migrated)


async def bootstrap_admin(store: Store, data_dir: Path) -> None:
    """The admin token: ENDPOINTD_ADMIN_TOKEN when set (a generated one is then revoked, and its
    file removed), else generated once into a 0600 file."""
    from_env = os.environ.get("ENDPOINTD_ADMIN_TOKEN") or None
    generated = await store.ensure_admin(from_env)
    path = data_dir / ADMIN_TOKEN_FILE
    if from_env is not None and path.exists():
        path.unlink()
        log.info("ENDPOINTD_ADMIN_TOKEN is set: the generated admin token is revoked and %s removed", path)
    elif generated:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generated + "\n")
        log.info("generated the admin token; it is in %s", path)
    elif path.exists():
        log.info("the admin token is in %s", path)
