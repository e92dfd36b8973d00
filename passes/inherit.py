"""`inherit`: give the student architecture the teacher's weights by layer selection (ALGORITHMS §3b).

Strategies: `uniform` (round(i·(L_T−1)/(L_S−1)), keeps first and last), `floor` (⌊i·L_T/L_S⌋), `first`,
`last`, explicit `indices`, and `importance`: keep the layers with the highest block influence
(ALGORITHMS §8, depth score) measured on calibration data.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressor.budget import Budget, layers_for_budget
from compressor.data import encode_sentences, lm_blocks, sentences
from compressor.errors import UserError
from compressor.importance import layer_block_influence
from compressor.ir import ModelIR
from passes.base import Pass, PassConfig, PassContext, register


def uniform_indices(teacher_layers: int, student_layers: int) -> list[int]:
    if student_layers == 1:
        return [0]
    return [round(i * (teacher_layers - 1) / (student_layers - 1)) for i in range(student_layers)]


def floor_indices(teacher_layers: int, student_layers: int) -> list[int]:
    return [i * teacher_layers // student_layers for i in range(student_layers)]


class InheritConfig(PassConfig):
    strategy: Literal["importance", "uniform", "floor", "first", "last", "indices"] = "importance"
    layers: int | None = Field(default=None, ge=1, description="student layer count; default: from the budget")
    indices: list[int] | None = Field(default=None, description="teacher layers to keep (strategy=indices)")
    calibration_batches: int = Field(default=8, ge=1)
    calibration_batch_size: int = Field(default=8, ge=1)
    seq_len: int = Field(default=128, ge=8)


@register
class Inherit(Pass):
    name = "inherit"
    Config = InheritConfig
    needs_data = True

    def check(self, ir: ModelIR, budget: Budget) -> None:
        cfg: InheritConfig = self.config
        total = ir.num_layers
        if cfg.layers is None and cfg.indices is None:
            layers_for_budget(ir, budget)  # an impossible budget fails here, before any work
        if cfg.strategy == "indices" or cfg.indices is not None:
            if not cfg.indices:
                raise UserError(f"{self.where}.indices: strategy 'indices' needs a non-empty list of layers")
            wrong = [i for i in cfg.indices if not 0 <= i < total]
            if wrong:
                raise UserError(
                    f"{self.where}.indices: layer(s) {wrong} out of range "
                    f"(the model has {total} layers: 0..{total - 1})"
                )
            if len(set(cfg.indices)) != len(cfg.indices):
                raise UserError(f"{self.where}.indices: {cfg.indices} lists a layer twice")
        elif cfg.layers is not None and cfg.layers > total:
            raise UserError(f"{self.where}.layers: {cfg.layers} layers asked, the model has only {total}")

    def run(self, ir: ModelIR, ctx: PassContext) -> ModelIR:
        cfg: InheritConfig = self.config
        total = ir.num_layers
        self.check(ir, ctx.budget)
        if cfg.strategy == "indices" or cfg.indices is not None:
            keep = sorted(cfg.indices)
        else:
            count = cfg.layers or layers_for_budget(ir, ctx.budget)
            if count > total:
                raise UserError(f"inherit.layers={count}: the teacher has only {total} layers")
            keep = self.select(ir, ctx, count)
        student = ir.drop_layers(keep)
        ctx.metrics.update(
            {
                "kept_layers": keep,
                "teacher_layers": total,
                "student_layers": len(keep),
                "params_before": ir.summary()["totals"]["params"],
                "params_after": student.summary()["totals"]["params"],
            }
        )
        return student

    def select(self, ir: ModelIR, ctx: PassContext, count: int) -> list[int]:
        cfg: InheritConfig = self.config
        total = ir.num_layers
        if cfg.strategy == "uniform":
            return uniform_indices(total, count)
        if cfg.strategy == "floor":
            return floor_indices(total, count)
        if cfg.strategy == "first":
            return list(range(count))
        if cfg.strategy == "last":
            return list(range(total - count, total))
        scores = layer_block_influence(
            ir.materialize(ctx.device),
            calibration_batches(ir, ctx, self.name, cfg.calibration_batches, cfg.calibration_batch_size, cfg.seq_len),
        )
        ctx.metrics["block_influence"] = [round(s, 6) for s in scores]
        ranked = sorted(range(total), key=lambda i: scores[i], reverse=True)
        return sorted(ranked[:count])


def calibration_batches(ir: ModelIR, ctx: PassContext, name: str, batches: int, batch_size: int, seq_len: int):
    """Batches of the training data for importance scores: LM blocks, or tokenized sentences for encoders."""
    corpus = ctx.require_corpus(name)
    n = batches * batch_size
    if ir.task == "causal-lm":
        blocks = lm_blocks(ctx.tokenizer, corpus.train, seq_len, max_blocks=n, name=corpus.name)
        for start in range(0, len(blocks), batch_size):
            yield {"input_ids": blocks[start : start + batch_size].to(ctx.device)}
    else:
        texts = sentences(corpus.train)[:n] or list(corpus.train[:n])
        for start in range(0, len(texts), batch_size):
            enc = encode_sentences(ctx.tokenizer, texts[start : start + batch_size], seq_len)
            yield {k: v.to(ctx.device) for k, v in enc.items()}
