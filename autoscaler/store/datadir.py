"""The data directory: private to endpointd, and used by one `endpointd serve` at a time.

It holds the store (tokens, every endpoint's spec), the admin token and the key that seals
secrets, so it is 0700 and every file directly in it 0600, whatever the umask (the store's WAL
and shared-memory files take the database file's mode, which is set before SQLite opens it). A
second `serve` on the same directory would adopt and stop the first one's containers: an
exclusive lock, taken before anything else is touched, makes it exit with a clear message.

`serving_pid` tells who holds it (for `endpointd stop`).

Errors:
    DataDirLocked     another process holds the directory
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from engines.errors import EndpointdError

LOCK_FILE = "serve.lock"


class DataDirLocked(EndpointdError):
    pass


def make_private(data_dir: Path) -> None:
    """0700 for the directory, 0600 for every file in it (not below: model files stay readable
    by the engines that mount them)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    for entry in data_dir.iterdir():
        if entry.is_file() and not entry.is_symlink():
            os.chmod(entry, 0o600)


def private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 if it does not exist (before SQLite or anyone opens it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def lock(data_dir: Path) -> int:
    """Hold the directory for this process (the lock goes with it); DataDirLocked if taken."""
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = _holder(path)
        raise DataDirLocked(
            f"another endpointd serve{holder} is using the data directory {data_dir}; stop it first, "
            "or give this one its own --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def serving_pid(data_dir: Path) -> int | None:
    """The pid of the `endpointd serve` that holds the directory now (0: it holds it but has not
    written its pid yet), or None when none does."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file: no serve ever ran here
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
