"""A work dir belongs to one run at a time, and is checked writable before any work.

Two trainings in one work dir interleave their ``log.jsonl`` and leave a config and weights
from different runs. :func:`claim` takes an exclusive ``flock`` on ``<work_dir>/.lock``, which
the operating system releases when the process ends however it ends (no stale lock after a
crash or ``kill -9``), and writes the owner's pid and host into it for the other run's message.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None


class WorkDirError(UserError):
    """The work dir cannot be written, or another run holds it."""


def writable_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` created if needed and checked writable, before any work is done."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise WorkDirError(f"cannot write to {path} ({err.strerror}); choose another {what}") \
            from None
    return path


@contextmanager
def claim(work_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold ``work_dir`` for this run; another run's claim fails with one line naming it.

    Processes forked while it is held (loader workers) share the lock: end them before the
    claim ends, or the next claim in this process sees them as another run."""
    path = writable_dir(work_dir, "train.work_dir (--work-dir)")
    if fcntl is None:
        yield path
        return
    lock = open(path / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the whole run
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "another process"
            raise WorkDirError(
                f"{path} is in use by another run ({owner}); wait for it to finish or train "
                "into another --work-dir"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
        lock.flush()
        yield path
    finally:
        lock.close()  # releases the lock
