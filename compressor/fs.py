"""Atomic directory writes: build in a hidden sibling, rename into place only when complete (DESIGN §1.4).

A crash or an error leaves the destination as it was (absent, or the previous version) and no partial folder.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(destination: Path) -> Iterator[Path]:
    """Yield an empty hidden sibling of `destination`; on success it replaces `destination` (old one removed)."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if destination.exists():
        old = destination.with_name(f".{destination.name}.old-{uuid.uuid4().hex[:8]}")
        destination.rename(old)
        tmp.rename(destination)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(destination)
