"""The pass API: a pass is a class with a name, a pydantic Config and `run(ir, ctx) -> ir` (DESIGN §4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from compressor.budget import Budget
from compressor.data import Corpus
from compressor.errors import UserError
from compressor.ir import ModelIR
from targets.base import Target


class PassConfig(BaseModel):
    """Base of every pass's config: unknown keys are errors, values are validated and frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class PassContext:
    """What a pass may use besides the IR it transforms."""

    teacher: ModelIR
    target: Target
    corpus: Corpus | None
    budget: Budget
    scratch: Path
    artifacts: Path  # files the pass produces that outlive the run (e.g. the ONNX model)
    run_dir: Path | None = None  # survives a crash: checkpoints for resuming long passes
    cache_root: Path | None = None  # the run's cache (--cache-dir): logit caches and teacher corpora live there
    device: torch.device = torch.device("cpu")
    seed: int = 0
    show_progress: bool = True
    metrics: dict[str, Any] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)  # built once per run, shared by every pass's context

    @property
    def teacher_model(self):
        """The frozen teacher as a transformers module on the run's device (built once, on first use)."""
        if "teacher_model" not in self.shared:
            model = self.teacher.materialize(self.device)
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            self.shared["teacher_model"] = model
        return self.shared["teacher_model"]

    @property
    def tokenizer(self):
        if "tokenizer" not in self.shared:
            self.shared["tokenizer"] = load_tokenizer(self.teacher.tokenizer_dir)
        return self.shared["tokenizer"]

    @property
    def cache_base(self) -> Path:
        from compressor.fs import default_cache_root

        return self.cache_root or default_cache_root()

    def require_corpus(self, pass_name: str) -> Corpus:
        if self.corpus is None:
            raise UserError(f"pass {pass_name!r} needs data: pass --data FILE (or use the built-in corpus)")
        return self.corpus


TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")


def load_tokenizer(source: Path | None):
    """The teacher's tokenizer from its directory (offline), with a pad token for batching."""
    from transformers import AutoTokenizer

    if source is None or not any((Path(source) / name).exists() for name in TOKENIZER_MARKERS):
        raise UserError(
            f"{source}: no tokenizer files in the model directory (expected one of {', '.join(TOKENIZER_MARKERS)}); "
            "save the tokenizer beside the weights"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds here (AttributeError on missing files, among others)
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{source}: no usable tokenizer in the model directory ({first})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


class Pass:
    """Base class: subclasses set `name`, `Config`, and implement `run`."""

    name: ClassVar[str]
    Config: ClassVar[type[PassConfig]] = PassConfig
    needs_data: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = False
    target_dependent: ClassVar[bool] = False  # whether the target is part of the cache key
    produces_ir: ClassVar[bool] = True

    def __init__(self, config: PassConfig | None = None, where: str | None = None) -> None:
        self.config = config if config is not None else self.Config()
        self.where = where or self.name  # the key path of this pass's config, for error messages

    def check(self, ir: ModelIR) -> None:
        """Refuse a config that cannot work on `ir` before any work starts (UserError naming `self.where`)."""

    def run(self, ir: ModelIR, ctx: PassContext) -> ModelIR:
        raise NotImplementedError


REGISTRY: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    REGISTRY[cls.name] = cls
    return cls


def get_pass(name: str) -> type[Pass]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown pass {name!r} (available: {', '.join(sorted(REGISTRY))})") from None
