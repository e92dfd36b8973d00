"""Family adapters by model_type (DESIGN §3)."""

from __future__ import annotations

from compressor.errors import UserError
from compressor.ir.families.base import FamilyAdapter
from compressor.ir.families.bert import BertAdapter
from compressor.ir.families.llama import LlamaAdapter
from compressor.ir.families.moe import MoEAdapter

ADAPTERS: list[FamilyAdapter] = [LlamaAdapter(), MoEAdapter(), BertAdapter()]  # one line per family


def supported_model_types() -> list[str]:
    return [t for adapter in ADAPTERS for t in adapter.model_types]


def adapter_for(model_type: str, source: str = "config.json") -> FamilyAdapter:
    """The adapter for `model_type`; an unsupported type is a user error listing the supported families."""
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    families = "; ".join(f"{a.name}: {', '.join(a.model_types)}" for a in ADAPTERS)
    raise UserError(f"{source}: unsupported model_type {model_type!r} (supported families — {families})")


def adapter_of_model(model) -> FamilyAdapter:
    """The adapter of a materialized transformers model (through PEFT / DDP wrappers, which keep `.config`)."""
    return adapter_for(model.config.model_type)


def register_adapter(adapter: FamilyAdapter) -> None:
    """Add a family; it takes precedence for its model types over adapters registered before it."""
    ADAPTERS.insert(0, adapter)


def adapter_named(name: str) -> FamilyAdapter:
    for adapter in ADAPTERS:
        if adapter.name == name:
            return adapter
    raise KeyError(name)
