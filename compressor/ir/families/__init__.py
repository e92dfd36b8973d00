"""Family adapters by model_type (DESIGN §3)."""

from __future__ import annotations

from compressor.errors import UserError
from compressor.ir.families.base import FamilyAdapter
from compressor.ir.families.bert import BertAdapter
from compressor.ir.families.llama import LlamaAdapter
from compressor.ir.families.moe import MoEAdapter

ADAPTERS: tuple[FamilyAdapter, ...] = (LlamaAdapter(), MoEAdapter(), BertAdapter())


def supported_model_types() -> list[str]:
    return [t for adapter in ADAPTERS for t in adapter.model_types]


def adapter_for(model_type: str, source: str = "config.json") -> FamilyAdapter:
    """The adapter for `model_type`; an unsupported type is a user error listing the supported families."""
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    families = "; ".join(f"{a.name}: {', '.join(a.model_types)}" for a in ADAPTERS)
    raise UserError(f"{source}: unsupported model_type {model_type!r} (supported families — {families})")


def adapter_named(name: str) -> FamilyAdapter:
    for adapter in ADAPTERS:
        if adapter.name == name:
            return adapter
    raise KeyError(name)
