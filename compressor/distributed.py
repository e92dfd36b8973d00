"""Which process writes. Under `accelerate launch` / torch.distributed every process runs the same command;
only the main one (RANK 0) may write outputs, cache entries and checkpoints."""

from __future__ import annotations

import os


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
