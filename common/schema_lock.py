"""One schema upgrade at a time: replicas of a service (and its migrations Job) may start
together against one database. On PostgreSQL they take turns under an advisory lock; beside
a SQLite file, under an exclusive lock on `<file>.migrate.lock`."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing); no path or an in-memory
    database: nothing to share, no lock."""
    if path is None or str(path).startswith(":memory:"):
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sqlite_lock_path(database: str | None) -> Path | None:
    """Where the lock of a SQLite database file lives (None for an in-memory one)."""
    return Path(f"{database}.migrate.lock") if database else None


__all__ = ["file_lock", "sqlite_lock_path"]
