"""One run per pass key at a time (issue 9 §6): two identical runs sharing a cache must not write one run folder.

An advisory `flock` on `<cache>/locks/<key>.lock`: the kernel drops it when its holder dies, so the lock of a
SIGKILLed run is taken over by the next run with no clean-up step. The holder's pid is written in the file only
to name it in messages. A second run waits for the first (then finds its result in the cache); with
`COMPRESSOR_LOCK_TIMEOUT` seconds set it gives up after that long with exit 2.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from compressor.errors import UserError

TIMEOUT_ENV = "COMPRESSOR_LOCK_TIMEOUT"


def lock_timeout() -> float | None:
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise UserError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None


@contextmanager
def run_lock(path: Path, on_wait: Callable[[str], None] | None = None, poll: float = 0.2) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the block; wait for another holder (or time out: UserError)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks; runs are not serialized there
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        timeout = lock_timeout()
        started = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = holder_of(path)
                if timeout is not None and time.monotonic() - started >= timeout:
                    raise UserError(
                        f"{path}: another run ({holder}) is computing the same pass with this cache; "
                        "wait for it to finish, or use another --cache-dir"
                    ) from None
                if not told and on_wait:
                    on_wait(f"waiting for another run ({holder}) computing the same pass ({path.name})")
                    told = True
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def holder_of(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid else "unknown process"
