"""Compressor: a compiler that turns a teacher checkpoint into a smaller, validated, deployable student."""

__version__ = "0.1.0"
