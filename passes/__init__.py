"""Passes: one module per pass, each a Pass subclass registered by name (DESIGN §4)."""

from passes.base import REGISTRY, Pass, PassContext, get_pass

# Importing the modules registers the passes.
from passes import distill, export, inherit, lora_kd, moe_to_dense, prune, search  # noqa: E402,F401  isort: skip

__all__ = ["REGISTRY", "Pass", "PassContext", "get_pass"]
