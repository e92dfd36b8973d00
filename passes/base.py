"""The pass API: a pass is a class with a name, a pydantic Config and `run(ir, ctx) -> ir` (DESIGN §4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from compressor.budget import Budget
from compressor.data import Corpus
from compressor.errors import UserError
from compressor.ir import ModelIR
from targets.base import Target


class PassConfig(BaseModel):
    """Base of every pass's config: unknown keys are errors, values are validated and frozen.

    Nested sections take dotted keys too (`train.steps: 100` is `train: {steps: 100}`), in recipes and `--set`.
    `moved` names settings that now live elsewhere, so an old recipe gets told where (not just "unknown key").
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    moved: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def dotted_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        nested: dict[str, Any] = {}
        for key, value in data.items():
            head, _, rest = str(key).partition(".")
            if rest:
                section = nested.setdefault(head, {})
                if isinstance(section, BaseModel):
                    section = nested[head] = section.model_dump()
                if not isinstance(section, dict):
                    raise ValueError(f"{head}: given both as a value and as a section ({key})")
                section[rest] = value
            elif isinstance(value, dict) and isinstance(nested.get(key), dict):
                nested[key] = {**value, **nested[key]}
            else:
                nested[key] = value
        for key, value in nested.items():
            new = cls.moved.get(key) or cls.section_of(key)
            if new and (key not in cls.model_fields or not isinstance(value, dict | BaseModel)):
                raise ValueError(f"{key}: this setting is now {new} (write `{new}: {value!r}`)")
        return nested

    @classmethod
    def section_of(cls, key: str) -> str | None:
        """`train.steps` for `steps`: the one nested section that has a field named `key`, if any."""
        if key in cls.model_fields:
            return None
        found = [
            f"{name}.{key}"
            for name, field in cls.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, PassConfig)
            and key in field.annotation.model_fields
        ]  # fmt: skip
        return found[0] if len(found) == 1 else None


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

    @classmethod
    def for_run(
        cls, teacher: ModelIR, target: Target, scratch: Path, corpus: Corpus | None = None,
        budget: Budget | None = None, **options: Any,
    ) -> PassContext:  # fmt: skip
        """The one way a run makes its context: artifacts collected in `scratch`, no size budget unless given;
        `options` are the other fields (device, seed, show_progress, cache_root, shared)."""
        artifacts = options.pop("artifacts", scratch)
        return cls(teacher, target, corpus, budget or Budget(), scratch, artifacts, **options)

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
    uses_data: ClassVar[bool] = False  # reads the data when there is some, without needing it (export's checks)
    trains: ClassVar[bool] = False  # takes the run's training budget (tokens, time) into its config
    target_dependent: ClassVar[bool] = False  # whether the target is part of the cache key
    produces_ir: ClassVar[bool] = True
    changes_family: ClassVar[bool] = False  # its output is another family (moe_to_dense: MoE → dense)

    def __init__(self, config: PassConfig | None = None, where: str | None = None) -> None:
        self.config = config if config is not None else self.Config()
        self.where = where or self.name  # the key path of this pass's config, for error messages

    def check(self, ir: ModelIR, budget: Budget) -> None:
        """Refuse a config that cannot work on `ir` under `budget` before any work starts (UserError naming
        `self.where`)."""

    @classmethod
    def report_fields(cls, metrics: dict) -> dict:
        """Top-level entries this pass adds to report.json (export: "onnx", "deployment"), from its metrics."""
        return {}

    @classmethod
    def report_lines(cls, report: dict, metrics: dict) -> list[str]:
        """This pass's section of REPORT.md (Markdown lines; none by default), given the whole report."""
        return []

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
