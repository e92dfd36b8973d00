"""The run's device, as the user names it: `auto` (CUDA when present), `cpu`, `cuda`, `cuda:N`, `mps`."""

from __future__ import annotations

import re

import torch

from compressor.errors import UserError

DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?|mps"


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present; asking for a device this machine lacks is an error, not a silent fallback."""
    if not re.fullmatch(DEVICE_PATTERN, str(device)):
        raise UserError(f"device {device!r}: unknown device (use auto, cpu, cuda or cuda:N)")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r}: CUDA is not available on this machine")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError(f"device {device!r}: MPS is not available on this machine")
    return torch.device(device)
