"""Distillation machinery shared by passes: losses (pure functions) and the training loop."""
