"""The intermediate representation: a model as blocks, coupled groups, lazy weights and lineage."""

from compressor.ir.graph import ModelIR

__all__ = ["ModelIR"]
