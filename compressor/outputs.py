"""Output and cache folders of a run, checked before any work and written atomically (DESIGN §1.4): an output
never is, contains or lies inside an input, is replaced only with --overwrite, and appears whole or not at all."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from compressor.distributed import is_main_process
from compressor.errors import UserError
from compressor.fs import atomic_directory, check_disjoint, check_output_parent, default_cache_root
from compressor.pipeline import PassCache


def check_output(out: Path, overwrite: bool, inputs: dict[str, Any] | None = None) -> None:
    """Before any work: the output never is, contains or lies inside an input; never replaced without the flag;
    its parent is writable."""
    check_disjoint(out, inputs or {})
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    if out.exists() and not overwrite:
        raise UserError(f"{out}: output directory already exists; pass --overwrite to replace it")
    check_output_parent(out)


def prepared_cache(cache_dir: str | None, use_cache: bool) -> PassCache | None:
    """The pass cache, checked before any work (writable, ours or empty), or None with --no-cache."""
    if not use_cache:
        return None
    return PassCache(Path(cache_dir) if cache_dir else default_cache_root()).prepare()


@contextmanager
def atomic_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a hidden temporary directory that replaces `out` only when the block succeeds."""
    check_output(out, overwrite)
    if not is_main_process():  # other ranks of a multi-process run compute, but never write the output
        with tempfile.TemporaryDirectory(prefix="compressor-rank-") as throwaway:
            yield Path(throwaway)
        return
    with atomic_directory(out) as tmp:
        yield tmp
