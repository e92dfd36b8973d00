"""Deployment targets as data (DESIGN §5)."""

from __future__ import annotations

from compressor.errors import UserError
from targets.base import Target
from targets.cpu import CPU
from targets.edge import EDGE
from targets.gpu import GPU

TARGETS: dict[str, Target] = {t.name: t for t in (CPU, GPU, EDGE)}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UserError(f"--target {name!r}: unknown target (choose one of {', '.join(TARGETS)})") from None


__all__ = ["TARGETS", "Target", "get_target"]
