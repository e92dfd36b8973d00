"""`distill`'s teacher signals beyond one online forward: student-generated batches (on-policy, GKD §7.4 and
DistiLLM §7.3), the teacher-written corpus of sequence-level KD, and the offline sparse-logit cache (RS-KD)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from compressor.kd.features import inner_model
from compressor.kd.logit_cache import SparseLogitCache, cache_key
from compressor.kd.objective import LMObjective
from compressor.kd.seqkd import SamplingSettings, teacher_corpus, writing_seconds
from passes.base import PassContext
from passes.distill_config import DistillConfig


class TeacherSignals:
    """Mixed into `Distill` (its `config` is a DistillConfig); one method per kind of signal."""

    config: DistillConfig
    total_steps: int

    def student_samples(self, model, ids: torch.Tensor) -> torch.Tensor:
        """The student continues the first `prompt_fraction` of each block by sampling (no gradient)."""
        cfg: DistillConfig = self.config
        prompt = self.prompt_length(ids)
        generator = inner_model(model)
        generator.eval()
        with torch.no_grad():
            sampled = generator.generate(
                input_ids=ids[:, :prompt],
                attention_mask=torch.ones_like(ids[:, :prompt]),
                do_sample=True,
                temperature=cfg.on_policy.generation_temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=ids.shape[1] - prompt,
                min_new_tokens=ids.shape[1] - prompt,
                pad_token_id=0,
            )
        generator.train()
        return sampled

    def prompt_length(self, ids: torch.Tensor) -> int:
        return max(1, int(ids.shape[1] * self.config.on_policy.prompt_fraction))

    def generated_loss(self, model, teacher, objective: LMObjective, sampled: torch.Tensor, step: int, kind: str):
        """The divergence to the teacher on generated tokens only (GKD §7.4, DistiLLM §7.3): no CE on them."""
        with torch.no_grad():
            teacher_logits = teacher(input_ids=sampled).logits[:, :-1]
        labels = sampled[:, 1:].clone()
        labels[:, : self.prompt_length(sampled) - 1] = -100
        student_logits = model(input_ids=sampled).logits[:, :-1]
        loss, parts = objective(student_logits, teacher_logits, labels, step, self.total_steps, kd_only=True)
        return loss, {**parts, kind: 1.0}

    def sampling(self, ctx: PassContext, sequences: int) -> SamplingSettings:
        cfg: DistillConfig = self.config
        return SamplingSettings(
            sequences,
            cfg.train.seq_len,
            min(cfg.data.prompt_tokens, cfg.train.seq_len - 1),
            cfg.data.temperature,
            cfg.data.top_p,
            ctx.seed,
        )

    def teacher_generated(self, ctx: PassContext, teacher, blocks: torch.Tensor, sequences: int) -> torch.Tensor:
        """Sequence-level KD data: the teacher continues prompts drawn from the data (cached per teacher + data)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        cfg: DistillConfig = self.config
        settings = self.sampling(ctx, sequences)
        teacher_fp = ctx.teacher.identity()
        data_fp = hashlib.sha256(blocks.numpy().tobytes()).hexdigest()
        folder = ctx.cache_base / "seqkd" / settings.key(teacher_fp, data_fp)
        columns = (TextColumn("teacher writes"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        cached = (folder / "index.json").exists()  # then nothing is written: no bar
        with Progress(*columns, disable=cached or not ctx.show_progress, transient=False) as progress:
            task = progress.add_task("teacher", total=sequences)
            corpus, reused = teacher_corpus(
                folder,
                teacher,
                blocks,
                settings,
                teacher_fp,
                data_fp,
                self.pad_id(ctx),
                cfg.data.generation_batch,
                lambda n: progress.advance(task, n),
            )
        ctx.metrics["teacher_corpus"] = {"folder": str(folder), "sequences": len(corpus), "reused": reused}
        return corpus

    def writing_cost(self, ctx: PassContext, teacher, blocks: torch.Tensor) -> float:
        """Measured seconds for the teacher to write one training sequence (sizes the plan's time cap)."""
        cfg: DistillConfig = self.config
        return writing_seconds(teacher, blocks, self.sampling(ctx, 1), self.pad_id(ctx), cfg.data.generation_batch)

    @staticmethod
    def pad_id(ctx: PassContext) -> int:
        return ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else 0

    def logit_cache(self, ctx: PassContext, teacher, blocks: torch.Tensor) -> SparseLogitCache:
        """Open (or build once) the sparse teacher-logit cache for this teacher and these exact token blocks."""
        cfg: DistillConfig = self.config
        method, size = (
            ("rs", cfg.teacher.cache_draws) if cfg.teacher.signal == "rs_cache" else ("topk", cfg.teacher.cache_topk)
        )
        teacher_fp = ctx.teacher.identity()
        data_fp = hashlib.sha256(blocks.numpy().tobytes()).hexdigest()
        folder = (
            Path(cfg.teacher.logit_cache)
            if cfg.teacher.logit_cache
            else (ctx.cache_base / "logits" / cache_key(teacher_fp, data_fp, method, size, blocks.shape[1]))
        )
        if (folder / "index.json").exists():
            cache = SparseLogitCache.open(folder, teacher_fp, data_fp)
            ctx.metrics["logit_cache"] = {"folder": str(folder), "reused": True}
            return cache
        cache = SparseLogitCache.build(folder, teacher, blocks, teacher_fp, data_fp, method, size, seed=ctx.seed)
        kept = float((cache.ids >= 0).sum(-1).float().mean())
        ctx.metrics["logit_cache"] = {"folder": str(folder), "reused": False, "mean_kept_tokens": round(kept, 2)}
        return cache
